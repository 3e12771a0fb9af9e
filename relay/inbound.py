"""What relay keeps of a webhook request, and the checks made on it before storing.

`InboundRequest` is the request as received (raw bytes and the headers worth
keeping); the functions here decide whether it is a provider's test ping and
what its de-duplication key is. No Flask here: the CLI's `preview` and the
worker build the same object from a file or a stored row.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.mapping.expressions import search
from relay.mapping.model import Source

__all__ = [
    "URL_EVENT_HEADER",
    "InboundRequest",
    "dedup_key",
    "header_value",
    "is_ping",
    "keepable_headers",
    "with_url_event",
]

# The event a hook's URL names (`event: {query: topic}`), kept with the request as this header, which relay
# alone writes: a sender's own header of that name is never kept.
URL_EVENT_HEADER = "X-Relay-Event"
URL_EVENT_LENGTH = 200
# Never stored: credentials, signatures (useless once verified), and what only relay may write.
_DROPPED_HEADERS = {"authorization", "cookie", "x-relay-token", "proxy-authorization", URL_EVENT_HEADER.lower()}
_DROPPED_MARKERS = ("signature", "hmac", "token", "secret", "api-key", "apikey")


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, whatever its case."""
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def keepable_headers(headers: Mapping[str, str], auth_header: str | None = None) -> dict[str, str]:
    """The headers worth storing with a delivery, with every credential left out: the usual ones, and the
    header the source authenticates with, whatever its name (a token source may name any)."""
    kept: dict[str, str] = {}
    dropped = auth_header.lower() if auth_header else None
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in _DROPPED_HEADERS or any(marker in lowered for marker in _DROPPED_MARKERS) or lowered == dropped:
            continue
        kept[name] = value
    return kept


def with_url_event(source: Source, headers: Mapping[str, str], query: Mapping[str, str]) -> dict[str, str]:
    """The kept `headers` and, for a source whose event is a parameter of its hook's URL, that parameter
    as `X-Relay-Event`: the worker, a replay and `preview --delivery` read it from there. A value that is
    not printable text, or is longer than a topic could be, names no event."""
    kept = {name: value for name, value in headers.items() if name.lower() != URL_EVENT_HEADER.lower()}
    if source.event_query is None:
        return kept
    value = (query.get(source.event_query) or "").strip()
    if value and len(value) <= URL_EVENT_LENGTH and value.isprintable():
        kept[URL_EVENT_HEADER] = value
    return kept


@dataclass(frozen=True)
class InboundRequest:
    """A webhook as received: body bytes, content type, kept headers, client address."""

    source: str
    body: bytes
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    client_ip: str | None = None

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)


def is_ping(source: Source, request: InboundRequest, payload: Any, *, unsigned_only: bool = False) -> bool:
    """True when the request is one of the source's declared test pings.

    With `unsigned_only`, only pings declared `unsigned` are considered; those
    pin the whole body, so a forged one can do nothing but get its 200.
    """
    for ping in source.pings:
        if unsigned_only and not ping.unsigned:
            continue
        if ping.body is not None and request.body.strip() != ping.body.encode():
            continue
        if ping.body_pattern is not None and not re.fullmatch(
            ping.body_pattern, request.body.strip().decode("utf-8", "replace")
        ):
            continue
        if ping.header is not None:
            value = request.header(ping.header)
            if value is None:
                continue
            if ping.equals is not None and value.strip().lower() != ping.equals.lower():
                continue
        if any(request.header(name) is not None for name in ping.absent_headers):
            continue
        if ping.when is not None:
            result = search(ping.when, payload)
            if result in (None, False, "", [], {}):
                continue
        return True
    return False


def dedup_key(source: Source, request: InboundRequest, payload: Any) -> str:
    """The provider's delivery id when it sends one, else a hash of source and body, and of the event a hook's
    URL names: the same order's body at the orders/create and the orders/update address is two events (the
    second must not be dropped as a repeat), while a webhook sent again goes to the address it went to."""
    for name in source.dedup_headers:
        value = request.header(name)
        if value and value.strip():
            return f"{source.name}:h:{value.strip()[:200]}"
    for path in source.dedup_paths:
        value = search(path, payload)
        if value is not None and not isinstance(value, (dict, list)) and str(value).strip():
            return f"{source.name}:p:{str(value).strip()[:200]}"
    named = (request.header(URL_EVENT_HEADER) or "").encode() + b"\0" if source.event_query else b""
    digest = hashlib.sha256(source.name.encode() + b"\0" + named + request.body).hexdigest()
    return f"{source.name}:b:{digest}"
