"""Translate one payload into upstream calls, as the source's mapping file says.

Pure: no Flask, no store, no network. The worker, `preview` and `check` all
call `translate()`; whatever the payload's shape, it returns a `Translation`
or raises `MappingError`, nothing else.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from marshmallow import ValidationError

from relay.errors import FetchError, KeptByMapping, MappingError
from relay.geo import GeoLookup, first_public, public_ip
from relay.inbound import URL_EVENT_HEADER, header_value
from relay.mapping import envrefs
from relay.mapping.delays import LatestHolder, latest_key
from relay.mapping.expressions import search
from relay.mapping.fetches import FETCHED, Fetch, build_request, unset_settings, with_fetched
from relay.mapping.model import (
    ONCE_KEY_LENGTH,
    FetchSpec,
    FieldSpec,
    LinesSpec,
    OrderSpec,
    Rule,
    Source,
    SubscriptionSpec,
    ValueSpec,
)
from relay.mapping.templates import render
from relay.mapping.transforms import PATH_ARGUMENTS, TransformContext, apply_transform, scalar_text
from relay.upstream.contract import MATCHING_MODES, ORDERS_METHOD, missing_match
from relay.upstream.request import UpstreamCall, request_problems

__all__ = [
    "OnceHolder",
    "PassedOver",
    "Translation",
    "TranslateContext",
    "event_of",
    "ignored_at_ingress",
    "select_rule",
    "translate",
    "unmatched_reason",
    "unset_order_settings",
]


@dataclass(frozen=True)
class TranslateContext:
    """Everything besides the payload that a translation may depend on."""

    env: Mapping[str, str] = field(default_factory=dict)
    phone_region: str = "RU"
    geo: GeoLookup | None = None


# Who took a rule's `once` key, in words (`delivery 0190...`), when another delivery did: the worker reads
# its store, `preview` and the examples a list of keys given to them.
OnceHolder = Callable[[str], "str | None"]


@dataclass(frozen=True)
class PassedOver:
    """A rule with `once` that this payload matched, passed over for the rules after it: `holder` took its key."""

    rule: str
    key: str
    holder: str

    def __str__(self) -> str:
        return f"rule {self.rule!r} passed over: its once key {self.key!r} was taken by {self.holder}"


@dataclass(frozen=True)
class Translation:
    """The calls to make, or why there are none (`ignored`).

    `order_refused` says why the rule's order was left out of `calls`: the order breaks the contract while
    the buyer's profile calls do not. Those go, and the delivery then fails as `mapping` with this reason,
    so a lead is not held back by its order's lines; once the mapping is fixed, a replay sends the order
    alone (the calls made before are not made again).

    `order_held` is the same for a document only the order reads (an `order_only` fetch) that did not come:
    the profile calls go, and the delivery is retried (or fails as `rejected`) for the order alone.

    `once_key` is the key of the rule's `once`, which the worker takes for this delivery before its calls go;
    `passed_over` the rules with `once` whose key another delivery had taken."""

    calls: list[UpstreamCall]
    rule: str | None = None
    event: str | None = None
    ignored: str | None = None
    order_refused: str | None = None
    order_held: FetchError | None = None
    once_key: str | None = None
    passed_over: tuple[PassedOver, ...] = ()
    forget: tuple[str, ...] = ()  # the e-mail and phone a rule's erasure request names

    @property
    def passed_note(self) -> str | None:
        """The rules passed over, in words, for the delivery's detail; None when there were none."""
        return "; ".join(map(str, self.passed_over)) or None


def prepare_payload(source: Source, payload: Any) -> Any:
    """Decode the fields that carry JSON as text (Jotform's rawRequest, Tilda's payment)."""
    if not source.decode_json or not isinstance(payload, dict):
        return payload
    prepared = dict(payload)
    for key in source.decode_json:
        value = prepared.get(key)
        if isinstance(value, str) and value.strip()[:1] in ("{", "["):
            try:
                prepared[key] = json.loads(value)
            except ValueError:
                continue
    return prepared


