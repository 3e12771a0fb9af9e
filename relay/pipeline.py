"""From stored request to upstream calls: parse, then translate.

Shared by the worker (over a stored row), `preview` (over a file) and the
mapping examples, so that all three translate exactly alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from relay.bodies import parse_body, read_field
from relay.errors import MappingError, RequestRejected
from relay.inbound import InboundRequest
from relay.mapping.delays import LatestHolder
from relay.mapping.fetches import Fetch
from relay.mapping.model import Source
from relay.mapping.translate import OnceHolder, TranslateContext, Translation, event_of, prepare_payload, translate
from relay.upstream.xmlbody import name_problems

__all__ = ["parse_request", "stored_event", "take_body_token", "translate_request"]


def take_body_token(source: Source, request: InboundRequest) -> tuple[object, InboundRequest]:
    """(the token a source sends in its body, the request without it), for a token source with a
    `body_field` (Wufoo's HandshakeKey): the secret is never stored, shown or forwarded. Other sources:
    (None, the request as it is).

    Raises:
        RequestRejected: the body does not parse, or is one relay cannot cut a field out of.
    """
    name = source.auth.body_field
    if name is None:
        return None, request
    token, body = read_field(request.body, request.content_type, name)
    return token, dataclasses.replace(request, body=body)


def parse_request(request: InboundRequest, *, stored: bool = False) -> Any:
    """The request's payload. Raises `RequestRejected` subclasses on bad bodies.

    A `stored` request passed the ingress limits when it arrived; they are not checked again.
    """
    return parse_body(request.body, request.content_type, check_depth=not stored)


def stored_event(source: Source, request: InboundRequest) -> str | None:
    """The event a stored request names (Shopify's topic, an InSales hook's `?topic=`, Stripe's `type`), as
    its mapping reads it, for showing it beside the delivery; None when it names none, or when its body no
    longer parses. A header says it without a look at the body."""
    if source.event_header or source.event_query:
        return event_of(source, None, request.headers)
    if source.event_path is None:
        return None
    try:
        payload = prepare_payload(source, parse_request(request, stored=True))
    except RequestRejected:
        return None
    return event_of(source, payload, request.headers)


def translate_request(
    source: Source,
    request: InboundRequest,
    context: TranslateContext,
    *,
    upstream_format: str = "json",
    fetch: Fetch | None = None,
    once_holder: OnceHolder | None = None,
    latest_holder: LatestHolder | None = None,
) -> Translation:
    """Parse and translate a request that was already accepted, into calls that `upstream_format` can carry.

    A body that no longer parses (it was accepted, so this means the parser
    changed) is reported as a mapping error, so the delivery is kept and
    replayable rather than lost; so is a call with a field name XML cannot spell.
    """
    try:
        payload = parse_request(request, stored=True)
    except RequestRejected as exc:
        raise MappingError(f"body does not parse: {exc.detail}") from None
    translation = translate(
        source,
        payload,
        headers=request.headers,
        client_ip=request.client_ip,
        context=context,
        fetch=fetch,
        once_holder=once_holder,
        latest_holder=latest_holder,
    )
    if upstream_format == "xml":
        for call in translation.calls:
            problems = name_problems(call.body)
            if problems:
                raise MappingError(
                    f"rule {translation.rule!r} builds a request that XML cannot carry "
                    f"(RELAY_UPSTREAM_FORMAT=xml): {'; '.join(problems[:3])}"
                )
    return translation
