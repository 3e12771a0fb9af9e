"""What a mapping fetches from the provider's API, worked out from a payload: pure, no network.

A thin webhook names a record and leaves out the person (BigCommerce's order hook is
`{"data": {"type": "order", "id": 250}}`). The mapping's `fetch:` section gives the request that gets
the record; the rules read its answer as `fetched.<name>`. The worker makes the requests
(`relay.fetch.Fetcher`); `preview` and the mapping examples take the answers from files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from relay.bodies import parse_body
from relay.errors import MappingError, RequestRejected
from relay.mapping import envrefs
from relay.mapping.expressions import search
from relay.mapping.model import FetchSpec
from relay.mapping.templates import template_pieces
from relay.mapping.transforms import scalar_text
from relay.settings import shown_url

__all__ = [
    "FETCHED",
    "Fetch",
    "FetchRequest",
    "answer_from_file",
    "given_answer",
    "build_request",
    "unset_settings",
    "with_fetched",
]

FETCHED = "fetched"  # the payload's key under which the rules find the fetched documents


@dataclass(frozen=True)
class FetchRequest:
    """One GET to make. `url` and `headers` may hold settings' values (a token): only `shown`, the address
    with every credential's setting as ***, is ever logged, stored or printed."""

    name: str
    url: str
    shown: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    absent_on: tuple[int, ...] = ()  # the answers that say the record is gone: no document (FetchSpec)

    def __repr__(self) -> str:
        return f"FetchRequest(name={self.name!r}, shown={self.shown!r})"


# A setting whose name says it holds a credential is shown as *** wherever it lands in an address.
SECRET_SETTING = re.compile(r"TOKEN|SECRET|KEY|PASS|AUTH|CREDENTIAL|SIGNATURE|SESSION|COOKIE", re.IGNORECASE)


def unset_settings(spec: FetchSpec, env: Mapping[str, str]) -> list[str]:
    """The settings a fetch references (in its URL and header values) that are unset with no default, and
    those it `needs` that are unset or empty."""
    texts = [spec.url, *(value for _name, value in spec.headers)]
    missing = envrefs.missing([ref for text in texts for ref in envrefs.find_refs(text)], env)
    return sorted({*missing, *(name for name in spec.needs if not env.get(name))})


def answer_from_file(name: str, path: Path) -> Any:
    """The API's answer to fetch `name` as a file gives it (`preview --fetched`, an example's `fetched`).

    Raises:
        MappingError: the file cannot be read, or is not JSON.
    """
    try:
        return parse_body(path.read_bytes(), "application/json")
    except OSError as exc:
        raise MappingError(f"fetch {name}: the answer in {path}: {exc.strerror}") from None
    except RequestRejected as exc:
        raise MappingError(f"fetch {name}: the answer in {path}: {exc.detail}") from None


def given_answer(request: FetchRequest, given: Path | int) -> Any:
    """The answer `preview` or an example gives for a fetch: a file of JSON, or an HTTP status (`404`), which
    is no document when the fetch takes it as the record gone (`absent_on`).

    Raises:
        MappingError: the file cannot be read or is not JSON, or the status is one the fetch does not take
            (the worker would fail the delivery as rejected).
    """
    if isinstance(given, int):
        if given in request.absent_on:
            return None
        raise MappingError(f"fetch {request.name}: HTTP {given}, which the fetch does not take as the record gone")
    return answer_from_file(request.name, given)


def with_fetched(payload: Any, documents: Mapping[str, Any]) -> Any:
    """The payload the rules see: the body's own keys, and the documents under `fetched`."""
    if not isinstance(payload, dict):
        raise MappingError("a source that fetches documents needs a payload that is an object")
    return {**payload, FETCHED: dict(documents)}


def build_request(spec: FetchSpec, data: Any, env: Mapping[str, str]) -> FetchRequest:
    """The request a fetch makes for this payload.

    Raises:
        MappingError: a placeholder is empty in this payload, a setting it needs is unset, or the
            result is not an http(s) address.
    """
    url, shown = _render(spec, spec.url, data, env, encode=True)
    if not url.lower().startswith(("https://", "http://")):
        raise MappingError(f"fetch {spec.name}: {shown_url(shown)!r} is not an http(s) address")
    headers = {name: _render(spec, value, data, env, encode=False)[0] for name, value in spec.headers}
    return FetchRequest(name=spec.name, url=url, shown=shown, headers=headers, absent_on=spec.absent_on)


def _render(spec: FetchSpec, template: str, data: Any, env: Mapping[str, str], *, encode: bool) -> tuple[str, str]:
    """(the text, the text as it may be shown: a credential's setting as ***)."""
    pieces: list[str] = []
    shown: list[str] = []
    for is_expression, text in template_pieces(template):
        if not is_expression:
            for piece in envrefs.text_pieces(text):
                if isinstance(piece, str):
                    pieces.append(piece)
                    shown.append(piece)
                    continue
                value = piece.resolve(env)
                if value is None:
                    raise MappingError(f"fetch {spec.name} needs {piece.name}, which is not set")
                pieces.append(value)
                shown.append("***" if SECRET_SETTING.search(piece.name) else value)
            continue
        value = scalar_text(search(text, data))
        if not value:
            raise MappingError(f"fetch {spec.name}: {{{text}}} is empty in this payload")
        if encode and value.strip(".") == "":
            # `.` or `..` alone would be a dot segment, which the HTTP client resolves: `/orders/..` is `/`.
            raise MappingError(f"fetch {spec.name}: {{{text}}} is {value!r}, which names no record")
        if encode:
            value = quote(value, safe="")  # a value is one path segment or parameter: no `/`, `?` or `#` of its own
        elif "\r" in value or "\n" in value:
            raise MappingError(f"fetch {spec.name}: {{{text}}} holds a line break, which no header may")
        pieces.append(value)
        shown.append(value)
    return "".join(pieces), "".join(shown)


Fetch = Callable[[FetchRequest], Any]