def event_of(source: Source, payload: Any, headers: Mapping[str, str]) -> str | None:
    if source.event_header or source.event_query:
        # The URL's event is kept with the request under relay's own header (`inbound.with_url_event`).
        value = header_value(headers, source.event_header or URL_EVENT_HEADER)
        return value.strip() if value else None
    if source.event_path:
        value = search(source.event_path, payload)
        return None if value is None or isinstance(value, (dict, list)) else str(value)
    return None


def matching_rules(source: Source, payload: Any, event: str | None) -> Iterator[Rule]:
    """The rules whose events and `when` take this payload, in the order written."""
    for rule in source.rules:
        if rule.events and event not in rule.events:
            continue
        if rule.when and not _truthy(search(rule.when, payload)):
            continue
        yield rule


def select_rule(source: Source, payload: Any, event: str | None) -> Rule | None:
    """The first rule that takes this payload (the ingress's view: a rule with `once` may still be passed
    over in the worker)."""
    return next(matching_rules(source, payload, event), None)


def unset_order_settings(spec: OrderSpec, env: Mapping[str, str]) -> dict[str, list[str]]:
    """The settings an order's values are written as that are unset or empty, by value (Ecwid's currency):
    each holds every order back. The endpoint is not among them: unset, it turns the orders off."""
    unset: dict[str, list[str]] = {}
    for key, value in spec.values.items():
        if key != "endpoint" and isinstance(value.value, str) and "${" in value.value:
            names = [ref.name for ref in envrefs.find_refs(value.value) if ref.resolve(env) in (None, "")]
            if names:
                unset[key] = names
    return unset


def ignored_at_ingress(source: Source, data: Any, event: str | None, env: Mapping[str, str]) -> str | None:
    """Why the ingress answers a webhook `ignored` (nothing stored), or None when it is taken: the worker's
    own decision (`translate`), as far as the ingress can know it without the documents the worker fetches."""
    if source.rule_fetches and not _nothing_to_fetch(source, data, event, env):
        settled = _ignored_whatever_fetched(source, event)
        return settled[1] if settled is not None else None
    rule = select_rule(source, with_fetched(data, {}) if source.rule_fetches else data, event)
    return unmatched_reason(event) if rule is None else rule.ignore


def _applies(spec: FetchSpec, view: Any, event: str | None, env: Mapping[str, str]) -> bool:
    """Whether the worker makes this fetch for this payload: its events and `when` allow it, and, for an
    `optional` one, every setting it needs is set."""
    if spec.events and event not in spec.events:
        return False
    if spec.when and not _truthy(search(spec.when, view)):
        return False
    return not (spec.optional and unset_settings(spec, env))


def _nothing_to_fetch(source: Source, data: Any, event: str | None, env: Mapping[str, str]) -> bool:
    """Whether the worker would fetch nothing for this payload (Paddle's transactions without
    PADDLE_API_KEY): the rules then see the payload with an empty `fetched`, at the ingress as in the worker."""
    if not isinstance(data, dict):
        return False
    view = with_fetched(data, {})
    return not any(_applies(spec, view, event, env) for spec in source.rule_fetches)


def _ignored_whatever_fetched(source: Source, event: str | None) -> tuple[Rule | None, str] | None:
    """(the rule, why) when this event is ignored whatever the source's fetched documents hold; else None.

    For a source that fetches, a rule's `when` may read `fetched.<name>`, which only the worker has: the
    ingress and the worker decide by the event and by rules without `when` alone, and a rule with one is a
    rule that may forward. So nothing a fetched document could have forwarded is answered `ignored`."""
    for rule in source.rules:
        if rule.events and event not in rule.events:
            continue
        if rule.when is None:
            return (rule, rule.ignore) if rule.ignore is not None else None
        if rule.ignore is None:
            return None
    return None, unmatched_reason(event)


