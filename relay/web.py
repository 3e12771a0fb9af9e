"""The Flask application: hook ingress, health, metrics, the admin API and its page.

Views stay thin: they read the request within its limits, call the core
(`auth`, `bodies`, `inbound`, `store`) and turn the result into JSON. Every
error, ours or Werkzeug's, answers JSON; bad input is never a 500.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, cast

import sentry_sdk
from flask import Flask, Request, Response, g, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected, HTTPException, NotFound

from relay import metrics
from relay.admin_api import admin_blueprint
from relay.admin_page import admin_page_blueprint
from relay.auth import authenticate, missing_secrets
from relay.errors import (
    BodyTooLarge,
    IncompleteBody,
    KeysUnavailable,
    RelayError,
    RequestRejected,
    StoreUnavailable,
    UnknownSource,
    UnsupportedContentType,
)
from relay.geo import client_address
from relay.ids import random_hex
from relay.inbound import InboundRequest, is_ping, keepable_headers, with_url_event
from relay.intake import take_request
from relay.logs import REQUEST_ID, Throttle, configure_logging, redact_query
from relay.mapping.loader import MAPPING_SUFFIXES, load_sources_leniently
from relay.mapping.model import Source
from relay.mapping.schema import SOURCE_NAME
from relay.pipeline import take_body_token
from relay.ratelimit import HookLimiter
from relay.sentry import init_sentry
from relay.settings import Settings
from relay.store import CONTENT_TYPE_LENGTH, Store, refusal

__all__ = ["create_app"]

log = logging.getLogger("relay.ingress")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def create_app(settings: Settings | None = None, *, store: Store | None = None, sentry_transport: Any = None) -> Flask:
    """Build the app: settings checked, mappings loaded, store opened.

    A mapping file that does not load leaves the others served: its source answers 503 (the provider
    sends again) and /readyz says what is wrong. Relay's start (`relay run`, gunicorn's master) refuses
    such a file; a web worker that boots later, after a crash or a reload, finds it only if it was
    broken on disk meanwhile, and one bad edit must not stop every source.

    Raises:
        ConfigError: a setting is wrong, or there is no mapping file at all (every problem listed).
    """
    settings = settings or Settings.from_env()
    configure_logging(settings)
    init_sentry(settings, transport=sentry_transport)
    sources, broken = load_sources_leniently(settings.mappings_dir)
    for name, problems in broken.items():
        log.error("mapping file does not load; its source answers 503", extra={"source": name, "problems": problems})
    # For /readyz, which answers anyone who asks: file names without the folder.
    folder = str(Path(settings.mappings_dir)) + os.sep
    broken_shown = {name: [problem.replace(folder, "") for problem in found] for name, found in broken.items()}
    store = store or Store(settings.database_url, wait_for_database=True)
    app = Flask("relay")
    app.config["MAX_CONTENT_LENGTH"] = None  # we enforce our own limit on the raw body
    app.extensions["relay"] = {"settings": settings, "sources": sources, "store": store, "broken": broken}
    _register_errors(app)
    limiter = HookLimiter(settings.hook_rate_limit, settings.rate_limit_storage)

    # `g` and `request` are proxies: each use looks the context up again, so each function takes the
    # objects behind them once (it showed among the hottest calls of a webhook).
    @app.before_request
    def _start() -> None:
        state = cast(Any, g)._get_current_object()
        state.started = time.perf_counter()
        offered = cast(Any, request)._get_current_object().headers.get("X-Request-ID", "")
        state.request_id = offered if _REQUEST_ID.fullmatch(offered) else random_hex(16)
        state.request_id_token = REQUEST_ID.set(state.request_id)

    @app.after_request
    def _finish(response: Response) -> Response:
        state = cast(Any, g)._get_current_object().__dict__
        response.headers["X-Request-ID"] = state.get("request_id", "")
        allowed = state.get("cors_origin")
        if allowed is not None:
            # Whatever the answer (202, 400, 401, 429...): the page's script may read it.
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Expose-Headers"] = "X-Request-ID, Retry-After"
        if state.get("cors_varies"):
            response.vary.add("Origin")
        return response

    @app.teardown_request
    def _forget(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            REQUEST_ID.reset(token)

    @app.route(
        "/hooks/<path:name>",
        methods=["POST", "OPTIONS", "GET", "PUT", "PATCH", "DELETE"],
        provide_automatic_options=False,
    )
    def hook(name: str) -> tuple[Response, int]:
        # A hook URL pasted with a trailing slash (`/hooks/tilda/`) is the same hook, not an unknown source.
        name = name.removesuffix("/")
        source = sources.get(name)
        if source is None and name in broken:
            return _mapping_unavailable(
                name,
                "mapping file does not load",
                f"the mapping file of {name!r} does not load; nothing was kept, send it again",
                problems=broken[name],
            )
        if source is None and (added := _added_since_start(settings.mappings_dir, name)) is not None:
            # 503, not 404: a provider pointed at the new hook before the reload sends it again, where a
            # 404 is final (Typeform disables the webhook at once).
            return _mapping_unavailable(
                name,
                "mapping file added since the web server started; its source answers 503",
                f"{added} was added after the web server started and is not loaded yet; nothing was kept, send it "
                "again (operator: `relay check`, then `kill -HUP <pid of relay run>`)",
            )
        if source is None:
            raise UnknownSource(f"no mapping file for source {name!r}")
        g.source = name
        req = cast(Any, request)._get_current_object()
        if source.cors_origins:
            _allow_origin(source, req.headers.get("Origin"))
        if req.method != "POST":
            if req.method == "OPTIONS":
                return _preflight()
            if req.method == "GET" and source.challenge_query and source.challenge_query in req.args:
                return _challenge(source, req.args[source.challenge_query])
            return _error(405, "method_not_allowed", "hooks take POST")
        return _receive(req, source, settings, store, limiter)

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        return _json({"status": "ok"}), 200

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        problems: dict[str, Any] = {}
        try:
            store.ping()
            read_only = store.read_only()
        except StoreUnavailable as exc:
            problems["store"] = f"does not answer: {refusal(exc)}"
        except Exception as exc:  # noqa: BLE001 - any failure of the store means not ready
            problems["store"] = type(exc).__name__
        else:
            refused = store.refused_writes()  # it answers reads, but may take no webhook (a full disk)
            if refused is not None:
                problems["store"] = refused
            elif (short := read_only or _disk_short(store, settings)) is not None:
                # Seen alike by every process, where a refused write is known only to the one it met.
                problems["store"] = short
        if broken_shown:
            problems["mappings"] = broken_shown
        unconfigured = {
            name: missing for name, source in sources.items() if (missing := missing_secrets(source, settings.env))
        }
        body: dict[str, Any] = {
            "status": "ok" if not problems else "unavailable",
            "mappings": len(sources),
            "upstream": "configured" if settings.upstream_url else "unset (deliveries are held)",
        }
        if unconfigured:
            body["sources_refusing_requests"] = unconfigured
        if problems:
            body["problems"] = problems
            return _json(body), 503
        return _json(body), 200

    @app.get("/metrics")
    def metrics_view() -> Response:
        return Response(metrics.render(store, [*sources, *broken]), mimetype=metrics.CONTENT_TYPE)

    app.register_blueprint(admin_blueprint(settings, store, sources, broken_shown))
    app.register_blueprint(admin_page_blueprint())
    return app


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps with options builds one per call


def _json(body: dict[str, Any]) -> Response:
    """A JSON answer. Flask's jsonify goes through the app's JSON provider on every call, which
    costs more than the few fields of an ingress answer."""
    return Response(_ENCODE(body), mimetype="application/json")


def _disk_short(store: Store, settings: Settings) -> str | None:
    """Why the SQLite store's disk may not take the next webhook: less free than the largest one, twice
    (its row, then its WAL frames), and a MiB for the indexes. None when it has room, or is no file here."""
    free = store.disk_free_bytes()
    needed = 2 * settings.max_body_bytes + 1024 * 1024
    if free is None or free >= needed:
        return None
    mib = 1024 * 1024
    return (
        f"its disk has {free / mib:.1f} MiB free, less than the {needed / mib:.1f} MiB a webhook of "
        "RELAY_MAX_BODY_BYTES may need: free space, or move the store to a larger disk"
    )


def _read_body(req: Request, limit: int) -> bytes:
    """The whole body, or an error: too large, or cut off.

    gunicorn hands over what arrived when a sender disconnects before the Content-Length it announced
    (half a form, a phone number cut short, would have been stored and forwarded), and raises an error
    of its own for a chunked body cut off (NoMoreData, an OSError) or broken (a ParseException).
    """
    length = req.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(f"body of {length} bytes is over the limit of {limit}")
    try:
        body = req.stream.read(limit + 1)
    except ParseException as exc:  # InvalidChunkSize, ChunkMissingTerminator...
        raise IncompleteBody(f"the chunked body is broken ({type(exc).__name__}); nothing was kept") from None
    except (OSError, ClientDisconnected) as exc:
        raise IncompleteBody(f"the body stopped before its end ({type(exc).__name__}); nothing was kept") from None
    if len(body) > limit:
        raise BodyTooLarge(f"body is over the limit of {limit} bytes")
    if length is not None and len(body) < length:
        raise IncompleteBody(
            f"the body ended after {len(body)} of the {length} bytes its Content-Length announced; nothing was kept"
        )
    return body


def _allow_origin(source: Source, origin: str | None) -> None:
    """Let a page the mapping names (`cors: {origins: [...]}`) post from the visitor's browser."""
    any_origin = "*" in source.cors_origins
    g.cors_varies = not any_origin
    if origin is None:
        return
    if any_origin:
        g.cors_origin = "*"
    elif origin.lower() in (allowed.lower() for allowed in source.cors_origins):
        g.cors_origin = origin


