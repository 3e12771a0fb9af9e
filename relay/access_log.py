"""Gunicorn's access log, with the request's path as it may be printed.

Gunicorn writes the path decoded (`%(U)s`), control characters included: a request for
`/hooks/a%0D%0Aforged` (anyone may send one) wrote a line break and a line of the sender's
own into the log. The path is written percent-encoded again instead, as it came.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from gunicorn.glogging import Logger

__all__ = ["AccessLogger"]


class AccessLogger(Logger):  # type: ignore[misc]  # gunicorn has no type hints
    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        atoms["U"] = printable_path(atoms.get("U") or "")
        return atoms


def printable_path(path: str) -> str:
    """`path` percent-encoded again (UTF-8), as a sender put it on the wire, when it holds anything but
    printable ASCII; as it is otherwise (nearly always: one regex search a request)."""
    if _NEEDS_ENCODING.search(path) is None:
        return path
    return quote(path, safe="/:@!$&'()*+,;=-._~")


_NEEDS_ENCODING = re.compile(r'[^\x21-\x7e]|["%\\]')