def _fetch_documents(
    specs: tuple[FetchSpec, ...],
    data: Any,
    documents: Mapping[str, Any],
    event: str | None,
    fetch: Fetch,
    env: Mapping[str, str],
) -> Any:
    """The payload with `documents` and those `specs` give, made in the order written: each fetch's `when`
    and templates see the documents of those before it. An `optional` fetch whose setting is unset is
    left out."""
    fetched = dict(documents)
    view = with_fetched(data, fetched)
    for spec in specs:
        if _applies(spec, view, event, env):
            fetched[spec.name] = fetch(build_request(spec, view, env))
            view = with_fetched(data, fetched)
    return view


def unmatched_reason(event: str | None) -> str:
    """Why a request no rule takes is ignored: the same words at ingress, in the worker and in `preview`."""
    return f"no rule forwards event {event!r}" if event else "no rule matches this payload"


def _truthy(value: Any) -> bool:
    return value not in (None, False, "", [], {}, 0)


def translate(
    source: Source,
    payload: Any,
    *,
    headers: Mapping[str, str] | None = None,
    client_ip: str | None = None,
    context: TranslateContext | None = None,
    fetch: Fetch | None = None,
    once_holder: OnceHolder | None = None,
    latest_holder: LatestHolder | None = None,
) -> Translation:
    """Turn `payload` into the calls the mapping prescribes.

    `fetch` gets the documents a source's `fetch:` section names (the worker's HTTP client, or files
    given to `preview` and to the examples); whatever it raises (`FetchError`) goes up as it is, but for
    a fetch only the order reads: its `FetchError` is kept as `order_held`, its `MappingError` as
    `order_refused`. `once_holder` says which other delivery took a rule's `once` key; such a rule is
    passed over for the next that takes the payload. Without it every key is free. `latest_holder` says which
    later delivery holds a delayed event's `latest_by` key: this one is then ignored, nothing fetched.

    Raises:
        MappingError: the payload lacks what the mapping needs, or the result
            would break the upstream contract.
    """
    ctx = context or TranslateContext()
    headers = headers or {}
    data = prepare_payload(source, payload)
    if source.payload_schema is not None:
        if not isinstance(data, dict):
            raise MappingError("payload must be an object")
        try:
            source.payload_schema.load(data)
        except ValidationError as exc:
            raise MappingError(f"payload does not fit the source's schema: {_short(exc.messages)}") from None
    event = event_of(source, data, headers)
    payload_itself = data
    if latest_holder is not None and source.delays:
        latest = latest_key(source, data, event)
        later = latest_holder(latest.key) if latest is not None else None
        if latest is not None and later is not None:
            ignored = f"superseded by {later}, a later webhook of the same {latest.by}"
            return Translation(calls=[], event=event, ignored=ignored)
    if source.rule_fetches:
        settled = _ignored_whatever_fetched(source, event)
        if settled is not None:
            return Translation(calls=[], rule=settled[0].name if settled[0] else None, event=event, ignored=settled[1])
        if fetch is None:
            raise MappingError(f"source {source.name!r} fetches documents from its API, and none were given")
        data = _fetch_documents(source.rule_fetches, data, {}, event, fetch, ctx.env)
    passed: list[PassedOver] = []
    for rule in matching_rules(source, data, event):
        if rule.ignore is not None:
            return Translation(calls=[], rule=rule.name, event=event, ignored=rule.ignore, passed_over=tuple(passed))
        try:
            if rule.keep is not None:
                raise KeptByMapping(rule.name, rule.keep)
            builder = _Builder(source, rule, data, ctx, client_ip)
            if rule.forget is not None:
                return Translation(calls=[], rule=rule.name, event=event, forget=builder.forgotten())
            once_key = builder.once_key()
            holder = once_holder(once_key) if once_key is not None and once_holder is not None else None
            if once_key is not None and holder is not None:
                passed.append(PassedOver(rule.name, once_key, holder))
                continue
            return _forward(builder, payload_itself, event, fetch, once_key, tuple(passed))
        except MappingError as exc:
            exc.rule = exc.rule or rule.name
            raise
    return Translation(calls=[], event=event, ignored=unmatched_reason(event), passed_over=tuple(passed))


