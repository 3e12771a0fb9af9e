"""`python -m relay deliveries`, `overview`, `replay` and `forget`: the admin API's list, show, overview,
replay and forget from the shell."""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from relay.contacts import Contact, forget, listed_deliveries, parse_contact
from relay.delivery_views import deliveries_overview, delivery_detail, delivery_summary, parse_time, replay_refusal
from relay.errors import ConfigError
from relay.listing import chosen_deliveries, every_delivery, iter_chosen, naming_event
from relay.mapping.loader import load_sources_leniently
from relay.mapping.model import Source
from relay.replay_check import check_delivery, replay_event, replay_filtered
from relay.settings import Settings
from relay.store import REPLAYABLE, SETTLED, STATUSES, Delivery, Store, status_and_reason

__all__ = ["cmd_deliveries", "cmd_forget", "cmd_overview", "cmd_replay"]

PROBLEM_DETAIL_SHOWN = 160  # characters of a problem's detail in `relay overview`; --json has all of it


def _filters(args: Any) -> dict[str, Any]:
    # Checked by the parser (relay/cli.py): a known status, times already in epoch seconds.
    return {"status": args.status, "source": args.source, "since": args.since, "until": args.until}


def cmd_deliveries(args: Any, settings: Settings) -> int:
    store = Store(settings.database_url)
    sources = _sources(settings)
    try:
        if args.id:
            delivery = store.get(args.id)
            if delivery is None:
                print(f"relay: no delivery {args.id}", file=sys.stderr)
                return 1
            detail = delivery_detail(delivery, store.attempts_of(args.id), sources)
            print(json.dumps(detail, ensure_ascii=False, indent=2))
            return 0
        if args.follow:
            if args.contact or args.status or args.since or args.until or args.before:
                print("relay: --follow takes --source and --event (and --json)", file=sys.stderr)
                return 1
            return _follow(store, sources, args.source, as_json=args.json, event=args.event)
        contact = _contact(args.contact, settings) if args.contact else None
        if args.contact and contact is None:
            return 1
        page = listed_deliveries(
            store,
            limit=args.limit,
            before=args.before,
            contact=contact,
            names_event=naming_event(sources, args.event) if args.event else None,
            **_filters(args),
        )
        for delivery in page:
            _print_delivery(delivery, sources, as_json=args.json)
        if len(page) == args.limit:  # on stderr: stdout stays one delivery a line, for scripts
            print(f"relay: there may be more: the same command with --before {page[-1].id}", file=sys.stderr)
        return 0
    finally:
        store.close()


def _sources(settings: Settings) -> dict[str, Source]:
    """The mapping files that load, to say each delivery's event; none (no events shown) when the folder has
    no mapping file: the store's deliveries are listed wherever the command runs."""
    try:
        return load_sources_leniently(settings.mappings_dir)[0]
    except ConfigError:
        return {}


def _print_delivery(delivery: Delivery, sources: Mapping[str, Source], *, as_json: bool) -> None:
    row = delivery_summary(delivery, sources)
    if as_json:
        print(json.dumps(row, ensure_ascii=False), flush=True)
        return
    print(
        f"{row['id']}  {row['received_at']}  {row['source']:<13} {row['event'] or '-':<22} {row['status']:<10} "
        f"{row['reason'] or '':<9} attempts={row['attempts']}  {_one_line(row['detail'])}",
        flush=True,
    )


FOLLOW_INTERVAL = 1.0  # seconds between looks at the store
FOLLOW_BACKLOG = 10  # the newest deliveries shown first, as `tail -f` shows the last lines
FOLLOW_WATCHED = 200  # deliveries not settled yet whose changes are shown, the newest


