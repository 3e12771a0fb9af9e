"""Gunicorn's own log lines, as they may be printed.

Gunicorn writes the path decoded (`%(U)s`), control characters included: a request for
`/hooks/a%0D%0Aforged` (anyone may send one) wrote a line break and a line of the sender's
own into the log. The path is written percent-encoded again instead, as it came.

Its error log quotes a malformed request line whole ("Invalid HTTP request line: 'POST
/hooks/tilda?token=...'"), a hook's token with it: a URL pasted with a space in it is enough.
Token-like query values are redacted from its lines, as from relay's own.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote

from gunicorn.glogging import Logger

from relay.logs import redact_query

__all__ = ["AccessLogger", "RedactTokens"]


class AccessLogger(Logger):  # type: ignore[misc]  # gunicorn has no type hints
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)  # run again at a reload: the filter is added once
        if not any(isinstance(found, RedactTokens) for found in self.error_log.filters):
            self.error_log.addFilter(RedactTokens())

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        atoms["U"] = printable_path(atoms.get("U") or "")
        return atoms


class RedactTokens(logging.Filter):
    """Token-like query values out of a record's message (formatted here, with its arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "=" in message:
            record.msg, record.args = redact_query(message), None
        return True


def printable_path(path: str) -> str:
    """`path` percent-encoded again (UTF-8), as a sender put it on the wire, when it holds anything but
    printable ASCII; as it is otherwise (nearly always: one regex search a request)."""
    if _NEEDS_ENCODING.search(path) is None:
        return path
    return quote(path, safe="/:@!$&'()*+,;=-._~")


_NEEDS_ENCODING = re.compile(r'[^\x21-\x7e]|["%\\]')