def _forward(
    builder: _Builder,
    payload_itself: Any,
    event: str | None,
    fetch: Fetch | None,
    once_key: str | None,
    passed: tuple[PassedOver, ...],
) -> Translation:
    """The calls of the rule `builder` builds, the order's included unless it is refused or held."""
    source, rule, data, ctx = builder.source, builder.rule, builder.payload, builder.ctx
    calls = builder.build()
    for call in calls:
        _check_call(rule, call)
    order_refused = order_held = None
    if rule.order is not None:

        def order_view() -> Any:
            """The payload as the order section reads it, with the documents only it reads: fetched once the
            order is known to go, after the profile calls are built, so those never read them and stay the
            same whether they came or not."""
            if fetch is None:
                raise MappingError(f"source {source.name!r} fetches documents from its API, and none were given")
            documents = data.get(FETCHED, {}) if source.rule_fetches else {}
            return _fetch_documents(source.order_fetches, payload_itself, documents, event, fetch, ctx.env)

        try:
            order = builder.order_call(rule.order, calls[0].body, fetched=order_view if source.order_fetches else None)
            if order is not None:
                _check_call(rule, order)
                calls.append(order)
        except FetchError as exc:
            order_held = exc
        except MappingError as exc:
            order_refused = f"the order was not sent: {exc.detail}"
    return Translation(
        calls=calls,
        rule=rule.name,
        event=event,
        order_refused=order_refused,
        order_held=order_held,
        once_key=once_key,
        passed_over=passed,
    )


def _check_call(rule: Rule, call: UpstreamCall) -> None:
    problems = request_problems(call.method, call.body)
    if problems:
        raise MappingError(f"rule {rule.name!r} builds an invalid request: " + "; ".join(problems))


def _order_text(value: Any) -> Any:
    """An order's ids and prices as the market API takes them, text (`36.99`, `820982911946154508`)."""
    text = scalar_text(value)
    return text if text is not None else value


def _short(messages: Any) -> str:
    return json.dumps(messages, ensure_ascii=False, sort_keys=True)[:500]