def _follow(
    store: Store,
    sources: Mapping[str, Source],
    source: str | None,
    *,
    as_json: bool,
    event: str | None = None,
    interval: float = FOLLOW_INTERVAL,
) -> int:
    """Print each delivery as it arrives (of `source`, naming `event`), then again each time its status, reason
    or tries change, until Ctrl-C: an operator pressing a provider's "send test" button sees it come in, and
    go out."""
    keep = naming_event(sources, event) if event else every_delivery
    watched: dict[str, tuple[str, str | None, int]] = {}
    newest = max((delivery.id for delivery in store.list_deliveries(limit=1, source=source)), default="")
    arrived = list(reversed(chosen_deliveries(store, keep, limit=FOLLOW_BACKLOG, source=source)))
    try:
        while True:
            for delivery in arrived:
                newest = max(newest, delivery.id)
                if not keep(delivery):
                    continue
                _print_delivery(delivery, sources, as_json=as_json)
                if delivery.status not in SETTLED:
                    watched[delivery.id] = (delivery.status, delivery.reason, delivery.attempts)
            for delivery_id in sorted(watched)[:-FOLLOW_WATCHED]:
                del watched[delivery_id]
            for delivery_id, state in list(watched.items()):
                current = store.get(delivery_id)
                if current is None or current.status in SETTLED:
                    del watched[delivery_id]
                if current is not None and (current.status, current.reason, current.attempts) != state:
                    _print_delivery(current, sources, as_json=as_json)
                    if delivery_id in watched:
                        watched[delivery_id] = (current.status, current.reason, current.attempts)
            time.sleep(interval)
            arrived = _arrived_since(store, newest, source)
    except KeyboardInterrupt:
        return 0


def _arrived_since(store: Store, newest: str, source: str | None) -> list[Delivery]:
    """Deliveries with ids after `newest` (ids begin with the arrival's time), oldest first."""
    after = itertools.takewhile(
        lambda delivery: delivery.id > newest, iter_chosen(store, every_delivery, source=source)
    )
    return list(reversed(list(after)))


def cmd_replay(args: Any, settings: Settings) -> int:
    store = Store(settings.database_url)
    status = "queued" if settings.upstream_url else "held"
    try:
        if args.id:
            if args.dry_run:
                delivery = store.get(args.id)
                taken = delivery is not None and delivery.status in REPLAYABLE
                said = ""
                if delivery is not None and taken:
                    said = (
                        f"would replay {args.id}: {status_and_reason(delivery.status, delivery.reason)}\n"
                        + _replay_check_line(check_delivery(delivery, settings, store))
                    )
            else:
                taken = store.replay(args.id, to_status=status)
                said = f"{args.id}: {status}"
            if not taken:
                print(f"relay: {args.id} is not failed or held (or does not exist)", file=sys.stderr)
                return 1
            print(said)
            return 0
        filters = _filters(args)
        if not any(filters.values()) and not args.event:
            print("relay: give an id, or a filter (--status, --source, --since, --until, --event)", file=sys.stderr)
            return 1
        refusal = replay_refusal(filters["status"])
        if refusal:
            print("relay: " + refusal, file=sys.stderr)
            return 1
        if args.event:
            sources = _sources(settings)
            answer = replay_event(store, settings, sources, filters, args.event, to_status=status, dry_run=args.dry_run)
        else:
            answer = replay_filtered(store, settings, filters, to_status=status, dry_run=args.dry_run)
        if args.dry_run:
            _print_dry_run(answer["by_status"], answer.get("with_mappings_now"))
        else:
            print(f"replayed {_deliveries(answer['replayed'])} ({status})")
        return 0
    finally:
        store.close()


def cmd_forget(args: Any, settings: Settings) -> int:
    contact = _contact(args.contact, settings)
    if contact is None:
        return 1
    store = Store(settings.database_url)
    try:
        found = forget(store, contact, dry_run=args.dry_run)
    finally:
        store.close()
    for delivery_id in found.ids:
        print(delivery_id)
    if args.dry_run:
        print(f"would forget {_deliveries(len(found.ids))} naming {contact.value}", file=sys.stderr)
        return 0
    print(f"forgot {_deliveries(len(found.ids))} naming {contact.value}, with their attempts", file=sys.stderr)
    if found.being_delivered:
        print(
            f"relay: {_deliveries(len(found.being_delivered))} being sent now, left: "
            + ", ".join(found.being_delivered)
            + "; run the same command again once sent",
            file=sys.stderr,
        )
        return 1
    return 0


def _contact(text: str, settings: Settings) -> Contact | None:
    try:
        return parse_contact(text, settings.phone_region)
    except ValueError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return None


def _print_dry_run(by_status: dict[str, int], check: dict[str, Any] | None) -> None:
    """What a replay would take, by status and reason, and what they do with the mapping files as they are."""
    total = sum(by_status.values())
    parts = ", ".join(f"{key} {count}" for key, count in by_status.items())
    print(f"would replay {_deliveries(total)}" + (f": {parts}" if parts else ""))
    if check is not None:
        print(_replay_check_lines(check, total), end="")


def _deliveries(count: int) -> str:
    return f"{count:,} delivery" if count == 1 else f"{count:,} deliveries"


