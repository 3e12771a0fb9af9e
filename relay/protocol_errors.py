"""Gunicorn's answers to requests it cannot parse, as JSON like every other error of relay's.

A request line that is malformed or too long, a bad header or an unknown transfer coding never
reaches the app: gunicorn answers it itself, with an HTML page. A provider's webhook log shows
that page; design.md promises `{"error": ..., "detail": ...}` for every error. Gunicorn writes
those answers through `gunicorn.util.write_error`, which `install()` replaces; the detail is
gunicorn's own message, with token-like query values redacted (it may quote the request line).
"""

from __future__ import annotations

import json
import socket

from gunicorn import util

from relay.logs import redact_query

__all__ = ["install", "write_json_error"]

# By gunicorn's status (see gunicorn.workers.base.Worker.handle_error).
_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    501: "unsupported_transfer_coding",
}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    body = json.dumps({"error": _CODES.get(status_int, "server_error"), "detail": redact_query(mesg)}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install() -> None:
    """Make gunicorn's workers write their own error answers as JSON (they look the function up per answer)."""
    util.write_error = write_json_error
