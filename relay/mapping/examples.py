"""Mapping examples: a provider request in, the exact upstream calls out.

Each source keeps its proof in `mappings/examples/<source>/*.yaml`::

    description: a paid order removes the abandoned-checkout tag
    request:
      body_file: orders-paid.json       # or body: "raw text"
      content_type: application/json
      headers: {X-Shopify-Topic: orders/paid}
      query: {topic: orders/create}     # optional: the hook URL's parameters (`event: {query: topic}`)
      client_ip: 8.8.8.8                # optional
      fetched: {order: order-250.json}  # optional: the API's answers to the mapping's fetches, by name
    env: {RELAY_DB_ID: "7"}             # optional, over an empty environment
    once_taken: [order 250 paid]        # optional: rules' once keys an earlier delivery took
    expect:
      fetches: [https://api.example.com/orders/250]   # optional: the addresses fetched, as relay shows them
      once: order 250 paid              # optional: the once key the chosen rule takes (none: `once: null`)
      calls: [{method: profiles/import, body: {...}}]
      # or ignored: <reason substring> | ping: true | error: <substring> | forget: [<e-mail>, <phone>]
      # (error with calls: the calls that still go when the order alone is refused)

`python -m relay check` and the test suite both run them through `run_example`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from relay.errors import MappingError, RequestRejected
from relay.inbound import URL_EVENT_HEADER, InboundRequest, is_ping, with_url_event
from relay.mapping.fetches import FetchRequest, given_answer
from relay.mapping.model import Source
from relay.mapping.translate import TranslateContext, Translation
from relay.pipeline import parse_request, take_body_token, translate_request

__all__ = [
    "Example",
    "ExampleUnreadable",
    "Observed",
    "check_example",
    "example_files",
    "load_example",
    "observe_example",
    "run_example",
    "save_example",
]


@dataclass(frozen=True)
class Example:
    path: Path
    source: str
    description: str
    request: InboundRequest
    env: dict[str, str]
    expect: dict[str, Any]
    query: dict[str, str] = field(default_factory=dict)
    fetched: dict[str, Path | int] = field(default_factory=dict)  # a file of JSON, or an HTTP status (404)
    once_taken: frozenset[str] = frozenset()


def example_files(mappings_dir: str | Path, source: str | None = None) -> list[Path]:
    root = Path(mappings_dir) / "examples"
    pattern = f"{source}/*.yaml" if source else "*/*.yaml"
    return sorted(root.glob(pattern))


class ExampleUnreadable(ValueError):
    """An example file that is no valid YAML; `line` is where the parser stopped (1-based)."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def load_example(path: Path) -> Example:
    """One example file, with the body file it names.

    Raises:
        ExampleUnreadable: the file is no valid YAML.
        OSError, KeyError, TypeError, ValueError: it cannot be read, or lacks `request` or `expect`.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ExampleUnreadable(f"not valid YAML: {problem}", mark.line + 1 if mark is not None else 1) from None
    request = data["request"]
    if "body_file" in request:
        body = (path.parent / request["body_file"]).read_bytes()
    else:
        body = str(request.get("body", "")).encode("utf-8")
    headers = {str(k): str(v) for k, v in (request.get("headers") or {}).items()}
    return Example(
        path=path,
        source=path.parent.name,
        description=str(data.get("description", "")),
        request=InboundRequest(
            source=path.parent.name,
            body=body,
            content_type=request.get("content_type"),
            headers=headers,
            client_ip=request.get("client_ip"),
        ),
        env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
        expect=data["expect"],
        query={str(k): str(v) for k, v in (request.get("query") or {}).items()},
        fetched={
            str(k): v if isinstance(v, int) and not isinstance(v, bool) else path.parent / str(v)
            for k, v in (request.get("fetched") or {}).items()
        },
        once_taken=frozenset(str(key) for key in data.get("once_taken") or ()),
    )


@dataclass
class Observed:
    """What relay does with an example's request: a ping, a request that does not parse, a mapping error,
    or a translation (calls or ignored), with the addresses it fetched."""

    ping: bool = False
    unparsable: str | None = None
    error: str | None = None
    translation: Translation | None = None
    fetches: list[str] = field(default_factory=list)
    rule: str | None = None  # the rule that took the request (translated it, ignored it, or failed on it)

    def expectation(self) -> dict[str, Any]:
        """The `expect` an example of this request holds: what `run_example` then finds."""
        if self.unparsable is not None:
            raise ValueError(f"the request does not parse: {self.unparsable}")
        if self.ping:
            return {"ping": True}
        if self.error is not None:
            return {"error": self.error}
        assert self.translation is not None
        expect: dict[str, Any] = {"fetches": self.fetches} if self.fetches else {}
        if self.translation.ignored:
            return {**expect, "ignored": self.translation.ignored}
        if self.translation.forget:
            return {**expect, "forget": list(self.translation.forget)}
        if self.translation.once_key is not None:
            expect["once"] = self.translation.once_key
        if self.translation.order_refused:
            expect["error"] = self.translation.order_refused
        expect["calls"] = [call.to_dict() for call in self.translation.calls]
        return expect


def observe_example(
    example: Example, source: Source, *, phone_region: str = "RU", upstream_format: str = "json"
) -> Observed:
    """Run an example's request through relay as the worker would (over the example's environment)."""
    context = TranslateContext(env=example.env, phone_region=example.env.get("RELAY_PHONE_REGION", phone_region))
    try:
        # The request as relay keeps it: the URL's event among its headers, a token in the body taken out.
        received = dataclasses.replace(
            example.request, headers=with_url_event(source, example.request.headers, example.query)
        )
        request = take_body_token(source, received)[1]
        payload = parse_request(request)
    except RequestRejected as exc:
        return Observed(unparsable=exc.detail)
    if is_ping(source, request, payload):
        return Observed(ping=True)
    observed = Observed()

    def fetch(wanted: FetchRequest) -> Any:
        observed.fetches.append(wanted.shown)
        answer = example.fetched.get(wanted.name)
        if answer is None:
            raise MappingError(f"fetch {wanted.name}: the example gives no answer for it (request.fetched)")
        return given_answer(wanted, answer)

    try:
        observed.translation = translate_request(
            source,
            request,
            context,
            upstream_format=upstream_format,
            fetch=fetch,
            once_holder=lambda key: "an earlier delivery (once_taken)" if key in example.once_taken else None,
        )
    except MappingError as exc:
        observed.error, observed.rule = exc.detail, exc.rule
        return observed
    observed.rule = observed.translation.rule
    return observed


def run_example(
    example: Example, source: Source, *, phone_region: str = "RU", upstream_format: str = "json"
) -> list[str]:
    """Run one example; the list of differences is empty when it holds. With `upstream_format="xml"` an
    example whose calls XML cannot carry (a field named `Lead Source`) fails, as its deliveries would."""
    return check_example(example, source, phone_region=phone_region, upstream_format=upstream_format)[0]


def check_example(
    example: Example, source: Source, *, phone_region: str = "RU", upstream_format: str = "json"
) -> tuple[list[str], Observed]:
    """`run_example`'s differences, and what relay did with the example's request."""
    observed = observe_example(example, source, phone_region=phone_region, upstream_format=upstream_format)
    return _differences(example.expect, observed), observed


def _differences(expect: dict[str, Any], observed: Observed) -> list[str]:
    if observed.unparsable is not None:
        return [f"request does not parse: {observed.unparsable}"]
    if expect.get("ping"):
        return [] if observed.ping else ["expected a ping, got none"]
    if observed.ping:
        return ["request is treated as a ping"]
    if observed.error is not None:
        if "error" in expect and str(expect["error"]) in observed.error:
            return []
        return [f"mapping error: {observed.error}"]
    translation = observed.translation
    assert translation is not None
    fetches = observed.fetches
    if "fetches" in expect and fetches != list(expect["fetches"]):
        return [f"fetched {fetches}, expected {list(expect['fetches'])}"]
    if "once" in expect and translation.once_key != expect["once"]:
        return [f"once key {translation.once_key!r}, expected {expect['once']!r}"]
    if translation.order_refused and str(expect.get("error", "\0")) not in translation.order_refused:
        return [f"mapping error: {translation.order_refused}"]
    if "error" in expect and not translation.order_refused:
        return [f"expected a mapping error containing {expect['error']!r}, got calls"]
    if "error" in expect and "calls" not in expect:
        return []
    forgotten = list(translation.forget)
    if "forget" in expect or forgotten:
        if forgotten == list(expect.get("forget") or []):
            return []
        return [f"forgets {forgotten or 'nobody'}, expected {list(expect.get('forget') or [])}"]
    if "ignored" in expect:
        if translation.ignored and str(expect["ignored"]) in translation.ignored:
            return []
        return [f"expected ignored ({expect['ignored']!r}), got {translation.ignored or 'calls'}"]
    if translation.ignored:
        return [f"ignored: {translation.ignored}"]
    got = [call.to_dict() for call in translation.calls]
    if got != expect.get("calls"):
        return [
            "calls differ\n  expected: "
            + json.dumps(expect.get("calls"), ensure_ascii=False, sort_keys=True)
            + "\n  got:      "
            + json.dumps(got, ensure_ascii=False, sort_keys=True)
        ]
    return []


def save_example(
    path: Path,
    source: Source,
    request: InboundRequest,
    *,
    description: str,
    env: dict[str, str] | None = None,
    fetched: dict[str, Path | int] | None = None,
    once_taken: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Write an example of `request` as relay keeps it (a token in the body already out, the URL's event
    among its headers) to `path`, expecting what relay does with it now over `env` (written in it), as
    `relay check` will run it; the `expect` written. The files a fetch reads are copied beside it.

    Raises:
        ValueError: the request does not parse, or `path` exists.
    """
    if path.exists():
        raise ValueError(f"{path} exists; give another name, or remove it first")
    headers = {name: value for name, value in request.headers.items() if name.lower() != URL_EVENT_HEADER.lower()}
    query = {}
    event = request.header(URL_EVENT_HEADER)
    if event is not None and source.event_query is not None:
        query[source.event_query] = event
    written: dict[str, Any] = {"content_type": request.content_type}
    if headers:
        written["headers"] = headers
    if query:
        written["query"] = query
    if request.client_ip:
        written["client_ip"] = request.client_ip
    copies = {
        name: path.with_name(f"{path.stem}.{name}{Path(file).suffix}")
        for name, file in (fetched or {}).items()
        if not isinstance(file, int)
    }
    if fetched:  # a file copied beside the example, or an HTTP status as it is
        written["fetched"] = {name: copies[name].name if name in copies else file for name, file in fetched.items()}
    try:
        written["body"] = request.body.decode("utf-8")
        body_file = None
    except UnicodeDecodeError:  # a form in windows-1251: the bytes as they came, in a file beside it
        body_file = path.with_suffix(".body")
        written["body_file"] = body_file.name
    example = Example(
        path=path,
        source=source.name,
        description=description,
        request=dataclasses.replace(request, headers=headers),
        env=dict(env or {}),
        expect={},
        query=query,
        fetched={name: file if isinstance(file, int) else Path(file) for name, file in (fetched or {}).items()},
        once_taken=once_taken,
    )
    expect = observe_example(example, source)
    document: dict[str, Any] = {"description": description, "request": written}
    if env:
        document["env"] = dict(env)
    if once_taken:
        document["once_taken"] = sorted(once_taken)
    document["expect"] = expect.expectation()
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, copy in copies.items():
        copy.write_bytes(Path(str((fetched or {})[name])).read_bytes())
    if body_file is not None:
        body_file.write_bytes(request.body)
    path.write_text(yaml.dump(document, Dumper=_ExampleDumper, sort_keys=False, allow_unicode=True, width=120))
    return dict(document["expect"])


class _ExampleDumper(yaml.SafeDumper):
    """YAML as the hand-written examples read: a body of several lines as a literal block."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_ExampleDumper.add_representer(str, _text)
