"""What the admin API and the command line show of deliveries: the overview, a delivery's row and its detail,
and the filters they take, checked.

Apart from the admin API so that `relay deliveries` and `relay overview` start without Flask.
"""

from __future__ import annotations

import base64
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from relay.mapping.model import Source
from relay.mapping.schema import SOURCE_NAME
from relay.pipeline import stored_event
from relay.store import DELIVERY_ID, FAILURE_REASONS, REPLAYABLE, STATUSES, Delivery, Store, status_and_reason

__all__ = [
    "NOT_REPLAYABLE",
    "checked_id",
    "checked_source",
    "checked_status",
    "checked_time",
    "deliveries_overview",
    "delivery_detail",
    "delivery_filters",
    "delivery_summary",
    "parse_time",
    "replay_refusal",
]


def parse_time(text: str | None) -> float | None:
    """An ISO 8601 time or epoch seconds, as epoch seconds.

    Raises:
        ValueError: neither (nan and inf are neither).
    """
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a time")
    return seconds


NOT_REPLAYABLE = "only failed and held deliveries replay; those that are {status} never do"


def replay_refusal(status: str | None) -> str | None:
    """Why a replay filtered by `status` (`failed/rejected` included) would take nothing, or None."""
    if status and status.partition("/")[0] not in REPLAYABLE:
        return NOT_REPLAYABLE.format(status=status)
    return None


def checked_status(text: str) -> str:
    """A delivery status, as given: `failed`, or a failure's reason too, `failed/rejected`.

    Raises:
        ValueError: not one of the statuses.
    """
    name, slash, reason = text.partition("/")
    if name not in STATUSES or (slash and (name != "failed" or reason not in FAILURE_REASONS)):
        failures = ", ".join(f"failed/{reason}" for reason in FAILURE_REASONS)
        raise ValueError(f"{text[:80]!r} is not one of {', '.join(STATUSES)}, {failures}")
    return text


def checked_source(text: str) -> str:
    """A source name, as given (one no mapping file names any longer still finds its deliveries).

    Raises:
        ValueError: not a name a source can have, so it would find nothing (`Tilda`, NUL...).
    """
    if not SOURCE_NAME.fullmatch(text):
        raise ValueError(f"{text[:80]!r} is not a source name (lower-case letters, digits and _)")
    return text


def checked_id(text: str) -> str:
    """A delivery id, as given.

    Raises:
        ValueError: not 32 hex digits, so no delivery has it.
    """
    if not DELIVERY_ID.fullmatch(text):
        raise ValueError(f"{text[:80]!r} is not a delivery id (32 hex digits)")
    return text


def checked_time(text: str) -> float | None:
    """`parse_time`, with a message that says what it takes.

    Raises:
        ValueError: neither an ISO 8601 time nor epoch seconds.
    """
    try:
        return parse_time(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time nor epoch seconds") from None


def delivery_filters(status: str | None, source: str | None, since: str | None, until: str | None) -> dict[str, Any]:
    """The filters of a list or a replay, checked: a misspelt status or time is an error, not an empty answer.

    Raises:
        ValueError: naming the filter that is wrong and what it takes.
    """
    filters: dict[str, Any] = {}
    checks: tuple[tuple[str, str | None, Callable[[str], Any]], ...] = (
        ("status", status, checked_status),
        ("source", source, checked_source),
        ("since", since, checked_time),
        ("until", until, checked_time),
    )
    for name, text, check in checks:
        try:
            filters[name] = check(text) if text else None
        except ValueError as exc:
            raise ValueError(f"{name} {exc}") from None
    return filters


def deliveries_overview(store: Store, filters: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """What arrived, what is stuck and why, at a glance: counts by status, failures by reason, each source's
    counts by status and newest arrival, how long the oldest due delivery has waited, and the most common
    errors of failed and retrying deliveries."""
    now = time.time() if now is None else now
    by_status = dict.fromkeys(STATUSES, 0)
    failed_by_reason: Counter[str] = Counter()
    by_source: dict[str, dict[str, int]] = {}
    counts, newest = store.counts_by_source(**filters)
    for source, status, reason, count in counts:
        by_status[status] = by_status.get(status, 0) + count
        if status == "failed":
            failed_by_reason[reason or "unknown"] += count
        per_source = by_source.setdefault(source, dict.fromkeys(STATUSES, 0))
        per_source[status] = per_source.get(status, 0) + count
    oldest = store.oldest_due(now)
    problems = store.problems(**filters)
    return {
        "total": sum(by_status.values()),
        "by_status": by_status,
        "failed_by_reason": dict(sorted(failed_by_reason.items())),
        "by_source": dict(sorted(by_source.items())),
        # A source that has gone quiet (a hook deleted at the provider, a changed URL) shows here first.
        "last_received_at": {source: _iso(at) for source, at in sorted(newest.items())},
        # Across every source and time: the queue is one, whatever the filters.
        "oldest_due_age_seconds": None if oldest is None else round(max(0.0, now - oldest), 3),
        # A full disk refuses every webhook: the SQLite store's size and the room left beside it.
        "store": {"kind": store.dialect, "file_bytes": store.file_bytes(), "disk_free_bytes": store.disk_free_bytes()},
        # When the worker's purge and keying last ended a round that did not fail (none until a worker ran
        # them): a purge that fails every hour lets the disk fill, while each failure is one line of a log.
        "housekeeping_done_at": {task: _iso(at) for task, at in sorted(store.housekeeping_done().items())},
        # Why: failed and retrying deliveries grouped by their last error, most common first.
        "problems": [
            {
                "source": problem.source,
                "status": status_and_reason(problem.status, problem.reason),
                "detail": problem.detail,
                "count": problem.count,
                "newest_id": problem.newest_id,
            }
            for problem in problems
        ],
    }


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def delivery_summary(delivery: Delivery, sources: Mapping[str, Source] | None = None) -> dict[str, Any]:
    """A delivery's row in a list; with the mapping files' `sources`, the event its request names too."""
    source = sources.get(delivery.source) if sources is not None else None
    return {
        "id": delivery.id,
        "source": delivery.source,
        "event": stored_event(source, delivery.inbound()) if source is not None else None,
        "status": delivery.status,
        "reason": delivery.reason,
        "detail": delivery.detail,
        "received_at": _iso(delivery.received_at),
        "attempts": delivery.attempts,
        "next_attempt_at": _iso(delivery.next_attempt_at) if delivery.status in ("queued", "retrying") else None,
        "profile_id": delivery.profile_id,
    }


def delivery_detail(
    delivery: Delivery, attempts: list[dict[str, Any]], sources: Mapping[str, Source] | None = None
) -> dict[str, Any]:
    try:
        body_text: str | None = delivery.body.decode("utf-8")
        body_b64 = None
    except UnicodeDecodeError:
        body_text, body_b64 = None, base64.b64encode(delivery.body).decode()
    detail = delivery_summary(delivery, sources)
    detail["request"] = {
        "content_type": delivery.content_type,
        "headers": delivery.headers,
        "client_ip": delivery.client_ip,
        "body": body_text,
        "body_base64": body_b64,
    }
    detail["calls"] = delivery.calls
    detail["calls_done"] = delivery.calls_done
    detail["attempt_log"] = [
        {
            "at": _iso(a["started_at"]),
            "duration_ms": round(a["duration_ms"], 1),
            "call_index": a["call_index"],
            "method": a["method"],
            "request": a["request"],
            "http_status": a["http_status"],
            "response": a["response"],
            "outcome": a["outcome"],
            "error": a["error"],
        }
        for a in attempts
    ]
    return detail
