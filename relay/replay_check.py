"""What a replay would do now: the deliveries it takes, translated with the mapping files as they are.

An operator who fixed a mapping replays the deliveries that failed for it. The dry run says first
whether the fix works on them: each is translated from its stored request, as the worker will
translate it after the replay (the files read from disk now, a file that does not load reported
as such), and the deliveries that would still fail are grouped by their error. Nothing is sent
and nothing is changed. The visitor's location is not looked up: it adds fields, never an error.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.errors import MappingError, RequestRejected
from relay.inbound import InboundRequest, is_ping, with_url_event
from relay.listing import every_delivery, iter_chosen, naming_event
from relay.mapping.fetches import FetchRequest
from relay.mapping.model import Source
from relay.mapping.translate import TranslateContext, Translation
from relay.mapping.watch import sources_on_disk
from relay.pipeline import parse_request, take_body_token, translate_request
from relay.settings import Settings
from relay.store import Delivery, Store, status_and_reason

__all__ = [
    "CHECKED_AT_MOST",
    "CHECKED_OVER_HTTP",
    "check_deliveries",
    "check_delivery",
    "check_replay",
    "preview_delivery",
    "preview_payload",
    "replay_event",
    "replay_filtered",
]

# The newest this many: a bound on the time a dry run takes (10,000 Shopify orders: 4 s of CPU). Over
# the admin API it runs in a web worker, beside the webhooks, so it checks fewer there.
CHECKED_AT_MOST = 10_000
CHECKED_OVER_HTTP = 1_000
ERRORS_SHOWN = 5


@dataclass
class ReplayCheck:
    checked: int = 0
    translate: int = 0
    ignored: int = 0
    fail: int = 0
    fetch_first: int = 0  # a source that fetches its records: checked up to the request, not the API's answer
    # (source, error) -> [count, newest id]; deliveries are read newest first
    _errors: dict[tuple[str, str], list[Any]] = field(default_factory=dict)

    def failed(self, delivery: Delivery, error: str) -> None:
        self.fail += 1
        found = self._errors.setdefault((delivery.source, error), [0, delivery.id])
        found[0] += 1

    def to_dict(self) -> dict[str, Any]:
        errors = sorted(self._errors.items(), key=lambda item: -item[1][0])[:ERRORS_SHOWN]
        return {
            "checked": self.checked,
            "translate": self.translate,
            "ignored": self.ignored,
            "still_fail": self.fail,
            "fetch_first": self.fetch_first,
            "errors": [
                {"source": source, "error": error, "count": count, "newest_id": newest}
                for (source, error), (count, newest) in errors
            ],
        }


def check_replay(
    store: Store, settings: Settings, filters: dict[str, Any], *, limit: int = CHECKED_AT_MOST
) -> dict[str, Any]:
    """Translate the newest `limit` deliveries that a replay with `filters` takes; what each would do."""
    return check_deliveries(
        iter_chosen(store, every_delivery, replayable=True, **filters), settings, store, limit=limit
    )


def check_deliveries(
    chosen: Iterable[Delivery], settings: Settings, store: Store, *, limit: int = CHECKED_AT_MOST
) -> dict[str, Any]:
    """`check_replay`'s answer for the first `limit` of these deliveries (chosen by what their request says)."""
    today = _Today.of(settings)
    check = ReplayCheck()
    for delivery in itertools.islice(chosen, limit):
        _check_one(check, delivery, today, store)
    return check.to_dict()


def replay_filtered(
    store: Store,
    settings: Settings,
    filters: dict[str, Any],
    *,
    to_status: str,
    dry_run: bool,
    limit: int = CHECKED_AT_MOST,
) -> dict[str, Any]:
    """A replay of what the store's filters take (`relay replay --status ...`, the API's `POST /replay`), in
    `replay_event`'s answer: `{"replayed": N}`, or for a dry run `would_replay`, `by_status` and, for the first
    `limit`, `with_mappings_now`."""
    if not dry_run:
        return {"replayed": store.replay_matching(to_status=to_status, **filters)}
    found = store.replayable(**filters)
    answer: dict[str, Any] = {"would_replay": sum(found.values()), "by_status": found}
    if found:
        answer["with_mappings_now"] = check_replay(store, settings, filters, limit=limit)
    return answer


def replay_event(
    store: Store,
    settings: Settings,
    sources: Mapping[str, Source],
    filters: dict[str, Any],
    event: str,
    *,
    to_status: str,
    dry_run: bool,
    limit: int = CHECKED_AT_MOST,
) -> dict[str, Any]:
    """A replay chosen by the event its request names (`replay --event`, the API's `event=`): the replayable
    deliveries the filters take whose request names it. `{"replayed": N}`, or for a dry run the admin API's
    answer: `would_replay`, `by_status` and, for the first `limit`, `with_mappings_now`."""
    names_event = naming_event(sources, event)
    chosen = iter_chosen(store, names_event, replayable=True, **filters)
    found = [(delivery.id, status_and_reason(delivery.status, delivery.reason)) for delivery in chosen]
    if not dry_run:
        return {"replayed": store.replay_ids([delivery_id for delivery_id, _ in found], to_status=to_status)}
    by_status = Counter(kind for _, kind in found)
    answer: dict[str, Any] = {"would_replay": len(found), "by_status": dict(sorted(by_status.items()))}
    if found:
        chosen = iter_chosen(store, names_event, replayable=True, **filters)
        answer["with_mappings_now"] = check_deliveries(chosen, settings, store, limit=limit)
    return answer