def _preflight() -> tuple[Response, int]:
    """A browser's CORS preflight before a page's script posts JSON or sends X-Relay-Token: without the
    right answer the browser never sends the webhook. The allowance itself is `_finish`'s header."""
    response = Response(status=204)
    response.headers["Allow"] = "POST, OPTIONS"
    if g.get("cors_origin") is not None:
        response.headers["Access-Control-Allow-Methods"] = "POST"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, X-Relay-Token, X-Request-ID"
        response.headers["Access-Control-Max-Age"] = "600"
    return response, 204


def _mapping_unavailable(name: str, event: str, detail: str, **extra: Any) -> tuple[Response, int]:
    """503 with Retry-After for a source whose mapping file is on disk but not served: the sender sends again."""
    metrics.received(name, "mapping_unavailable")
    log.error(event, extra={"source": name, **extra})
    response, status = _error(503, "mapping_unavailable", detail)
    response.headers["Retry-After"] = "60"
    return response, status


def _added_since_start(folder: str, name: str) -> str | None:
    """The file name of `name`'s mapping when one is on disk though not loaded (added since the start)."""
    if SOURCE_NAME.fullmatch(name) is None:
        return None
    for suffix in MAPPING_SUFFIXES:
        if (Path(folder) / (name + suffix)).is_file():
            return name + suffix
    return None


