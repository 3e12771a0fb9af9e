"""From stored request to upstream calls: parse, then translate.

Shared by the worker (over a stored row), `preview` (over a file) and the
mapping examples, so that all three translate exactly alike.
"""

from __future__ import annotations

from typing import Any

from relay.bodies import parse_body
from relay.errors import MappingError, RequestRejected
from relay.inbound import InboundRequest
from relay.mapping.model import Source
from relay.mapping.translate import TranslateContext, Translation, translate

__all__ = ["parse_request", "translate_request"]


def parse_request(request: InboundRequest, *, stored: bool = False) -> Any:
    """The request's payload. Raises `RequestRejected` subclasses on bad bodies.

    A `stored` request passed the ingress limits when it arrived; they are not checked again.
    """
    return parse_body(request.body, request.content_type, check_depth=not stored)


def translate_request(source: Source, request: InboundRequest, context: TranslateContext) -> Translation:
    """Parse and translate a request that was already accepted.

    A body that no longer parses (it was accepted, so this means the parser
    changed) is reported as a mapping error, so the delivery is kept and
    replayable rather than lost.
    """
    try:
        payload = parse_request(request, stored=True)
    except RequestRejected as exc:
        raise MappingError(f"body does not parse: {exc.detail}") from None
    return translate(
        source,
        payload,
        headers=request.headers,
        client_ip=request.client_ip,
        context=context,
    )