def check_delivery(delivery: Delivery, settings: Settings, store: Store) -> dict[str, Any]:
    """What one delivery would do if replayed now (`check_replay`'s answer for it alone)."""
    check = ReplayCheck()
    _check_one(check, delivery, _Today.of(settings), store)
    return check.to_dict()


def preview_delivery(delivery: Delivery, settings: Settings, store: Store) -> dict[str, Any]:
    """What one delivery's translation gives now, with the mapping files as they are on disk (`relay preview
    --delivery`, over the admin API): `outcome` `translate` with its `calls` (the token shown as `***`),
    `ignored` with the mapping's reason, `forget`, `fails` with the `error` the worker would fail it for, or
    `fetch_first` for a source whose rules read a record from the provider's API, which a preview does not ask.
    Nothing is sent, fetched or changed."""
    holder = functools.partial(store.once_taken_by, delivery.source, delivery.id)
    return _preview_answer(_translated_now(delivery.inbound(), _Today.of(settings), holder))


def preview_payload(
    request: InboundRequest, settings: Settings, *, query: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """`preview_delivery`'s answer for a payload as its provider would send it (`relay preview --source`, over
    the admin API: a mapping file tried on a sample before a provider is pointed at it), with `ping` for one of
    the source's test pings (answered 200, never stored) and `unknown_source` for a source no file on disk
    has. `query` holds the hook URL's parameters, one of which names the event for some sources (InSales'
    `topic`). No once key is taken: a rule with `once` applies as to the first of its key."""
    today = _Today.of(settings)
    source = today.sources.get(request.source)
    if source is not None:
        request = dataclasses.replace(request, headers=with_url_event(source, request.headers, query or {}))
        try:
            request = take_body_token(source, request)[1]  # as relay keeps it: without a token the body carries
            if is_ping(source, request, parse_request(request)):
                return {"outcome": "ping"}
        except RequestRejected as exc:
            return {"outcome": "fails", "error": f"{exc.code}: {exc.detail}"}
    elif request.source not in today.broken:
        return {"outcome": "unknown_source", "error": f"no mapping file for source {request.source!r}"}
    return _preview_answer(_translated_now(request, today, lambda _key: None))


def _preview_answer(now: _TranslatedNow) -> dict[str, Any]:
    if now.fetch_first:
        detail = "its rules read a record from the provider's API first, which a preview does not ask"
        return {"outcome": "fetch_first", "detail": detail}
    translation = now.translation
    if translation is None:
        return {"outcome": "fails", "error": now.error}
    answer: dict[str, Any] = {"outcome": "translate", "rule": translation.rule, "event": translation.event}
    if translation.ignored:
        return {**answer, "outcome": "ignored", "reason": translation.ignored}
    if translation.forget:
        return {**answer, "outcome": "forget", "forgets": list(translation.forget)}
    answer["calls"] = [call.shown() for call in translation.calls]
    answer["passed_over"] = [str(passed) for passed in translation.passed_over]
    if translation.order_refused:
        answer.update(outcome="fails", error=f"{translation.order_refused} (the calls would still go)")
    return answer


@dataclass
class _TranslatedNow:
    """One delivery translated as a replay would translate it: the translation, or the error it fails with,
    or `fetch_first` when its rules would ask the provider's API first."""

    translation: Translation | None = None
    error: str | None = None
    fetch_first: bool = False


@dataclass
class _Today:
    """What a replay would translate with: the mapping files as they are on disk, today's settings."""

    sources: dict[str, Source]
    broken: dict[str, list[str]]
    context: TranslateContext
    upstream_format: str

    @classmethod
    def of(cls, settings: Settings) -> _Today:
        sources, broken = sources_on_disk(settings.mappings_dir)
        context = TranslateContext(env=settings.env, phone_region=settings.phone_region)
        return cls(sources, broken, context, settings.upstream_format)


def _translated_now(request: InboundRequest, today: _Today, once_holder: Callable[[str], str | None]) -> _TranslatedNow:
    source = today.sources.get(request.source)
    if source is None:
        problems = today.broken.get(request.source)
        return _TranslatedNow(
            error=f"the mapping file of {request.source!r} does not load: {problems[0]}"
            if problems
            else f"no mapping file for source {request.source!r}"
        )
    try:
        translation = translate_request(
            source,
            request,
            today.context,
            upstream_format=today.upstream_format,
            fetch=_not_fetched,
            once_holder=once_holder,
        )
    except _FetchNotChecked:
        return _TranslatedNow(fetch_first=True)
    except MappingError as exc:
        return _TranslatedNow(error=exc.detail)
    except Exception as exc:  # noqa: BLE001 - what the worker would retry as an error of relay's own
        return _TranslatedNow(error=f"error of relay's own: {type(exc).__name__}: {exc}"[:500])
    return _TranslatedNow(translation=translation)


def _check_one(check: ReplayCheck, delivery: Delivery, today: _Today, store: Store) -> None:
    check.checked += 1
    holder = functools.partial(store.once_taken_by, delivery.source, delivery.id)
    now = _translated_now(delivery.inbound(), today, holder)
    if now.fetch_first:
        check.fetch_first += 1
    elif now.translation is None:
        check.failed(delivery, str(now.error))
    elif now.translation.ignored:
        check.ignored += 1
    elif now.translation.order_refused:
        check.failed(delivery, now.translation.order_refused)
    else:
        check.translate += 1


class _FetchNotChecked(Exception):
    """A dry run sends nothing, to the provider's API either: the translation stops at the first fetch,
    its address and settings checked (an unset token or an empty id fail as they would), its answer not."""


def _not_fetched(_request: FetchRequest) -> Any:
    raise _FetchNotChecked