def _replay_check_line(check: dict[str, Any]) -> str:
    """What one delivery would do if replayed now."""
    if check["errors"]:
        return f"with the mapping files as they are now it still fails: {_one_line(check['errors'][0]['error'])}"
    if check.get("fetch_first"):
        return (
            "with the mapping files as they are now it fetches its record from the provider's API first "
            "(the address and settings check; the API's answer is not asked for)"
        )
    return "with the mapping files as they are now " + (
        "its mapping ignores it" if check["ignored"] else "it translates"
    )


def _replay_check_lines(check: dict[str, Any], total: int) -> str:
    """What the deliveries a replay takes would do with the mapping files as they are now, as lines."""
    newest = "" if check["checked"] == total else f" (the newest {check['checked']:,} of them)"
    lines = [
        f"with the mapping files as they are now{newest}: {check['translate']:,} translate, "
        f"{check['ignored']:,} ignored by their mapping, {check['still_fail']:,} still fail"
        + (
            f", {check['fetch_first']:,} fetch their record from the provider's API first (not asked for here)"
            if check.get("fetch_first")
            else ""
        )
    ]
    lines += [
        f"{error['count']:>8}  {error['source']}  {error['newest_id']}  {_one_line(error['error'])}"
        for error in check["errors"]
    ]
    return "\n".join(lines) + "\n"


def cmd_overview(args: Any, settings: Settings) -> int:
    store = Store(settings.database_url)
    try:
        found = deliveries_overview(store, {"source": args.source, "since": args.since, "until": args.until})
    finally:
        store.close()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print(f"deliveries: {found['total']:,}   " + "   ".join(f"{s} {found['by_status'][s]:,}" for s in STATUSES))
    if found["failed_by_reason"]:
        print("failed by reason: " + ", ".join(f"{r} {n:,}" for r, n in found["failed_by_reason"].items()))
    age = found["oldest_due_age_seconds"]
    print("oldest due: " + ("none waiting" if age is None else f"waiting {_duration(age)}"))
    kept = found["store"]
    if kept["file_bytes"] is None:
        print(f"store: {kept['kind']}")
    else:
        free = _size(kept["disk_free_bytes"])
        print(f"store: {kept['kind']}, {_size(kept['file_bytes'])} in its files, {free} free on their disk")
    now = time.time()
    done = [f"{task} {_ago(at, now)}" for task, at in found["housekeeping_done_at"].items()]
    print("housekeeping done: " + (", ".join(done) or "not yet (the delivery worker does it)"))
    if found["by_source"]:
        width = max(len("source"), *(len(name) for name in found["by_source"]))
        print(f"{'source':<{width}}  " + "  ".join(f"{s:>10}" for s in STATUSES) + "  last received")
        for name, counts in found["by_source"].items():
            ago = _ago(found["last_received_at"][name], now)
            print(f"{name:<{width}}  " + "  ".join(f"{counts[s]:>10,}" for s in STATUSES) + f"  {ago}")
    if found["problems"]:
        problems = found["problems"]
        source_width = max(len("source"), *(len(problem["source"]) for problem in problems))
        status_width = max(len("status"), *(len(problem["status"]) for problem in problems))
        print("most common problems of failed and retrying deliveries (`relay deliveries <id>` shows one):")
        print(f"{'count':>8}  {'source':<{source_width}}  {'status':<{status_width}}  newest id")
        for problem in problems:
            detail = _one_line(problem["detail"]) or "no detail"
            if len(detail) > PROBLEM_DETAIL_SHOWN:
                detail = detail[: PROBLEM_DETAIL_SHOWN - 3] + "..."
            print(
                f"{problem['count']:>8,}  {problem['source']:<{source_width}}  {problem['status']:<{status_width}}  "
                f"{problem['newest_id']}\n{'':>10}{detail}"
            )
    return 0


def _ago(iso: str | None, now: float) -> str:
    """`12 min 5 s ago`, for a time the overview gives."""
    return f"{_duration(max(0.0, now - (parse_time(iso) or now)))} ago"


def _one_line(detail: str | None) -> str:
    """A delivery's detail on one line, whatever the upstream's error text held (line breaks, tabs)."""
    return " ".join((detail or "").split())


def _size(count: int | None) -> str:
    if count is None:
        return "unknown"
    if count < 1024:
        return f"{count} B"
    size = count / 1024
    for unit in ("KB", "MB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.0f} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"
