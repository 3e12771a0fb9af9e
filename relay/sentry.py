"""Sentry, opt-in and scrubbed: no local variables, no bodies, no secrets, no 4xx noise."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from relay import __version__
from relay.errors import RequestRejected
from relay.logs import redact_query
from relay.settings import Settings

__all__ = [
    "ReportThrottle",
    "init_sentry",
    "report_delivery_error",
    "report_delivery_failure",
    "scrub",
    "scrubber",
    "secret_values",
]

_SENSITIVE_HEADER = re.compile(r"authorization|cookie|token|signature|hmac|secret|api-?key", re.IGNORECASE)


def secret_values(settings: Settings) -> list[str]:
    """Every value that must never leave the process: settings secrets and per-source secrets."""
    values = [settings.upstream_token, settings.admin_token]
    for name, value in settings.env.items():
        if name.endswith(("_WEBHOOK_SECRET", "_WEBHOOK_TOKEN", "_TOKEN", "_SECRET", "_PASSWORD")) and value:
            values.extend(part.strip() for part in value.split(","))
    return sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True)


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, "***")
        return redact_query(value)
    if isinstance(value, dict):
        return {key: scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item, secrets) for item in value]
    if isinstance(value, tuple):
        return tuple(scrub(item, secrets) for item in value)
    return value


def scrubber(settings: Settings) -> Any:
    """The `before_send` hook: drop expected 4xx errors, then remove every secret."""
    secrets = secret_values(settings)

    def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
        exc_info = hint.get("exc_info")
        if exc_info and isinstance(exc_info[1], RequestRejected):
            return None
        request = event.get("request")
        if isinstance(request, dict):
            headers = request.get("headers") or {}
            request["headers"] = {k: ("***" if _SENSITIVE_HEADER.search(k) else v) for k, v in headers.items()}
            request.pop("data", None)
            request.pop("cookies", None)
            if request.get("query_string"):
                request["query_string"] = redact_query("?" + str(request["query_string"]))[1:]
        return scrub(event, secrets)  # type: ignore[no-any-return]

    return before_send


def init_sentry(settings: Settings, *, transport: Any = None) -> bool:
    """Start Sentry when SENTRY_DSN is set (or a test transport is given)."""
    if not settings.sentry_dsn and transport is None:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.flask import FlaskIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration

    sentry_sdk.init(
        dsn=settings.sentry_dsn or "https://public@sentry.invalid/1",
        transport=transport,
        environment=settings.sentry_environment,
        release=f"relay@{__version__}",
        integrations=[FlaskIntegration(), LoggingIntegration(event_level=None)],
        default_integrations=False,
        include_local_variables=False,
        max_request_body_size="never",
        before_send=scrubber(settings),
    )
    return True


REPORTS_A_KIND_EVERY = 60.0  # seconds between two reports of one kind (a source and a reason, or an error)


class ReportThrottle:
    """At most one report of a kind a minute, the next one saying how many were left out.

    An upstream that refuses every call (a revoked token, a full account), or one bug met by every
    webhook of a source, fails thousands of deliveries in minutes: a report each would spend the Sentry
    quota and bury everything else. `relay overview` lists them all; Sentry needs to hear of each kind.
    """

    def __init__(self, seconds: float = REPORTS_A_KIND_EVERY, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.lock = threading.Lock()
        self.last: dict[tuple[str, ...], float] = {}
        self.left_out: dict[tuple[str, ...], int] = {}

    def due(self, kind: tuple[str, ...]) -> int | None:
        """None when a report of `kind` is left out; else how many were left out since the last one."""
        with self.lock:
            now = self.clock()
            if now - self.last.get(kind, now - self.seconds) < self.seconds:
                self.left_out[kind] = self.left_out.get(kind, 0) + 1
                return None
            self.last[kind] = now
            return self.left_out.pop(kind, 0)


_delivery_reports = ReportThrottle()


def report_delivery_failure(message: str, *, source: str, delivery_id: str, reason: str) -> None:
    """A delivery that failed for good is worth an alert, tagged so it can be found (one a minute of each
    source and reason, see ReportThrottle)."""
    _report_delivery(reason, source, delivery_id, lambda sdk: sdk.capture_message(message, level="warning"))


def report_delivery_error(exc: BaseException, *, source: str, delivery_id: str) -> None:
    """An error of relay's own on a delivery, tagged (one a minute of each source and error type)."""
    _report_delivery(type(exc).__name__, source, delivery_id, lambda sdk: sdk.capture_exception(exc))


def _report_delivery(kind: str, source: str, delivery_id: str, capture: Callable[[Any], Any]) -> None:
    import sentry_sdk

    if not sentry_sdk.get_client().is_active():
        return
    left_out = _delivery_reports.due((source, kind))
    if left_out is None:
        return
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("source", source)
        scope.set_tag("delivery_id", delivery_id)
        scope.set_tag("reason", kind)
        scope.set_extra("like_ones_not_reported_since_the_last", left_out)
        capture(sentry_sdk)