class _Builder:
    """Builds the calls of one rule for one payload."""

    def __init__(self, source: Source, rule: Rule, payload: Any, ctx: TranslateContext, client_ip: str | None) -> None:
        self.source = source
        self.rule = rule
        self.payload = payload
        self.ctx = ctx
        self.client_ip = client_ip
        self.transform_ctx = TransformContext(phone_region=ctx.phone_region)

    def forgotten(self) -> tuple[str, ...]:
        """The e-mail and phone a `forget` rule names, as text. Raises MappingError when it gives neither."""
        assert self.rule.forget is not None
        named = [self.value(spec) for spec in self.rule.forget.values()]
        found = tuple(str(value) for value in named if isinstance(value, (str, int)) and str(value))
        if not found:
            kinds = " or ".join(self.rule.forget)
            raise MappingError(f"rule {self.rule.name!r} forgets a person by {kinds}, and the payload gives none")
        return found

    # -- values -----------------------------------------------------------
    def value(self, spec: ValueSpec) -> Any:
        if spec.path is not None:
            value = search(spec.path, self.payload)
        elif spec.template is not None:
            value = render(spec.template, self.payload, search=search, env=self.ctx.env)
        else:
            value = self._literal(spec.value)
        for name, arg in spec.transforms:
            value = apply_transform(name, self._argument(name, arg), value, self.transform_ctx)
        if _empty(value):
            value = self._literal(spec.default)
        if _empty(value):
            return None
        # Containers are copied so a call never shares (and mutates) the payload's objects.
        return copy.deepcopy(value) if isinstance(value, (dict, list)) else value

    def _argument(self, transform: str, arg: Any) -> Any:
        """A transform's argument with settings filled in, and its `<name>_path` read from the payload as `<name>`.

        The payload's value is never searched for `${...}`: a buyer's text cannot name a setting.
        """
        if not isinstance(arg, dict):
            return self._literal(arg) if arg is not None else None  # most transforms take no argument
        path_key = PATH_ARGUMENTS.get(transform)
        if path_key is None or path_key not in arg:
            return self._literal(arg)
        resolved = {key: self._literal(item) for key, item in arg.items() if key != path_key}
        resolved[path_key.removesuffix("_path")] = search(str(arg[path_key]), self.payload)
        return resolved

    def _literal(self, value: Any) -> Any:
        if isinstance(value, str):
            return envrefs.resolve_text(value, self.ctx.env)
        if isinstance(value, dict):
            return {key: self._literal(item) for key, item in value.items()}
        return value

    def integer(self, value: int | str, what: str) -> int:
        if isinstance(value, int):
            return value
        resolved = envrefs.resolve_text(value, self.ctx.env)
        try:
            return int(resolved)
        except ValueError:
            raise MappingError(f"{what}: {value} must resolve to a whole number, not {resolved!r}") from None

    def name(self, text: str) -> str:
        return envrefs.resolve_text(text, self.ctx.env)

    def once_key(self) -> str | None:
        """The key of the rule's `once` for this payload; None for a rule without one.

        Raises:
            MappingError: the payload gives no key, or one too long to be a key.
        """
        if self.rule.once is None:
            return None
        key = scalar_text(self.value(self.rule.once))
        if not key:
            raise MappingError(f"rule {self.rule.name!r} applies once per key, and this payload gives none")
        if len(key) > ONCE_KEY_LENGTH:
            raise MappingError(
                f"rule {self.rule.name!r} applies once per key, and this payload's is longer than "
                f"{ONCE_KEY_LENGTH} characters"
            )
        return key

    # -- the call ---------------------------------------------------------
    def build(self) -> list[UpstreamCall]:
        rule = self.rule
        body: dict[str, Any] = {"db_id": self.integer(rule.db_id, "db_id")}
        body.update(self._matching())
        if rule.resource_id is not None:
            body["resource_id"] = self.integer(rule.resource_id, "resource_id")
        data = self._fields()
        self._ip(data, body)
        subscriptions = self._subscriptions()
        if subscriptions:
            data["subscriptions"] = subscriptions
            body["skip_invalid_subscriptions"] = rule.skip_invalid_subscriptions
        tags_field, remove_tags = self._tags(data)
        if rule.skip_triggers:
            body["skip_triggers"] = True
        if rule.add_to_segments:
            body["add_to_segments"] = [self.integer(s, "add_to_segments") for s in rule.add_to_segments]
        if rule.remove_from_segments:
            body["remove_from_segments"] = [self.integer(s, "remove_from_segments") for s in rule.remove_from_segments]
        body["data"] = data
        calls = [UpstreamCall(rule.method, body)]
        if remove_tags:
            # One field takes one operator per call, so removals follow as an update.
            follow_up = {k: body[k] for k in body if k in ("db_id", "matching", "resource_id")}
            follow_up.update(self._match_keys(body))
            if rule.skip_triggers:
                follow_up["skip_triggers"] = True
            follow_up["data"] = {tags_field: {"action": "delete", "value": remove_tags}}
            calls.append(UpstreamCall("profiles/update", follow_up))
        return calls

    def order_call(
        self, spec: OrderSpec, profile_body: dict[str, Any], *, fetched: Callable[[], Any] | None = None
    ) -> UpstreamCall | None:
        """The `market/orders/import` call that follows the profile's, for the buyer it matched; None when
        the order's endpoint comes out empty (the setting that names it is unset: orders are not sent) or
        its `when` is false. `fetched` gives the payload with the documents only the order reads, and is
        called only once the endpoint is known.

        Raises:
            FetchError: a document only the order reads did not come.
            MappingError: the order cannot be built, or a document fetched for it.
        """
        endpoint = self.value(spec.values["endpoint"])  # first: unset, nothing else is read or fetched
        if endpoint in (None, ""):
            return None
        reader = self if fetched is None else _Builder(self.source, self.rule, fetched(), self.ctx, self.client_ip)
        order = reader._order(spec, profile_body, endpoint)
        if order is None:
            return None
        body: dict[str, Any] = {"data": [order]}
        if self.rule.skip_triggers:
            body["skip_triggers"] = True
        return UpstreamCall(ORDERS_METHOD, body)

    def _order(self, spec: OrderSpec, profile_body: dict[str, Any], endpoint: Any) -> dict[str, Any] | None:
        if spec.when is not None and not _truthy(search(spec.when, self.payload)):
            return None
        self._require_settings(spec)
        values = {key: endpoint if key == "endpoint" else self.value(value) for key, value in spec.values.items()}
        # The buyer's keys after the order's id, as the API's examples write them.
        order: dict[str, Any] = {"external_id": None, "matching": profile_body["matching"]}
        order.update(self._match_keys(profile_body))
        for key, value in values.items():
            order[key] = value if key == "tags" or value is None else _order_text(value)
        items = search(spec.lines.path, self.payload)
        if not isinstance(items, list):
            items = [] if items is None else [items]
        shared = {key: search(expression, self.payload) for key, expression in spec.lines.shared.items()}
        if shared:
            items = [{**item, **shared} if isinstance(item, dict) else item for item in items]
        order["lines"] = [self._line(spec.lines, item) for item in items]
        return {key: value for key, value in order.items() if value is not None}

    def _require_settings(self, spec: OrderSpec) -> None:
        """Name the setting an order's value is written as (`currency: {value: "${ECWID_CURRENCY}"}`) when it is
        unset, rather than let the contract say the value is missing.

        Raises:
            MappingError: such a setting is unset (or empty) and has no default.
        """
        unset = unset_order_settings(spec, self.ctx.env)
        if unset:
            key, names = next(iter(unset.items()))
            raise MappingError(f"the order's {key} is the setting {', '.join(names)}, which is unset")

    def _line(self, spec: LinesSpec, item: Any) -> dict[str, Any]:
        reader = _Builder(self.source, self.rule, item, self.ctx, self.client_ip)
        line: dict[str, Any] = {}
        for key, value_spec in spec.values.items():
            value = reader.value(value_spec)
            if value is not None:
                line[key] = value if key == "count" else _order_text(value)
        return line

    def _match_keys(self, body: dict[str, Any]) -> dict[str, Any]:
        """The values the profile call matches by, for the calls that follow it (tag removal, the order)."""
        return {key: body[key] for key in self.rule.match if key in body}

    def _matching(self) -> dict[str, Any]:
        """`matching` and its keys: the rule's first mode whose keys the payload gives. A rule of one mode sends
        every match value it has; one of several sends the chosen mode's alone (an e-mail match with a phone
        beside it could find a second profile by the phone).

        Raises:
            MappingError: the payload gives no usable value for any of the rule's modes.
        """
        given: dict[str, Any] = {}
        for key, spec in self.rule.match.items():
            value = self.value(spec)
            if value is not None:
                given[key] = scalar_text(value) if key != "field_value" else value
        modes = self.rule.matching
        wanted: list[str] = []
        for mode in modes:
            lacking = missing_match(mode, given)
            if lacking is None:
                if len(modes) > 1:
                    required, one_of = MATCHING_MODES[mode]
                    given = {key: given[key] for key in given if key in required or key in one_of}
                return {"matching": mode, **given}
            if lacking not in wanted:
                wanted.append(lacking)
        raise MappingError(
            f"rule {self.rule.name!r} matches by {' or '.join(modes)} but the payload gives no usable "
            f"{' or '.join(wanted)}"
        )

    def _fields(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for raw_name, spec in self.rule.fields.items():
            name = self.name(raw_name)
            if not name:
                continue  # named by a setting left empty (`${RELAY_RECOVERY_URL_FIELD:-}`): an optional field
            written = self._field(spec)
            if written is not None:
                data[name] = written
        if self.rule.full_name is not None:
            full = self.value(self.rule.full_name)
            if isinstance(full, str):
                first = apply_transform("first_name", None, full, self.transform_ctx)
                last = apply_transform("last_name", None, full, self.transform_ctx)
                if first and "_fname" not in data:
                    data["_fname"] = first
                if last and "_lname" not in data:
                    data["_lname"] = last
        return data

    def _field(self, spec: FieldSpec) -> Any:
        if spec.op == "unset":
            return {"action": "unset"}
        value = self.value(spec.value)
        if value is None:
            return None
        if spec.op == "set":
            return value
        if spec.op in ("add", "delete") and not isinstance(value, list):
            value = [value]
        written: dict[str, Any] = {"action": spec.op, "value": value}
        if spec.submatch:
            written["submatch"] = spec.submatch
        return written

    def _ip(self, data: dict[str, Any], body: dict[str, Any]) -> None:
        candidates = [search(path, self.payload) for path in self.source.ip_paths]
        ip = first_public(candidates)
        if ip is None and self.source.ip_from_client:
            ip = public_ip(self.client_ip)
        if ip is None:
            return
        data["_ip"] = ip
        if self.rule.new_profile:
            data["_regip"] = ip
        if self.rule.detect_geo:
            body["detect_geo"] = True
        if self.ctx.geo is not None:
            for key, value in self.ctx.geo.lookup(ip).items():
                data.setdefault(key, value)

    def _subscriptions(self) -> list[dict[str, Any]]:
        built = []
        for spec in self.rule.subscriptions:
            subscription = self._subscription(spec)
            if subscription is not None:
                built.append(subscription)
        return built

    def _subscription(self, spec: SubscriptionSpec) -> dict[str, Any] | None:
        if spec.when and not _truthy(search(spec.when, self.payload)):
            return None
        item: dict[str, Any] = {
            "resource_id": self.integer(spec.resource_id, "subscriptions.resource_id"),
            "channel": spec.channel,
        }
        for key, value_spec in spec.identity.items():
            value = self.value(value_spec)
            if value is None:
                return None  # no identity, no subscription
            head, _, sub = key.partition(".")
            if sub:
                item.setdefault(head, {})[sub] = value
            else:
                item[head] = scalar_text(value)
        if spec.status is not None:
            status = self.value(spec.status)
            if status is not None:
                item["status"] = status
        if spec.priority is not None:
            priority = self.value(spec.priority)
            if priority is not None:
                item["priority"] = priority
        custom = {k: v for k, s in spec.custom_fields.items() if (v := self.value(s)) is not None}
        if custom:
            item["custom_fields"] = custom
        if spec.cats is not None:
            cats = self.value(spec.cats)
            if cats is not None:
                item["cats"] = [str(c) for c in (cats if isinstance(cats, list) else [cats])]
        return item

    def _tags(self, data: dict[str, Any]) -> tuple[str, list[str]]:
        spec = self.rule.tags
        if spec is None:
            return "", []
        field_name = self.name(spec.field)
        add = self._tag_list(spec.add)
        remove = [tag for tag in self._tag_list(spec.remove) if tag not in add]
        if add:
            data[field_name] = {"action": "add", "value": add}
        return field_name, remove

    def _tag_list(self, specs: tuple[ValueSpec, ...]) -> list[str]:
        tags: list[str] = []
        for spec in specs:
            value = self.value(spec)
            for tag in value if isinstance(value, list) else [value]:
                text = scalar_text(tag)
                if text and text not in tags:
                    tags.append(text)
        return tags


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}
