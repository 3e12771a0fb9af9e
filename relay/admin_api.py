"""`/admin/api/...`: list, show, replay and forget deliveries, the overview and the sources, behind the admin
token.

403 while `RELAY_ADMIN_TOKEN` is unset (the API is off), 401 for a wrong or
missing bearer token, compared in constant time. No CORS headers are sent.
"""

from __future__ import annotations

import base64
import hmac
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, abort, jsonify, request

from relay.contacts import Contact, forget, listed_deliveries, parse_contact
from relay.inbound import InboundRequest, header_value
from relay.listing import naming_event
from relay.mapping.model import Source
from relay.mapping.schema import SOURCE_NAME
from relay.pipeline import stored_event
from relay.replay_check import CHECKED_OVER_HTTP, preview_delivery, preview_payload, replay_event, replay_filtered
from relay.settings import Settings
from relay.source_report import describe_source
from relay.store import DELIVERY_ID, FAILURE_REASONS, REPLAYABLE, STATUSES, Delivery, Store, status_and_reason

__all__ = [
    "admin_blueprint",
    "checked_id",
    "checked_source",
    "checked_status",
    "checked_time",
    "delivery_detail",
    "delivery_filters",
    "delivery_summary",
    "parse_time",
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


def _sample_request(source: str, settings: Settings) -> tuple[InboundRequest, dict[str, str]]:
    """The request `POST /sources/<name>/preview` describes, as its provider would send it, and the hook URL's
    query parameters it gives."""
    asked = request.get_json(silent=True)
    if not isinstance(asked, dict) or not isinstance(asked.get("body"), str):
        abort(400, description='send {"body": "<the payload as its provider sends it>", "content_type": "..."} as JSON')
    texts = {key: asked.get(key) or {} for key in ("headers", "query")}
    for key, given in texts.items():
        if not isinstance(given, dict) or not all(isinstance(v, str) for v in given.values()):
            abort(400, description=f"{key} is an object of names and texts")
    content_type = asked.get("content_type") or header_value(texts["headers"], "Content-Type") or "application/json"
    if not isinstance(content_type, str):
        abort(400, description="content_type is a text")
    body = asked["body"].encode()
    if len(body) > settings.max_body_bytes:
        abort(413, description=f"the body is larger than RELAY_MAX_BODY_BYTES ({settings.max_body_bytes})")
    headers = {str(name): value for name, value in texts["headers"].items()}
    query = {str(name): value for name, value in texts["query"].items()}
    return InboundRequest(source=source, body=body, content_type=content_type, headers=headers), query


def _filters() -> dict[str, Any]:
    args = request.args
    try:
        return delivery_filters(args.get("status"), args.get("source"), args.get("since"), args.get("until"))
    except ValueError as exc:
        abort(400, description=str(exc))


def admin_blueprint(
    settings: Settings,
    store: Store,
    sources: Mapping[str, Source] | None = None,
    broken: Mapping[str, list[str]] | None = None,
) -> Blueprint:
    """The admin API over `store`; `sources` are the web server's, `broken` the files it could not load with
    their problems."""
    bp = Blueprint("admin", __name__, url_prefix="/admin/api")

    @bp.before_request
    def _guard() -> tuple[Response, int] | None:
        if not settings.admin_token:
            return jsonify({"error": "admin_disabled", "detail": "set RELAY_ADMIN_TOKEN to use the admin API"}), 403
        header = request.headers.get("Authorization", "")
        scheme, _, offered = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            offered.strip().encode(), settings.admin_token.encode()
        ):
            return jsonify(
                {"error": "unauthorized", "detail": "Authorization: Bearer <RELAY_ADMIN_TOKEN> required"}
            ), 401
        return None

    @bp.get("/deliveries")
    def list_deliveries() -> Response:
        try:
            limit = max(1, min(int(request.args.get("limit", 50)), 500))
        except ValueError:
            abort(400, description="limit must be a whole number")
        try:
            before = checked_id(request.args["before"]) if request.args.get("before") else None
        except ValueError as exc:
            abort(400, description=f"before {exc}")
        filters = _filters()
        names_event = naming_event(sources or {}, request.args["event"]) if request.args.get("event") else None
        contact = _contact(request.args["contact"]) if request.args.get("contact") else None
        found = listed_deliveries(
            store, limit=limit, before=before, contact=contact, names_event=names_event, **filters
        )
        return jsonify(
            {
                "deliveries": [delivery_summary(d, sources) for d in found],
                "next": found[-1].id if len(found) == limit else None,
            }
        )

    @bp.get("/sources")
    def list_sources() -> Response:
        """What `relay sources --json` prints, as this web server loaded the files and reads the settings."""
        return jsonify(
            {
                "sources": [describe_source(source, settings) for _name, source in sorted((sources or {}).items())],
                "broken": dict(broken or {}),
            }
        )

    @bp.get("/overview")
    def overview() -> Response:
        filters = _filters()
        if filters.pop("status"):
            abort(400, description="the overview counts every status; filter by source, since or until")
        return jsonify(deliveries_overview(store, filters))

    @bp.post("/sources/<name>/preview")
    def preview_sample(name: str) -> Response:
        """A payload translated as the source's mapping file on disk would translate it (`relay preview --source`):
        `{"body": "...", "content_type": "...", "headers": {...}, "query": {...}}`; nothing stored or sent."""
        try:
            source = checked_source(name)
        except ValueError as exc:
            abort(400, description=str(exc))
        sample, query = _sample_request(source, settings)
        answer = preview_payload(sample, settings, query=query)
        if answer["outcome"] == "unknown_source":
            abort(404, description=answer["error"])
        return jsonify(answer)

    def existing(delivery_id: str) -> Delivery:
        """The delivery with this id, or a 404 (an id that is no id is not looked up)."""
        delivery = store.get(delivery_id) if DELIVERY_ID.fullmatch(delivery_id) else None
        if delivery is None:
            abort(404, description="no such delivery")
        return delivery

    @bp.get("/deliveries/<delivery_id>")
    def show(delivery_id: str) -> Response:
        delivery = existing(delivery_id)
        return jsonify(delivery_detail(delivery, store.attempts_of(delivery_id), sources))

    @bp.get("/deliveries/<delivery_id>/preview")
    def preview(delivery_id: str) -> Response:
        """Its calls with the mapping files as they are on disk now (as a replay would translate it); nothing
        sent or changed."""
        return jsonify(preview_delivery(existing(delivery_id), settings, store))

    @bp.post("/deliveries/<delivery_id>/replay")
    def replay_one(delivery_id: str) -> tuple[Response, int]:
        delivery = existing(delivery_id)
        status = "queued" if settings.upstream_url else "held"
        if not store.replay(delivery_id, to_status=status):
            return jsonify(
                {"error": "not_replayable", "detail": f"status is {delivery.status}; failed and held deliveries replay"}
            ), 409
        return jsonify({"status": status, "id": delivery_id}), 202

    @bp.post("/replay")
    def replay_matching() -> tuple[Response, int]:
        filters = _filters()
        event = request.args.get("event")
        if not any(filters.values()) and not event:
            abort(400, description="give at least one filter: status, source, since, until or event")
        refusal = replay_refusal(filters["status"])
        if refusal:
            abort(400, description=refusal)
        dry_run = request.args.get("dry_run", "").lower() in ("1", "true", "yes")
        status = "queued" if settings.upstream_url else "held"
        limit = CHECKED_OVER_HTTP
        if event:
            answer = replay_event(
                store, settings, sources or {}, filters, event, to_status=status, dry_run=dry_run, limit=limit
            )
        else:
            answer = replay_filtered(store, settings, filters, to_status=status, dry_run=dry_run, limit=limit)
        return jsonify(answer), 200 if dry_run else 202

    @bp.post("/forget")
    def forget_contact() -> tuple[Response, int]:
        asked = request.get_json(silent=True)
        if not isinstance(asked, dict) or not isinstance(asked.get("contact"), str):
            abort(400, description='send {"contact": "<e-mail address or phone number>"} as JSON')
        if not isinstance(asked.get("dry_run", False), bool):
            abort(400, description="dry_run is true or false")  # "false" in quotes must not delete, nor pass
        contact = _contact(asked["contact"])
        if asked.get("dry_run"):
            found = forget(store, contact, dry_run=True)
            return jsonify({"would_forget": len(found.ids), "ids": found.ids}), 200
        return jsonify(forget(store, contact).to_dict()), 200

    def _contact(text: str) -> Contact:
        try:
            return parse_contact(text, settings.phone_region)
        except ValueError as exc:
            abort(400, description=f"contact {exc}")

    return bp