def _called_url(req: Request, settings: Settings) -> str:
    """The URL the sender called, for a source that signs it (HubSpot): RELAY_PUBLIC_URL and the request
    target as sent (its query in the sender's order and escapes), or else the scheme and host the request
    names, from X-Forwarded-Proto and X-Forwarded-Host when RELAY_TRUSTED_PROXIES proxies set them."""
    environ = req.environ
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
    if not target.startswith("/"):  # absent, or an absolute-form target: rebuilt from its parts
        query = environ.get("QUERY_STRING", "")
        target = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
    if settings.public_url:
        return settings.public_url + target
    scheme, host = req.scheme, req.host
    if settings.trusted_proxies > 0:
        scheme = _forwarded(req.headers.get("X-Forwarded-Proto"), settings.trusted_proxies) or scheme
        host = _forwarded(req.headers.get("X-Forwarded-Host"), settings.trusted_proxies) or host
    return f"{scheme}://{host}{target}"


def _forwarded(value: str | None, trusted: int) -> str | None:
    """The value the outermost trusted proxy set in a comma-separated X-Forwarded-* header."""
    hops = [hop.strip() for hop in (value or "").split(",") if hop.strip()]
    return hops[-trusted] if len(hops) >= trusted else None


def _refuse_compressed(req: Request) -> None:
    encoding = req.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        # Without this the compressed bytes reached the parser and came back as "invalid JSON".
        raise UnsupportedContentType(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")


def _challenge(source: Source, value: str) -> tuple[Response, int]:
    """The provider checks the hook's address before it sends anything (Adobe I/O Events): the value it
    sent, echoed as JSON; nothing is stored or forwarded."""
    if not value or len(value) > 500:
        return _error(400, "unparsable", f"a challenge of 1 to 500 characters, not {len(value)}")
    log.info("challenge answered", extra={"source": source.name})
    metrics.received(source.name, "ping")
    return _json({"challenge": value}), 200


_DELAY_WARNINGS = Throttle(600)  # a mapping's delay setting that is no number of seconds: said every 10 minutes


def _receive(
    req: Request, source: Source, settings: Settings, store: Store, limiter: HookLimiter
) -> tuple[Response, int]:
    body = _read_body(req, settings.max_body_bytes)
    headers = dict(req.headers.items())
    content_type = req.content_type
    if content_type and len(content_type) > CONTENT_TYPE_LENGTH:
        # Kept with the body, which the worker parses by it again: cut short it would not parse.
        raise UnsupportedContentType(
            f"a Content-Type of {len(content_type)} characters; relay takes at most {CONTENT_TYPE_LENGTH}"
        )
    # With the content type, before authentication (design.md's order): a body token is read from the body.
    _refuse_compressed(req)
    if any(ping.unsigned for ping in source.pings):
        unsigned = InboundRequest(source=source.name, body=body, content_type=content_type, headers=headers)
        if is_ping(source, unsigned, None, unsigned_only=True):
            log.info("unsigned ping answered", extra={"source": source.name})
            metrics.received(source.name, "ping")
            return _json({"status": "ping"}), 200
    body_token = None
    if source.auth.body_field is not None:
        # A token in the body (Wufoo) is read before authentication and cut out of what is kept.
        body_token, taken = take_body_token(source, InboundRequest(source.name, body, content_type))
        body = taken.body
        # The headers kept with it describe the body as kept.
        headers = {
            name: str(len(body)) if name.lower() == "content-length" else value for name, value in headers.items()
        }
    authenticate(
        source,
        body=body,
        headers=headers,
        query=req.args,
        env=settings.env,
        method=req.method,
        url=_called_url(req, settings) if source.auth.signs_url else None,
        body_token=body_token,
    )
    # Only webhooks that pass authentication count against their source's limit: counted before it, anyone
    # who knows a hook's URL could spend the allowance with forged requests and have the provider's own
    # webhooks answered 429 (Tilda tries three times in two minutes, Elementor once).
    wait = limiter.retry_after(source.name)
    if wait is not None:
        metrics.received(source.name, "rate_limited")
        log.info("rate limited", extra={"source": source.name, "limit": limiter.spec})
        response, code = _error(429, "rate_limited", f"over {limiter.spec} for {source.name}; retry later")
        response.headers["Retry-After"] = str(wait)
        return response, code
    kept = keepable_headers(headers, source.auth.header)  # a sender's own X-Relay-Event among what it drops
    if source.event_query is not None:
        kept = with_url_event(source, kept, req.args)
    inbound = InboundRequest(
        source=source.name,
        body=body,
        content_type=content_type,
        headers=kept,
        client_ip=client_address(req.remote_addr, req.headers.get("X-Forwarded-For"), settings.trusted_proxies),
    )
    intake = take_request(source, inbound, settings=settings, store=store)
    if intake.outcome == "ping":
        log.info("ping answered", extra={"source": source.name})
        metrics.received(source.name, "ping")
        return _json({"status": "ping"}), 200
    if intake.outcome == "ignored":
        log.info("ignored", extra={"source": source.name, "webhook_event": intake.event, "reason": intake.reason})
        metrics.received(source.name, "ignored")
        return _json({"status": "ignored", "reason": intake.reason}), 200
    if intake.wait.problem is not None and _DELAY_WARNINGS.due():
        log.warning(
            "delay setting not taken",
            extra={"source": source.name, "webhook_event": intake.event, "detail": intake.wait.problem},
        )
    if intake.outcome == "duplicate":
        log.info("duplicate", extra={"source": source.name, "delivery_id": intake.delivery_id})
        metrics.received(source.name, "duplicate")
        return _json({"status": "duplicate", "id": intake.delivery_id}), 200
    accepted_extra: dict[str, Any] = {
        "source": source.name,
        "delivery_id": intake.delivery_id,
        "webhook_event": intake.event,
    }
    if intake.wait.seconds:
        accepted_extra["wait_seconds"] = intake.wait.seconds
    log.info("accepted", extra=accepted_extra)
    metrics.received(source.name, "accepted")
    metrics.observe_ingress(time.perf_counter() - g.started)
    return _json({"status": "accepted", "id": intake.delivery_id}), source.accepted_status


def _error(status: int, code: str, detail: str) -> tuple[Response, int]:
    return _json({"error": code, "detail": detail}), status


def _register_errors(app: Flask) -> None:
    store_outage_reports = Throttle(60)

    @app.errorhandler(RelayError)
    def relay_error(exc: RelayError) -> tuple[Response, int]:
        name = g.get("source")
        if isinstance(exc, RequestRejected):
            log.info(
                "rejected",
                # werkzeug's full_path ends in "?" when there is no query: logged as sent.
                extra={
                    "source": name,
                    "code": exc.code,
                    "detail": exc.detail,
                    "path": redact_query(request.full_path.removesuffix("?")),
                },
            )
            metrics.received(name or "unknown", exc.code)
        elif isinstance(exc, StoreUnavailable):
            # Not the sender's fault and not a bug: the sender will send again; the operator must know, once
            # an outage rather than once a webhook (a traceback and a Sentry event a minute at most).
            first = store_outage_reports.due()
            extra = {"source": name, "code": exc.code, "error": exc.reason[:200]}
            log.error("store unavailable", exc_info=exc.__cause__ if first else None, extra=extra)
            if first:
                sentry_sdk.capture_exception(exc)
            if request.path.startswith("/hooks/"):
                metrics.received(name or "unknown", exc.code)
                detail = "the store did not take the webhook; nothing was kept, send it again"
            else:  # the admin API
                detail = "the store does not answer; try again shortly"
            response, status = _error(exc.status, exc.code, detail)
            response.headers["Retry-After"] = "5"
            return response, status
        elif isinstance(exc, KeysUnavailable):
            # The provider's key server did not answer: the request may be genuine, so it is to be sent again.
            log.warning("public key unavailable", extra={"source": name, "code": exc.code, "detail": exc.detail})
            metrics.received(name or "unknown", exc.code)
            response, status = _error(exc.status, exc.code, exc.detail + "; nothing was kept, send it again")
            response.headers["Retry-After"] = "60"
            return response, status
        else:
            log.error("error", extra={"source": name, "code": exc.code, "detail": exc.detail})
        return _error(exc.status, exc.code, exc.detail)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        code = (exc.name or "error").lower().replace(" ", "_")
        if exc.code == 404 and exc.description == NotFound.description:  # not an abort(404) of relay's own
            return _error(404, "not_found", "no such route")
        return _error(exc.code or 500, code, exc.description or "")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unexpected error", extra={"path": redact_query(request.path)})
        sentry_sdk.capture_exception(exc)
        return _error(500, "internal", "relay failed to handle this request; it was logged")
