"""Relay's error tree: one class per failure, each with a stable code.

The code is what appears in the JSON error body, the log line and the metric
label, so it never changes once released::

    RelayError
    ├── RequestRejected          a webhook request relay will not accept (4xx)
    │   ├── UnknownSource            404 unknown_source
    │   ├── BodyTooLarge             413 body_too_large
    │   ├── UnsupportedContentType   415 unsupported_content_type
    │   ├── Unparsable               400 unparsable
    │   ├── IncompleteBody           400 incomplete_body
    │   └── AuthenticationFailed     401 authentication_failed
    ├── StoreUnavailable         503 store_unavailable: the store did not take a webhook
    ├── KeysUnavailable          503 keys_unavailable: a provider's public key could not be fetched
    ├── MappingError             the mapping cannot translate a payload (failed/mapping)
    ├── UpstreamError            the upstream did not take a call
    │   ├── TransientUpstreamError   retried later
    │   ├── PermanentUpstreamError   failed/rejected
    │   └── FetchError               the provider's API did not give a document the mapping fetches
    │       ├── TransientFetchError      retried later
    │       └── PermanentFetchError      failed/rejected
    └── ConfigError              settings or mapping files are wrong at start-up
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "BodyTooLarge",
    "ConfigError",
    "FetchError",
    "IncompleteBody",
    "KeysUnavailable",
    "MappingError",
    "PermanentFetchError",
    "PermanentUpstreamError",
    "RelayError",
    "RequestRejected",
    "StoreUnavailable",
    "TransientFetchError",
    "TransientUpstreamError",
    "UnknownSource",
    "Unparsable",
    "UnsupportedContentType",
    "UpstreamError",
    "first_line",
]


class RelayError(Exception):
    """Base of every error relay raises on purpose."""

    code = "relay_error"
    status = 500

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.code)
        self.detail = detail

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


class RequestRejected(RelayError):
    """A request relay refuses: the sender gets a 4xx and nothing is stored."""

    code = "request_rejected"
    status = 400


class UnknownSource(RequestRejected):
    code = "unknown_source"
    status = 404


class BodyTooLarge(RequestRejected):
    code = "body_too_large"
    status = 413


class UnsupportedContentType(RequestRejected):
    code = "unsupported_content_type"
    status = 415


class Unparsable(RequestRejected):
    code = "unparsable"
    status = 400


class IncompleteBody(RequestRejected):
    """The body stopped before its end: shorter than its Content-Length, or a chunked body cut off. The
    sender disconnected (or a broken client): what arrived is part of a webhook, never to be forwarded."""

    code = "incomplete_body"
    status = 400


class AuthenticationFailed(RequestRejected):
    code = "authentication_failed"
    status = 401


class StoreUnavailable(RelayError):
    """The store did not answer or refused the write (database down, locked, full): the sender is told
    to send again, and nothing was kept."""

    code = "store_unavailable"
    status = 503

    @property
    def reason(self) -> str:
        """The database's own words (which host, which lock), the first line: what an operator needs."""
        return first_line(self.__cause__ or self)


class KeysUnavailable(RelayError):
    """The public key a provider signs with (Adobe I/O Events') could not be fetched: the request may be
    genuine, so the sender is told to send it again rather than that it is forged."""

    code = "keys_unavailable"
    status = 503


def first_line(error: BaseException) -> str:
    """The first line of an error's message; for SQLAlchemy's, that of the driver error it wraps."""
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]


class MappingError(RelayError):
    """The source's mapping cannot turn this payload into a valid upstream call."""

    code = "mapping"
    status = 422
    rule: str | None = None  # the rule that was building the calls, when one was chosen


# How a kept delivery's detail begins: the store counts them by it (relay_deliveries_kept).
KEPT_BY_RULE = "kept by rule "


class KeptByMapping(MappingError):
    """A rule with `keep` took the webhook: it is kept unsent, failed for its mapping with the rule's reason,
    until a replay finds a rule that forwards it. Deliberate, so not reported as an error."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"{KEPT_BY_RULE}{rule!r}: {reason}")


class UpstreamError(RelayError):
    """The upstream did not accept a call."""

    code = "upstream"
    status = 502

    def __init__(
        self,
        detail: str = "",
        *,
        http_status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.http_status = http_status
        self.body = body
        self.retry_after = retry_after


class TransientUpstreamError(UpstreamError):
    code = "transient"


class TariffLimitReached(TransientUpstreamError):
    """402: the account's tariff limit is reached. Every call fails the same way until someone pays or the
    period turns, so the worker parks its calls and alerts instead of spending the backlog's tries."""

    code = "tariff_limit"


class PermanentUpstreamError(UpstreamError):
    code = "rejected"


class FetchError(UpstreamError):
    """A document a mapping fetches from the provider's API (a thin webhook's order) did not come.

    Not an upstream error for the worker: its rate limit and pauses are the upstream's, not the provider's.
    `name` is the fetch's name in the mapping file, `url` its address as it may be shown (credentials as ***)."""

    code = "fetch"

    def __init__(
        self,
        detail: str = "",
        *,
        name: str = "",
        url: str = "",
        http_status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail, http_status=http_status, body=body, retry_after=retry_after)
        self.name = name
        self.url = url


class TransientFetchError(FetchError):
    code = "transient"


class PermanentFetchError(FetchError):
    code = "rejected"


class ConfigError(RelayError):
    """Settings or mapping files are wrong; relay refuses to start."""

    code = "config"

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def report(self, what: str) -> str:
        """How relay refuses to start on it: `relay: <what> are wrong:`, then one problem a line."""
        return f"relay: {what} are wrong:\n  " + "\n  ".join(self.problems)
