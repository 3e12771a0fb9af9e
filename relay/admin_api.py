"""`/admin/api/...`: list, show, replay and forget deliveries, the overview and the sources, behind the admin
token.

403 while `RELAY_ADMIN_TOKEN` is unset (the API is off), 401 for a wrong or
missing bearer token, compared in constant time. No CORS headers are sent.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, abort, jsonify, request

from relay.contacts import Contact, forget, listed_deliveries, parse_contact
from relay.delivery_views import (
    checked_id,
    checked_source,
    deliveries_overview,
    delivery_detail,
    delivery_filters,
    delivery_summary,
    replay_refusal,
)
from relay.inbound import InboundRequest, header_value
from relay.listing import naming_event
from relay.mapping.model import Source
from relay.replay_check import CHECKED_OVER_HTTP, preview_delivery, preview_payload, replay_event, replay_filtered
from relay.settings import Settings
from relay.source_report import describe_source
from relay.store import DELIVERY_ID, Delivery, Store

__all__ = ["admin_blueprint"]


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
