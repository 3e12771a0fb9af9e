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
      # or ignored: <reason substring> | ping: true | error: <substring>
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
from relay.inbound import InboundRequest, is_ping, with_url_event
from relay.mapping.fetches import FetchRequest, answer_from_file
from relay.mapping.model import Source
from relay.mapping.translate import TranslateContext
from relay.pipeline import parse_request, take_body_token, translate_request

__all__ = ["Example", "example_files", "load_example", "run_example"]


@dataclass(frozen=True)
class Example:
    path: Path
    source: str
    description: str
    request: InboundRequest
    env: dict[str, str]
    expect: dict[str, Any]
    query: dict[str, str] = field(default_factory=dict)
    fetched: dict[str, Path] = field(default_factory=dict)
    once_taken: frozenset[str] = frozenset()


def example_files(mappings_dir: str | Path, source: str | None = None) -> list[Path]:
    root = Path(mappings_dir) / "examples"
    pattern = f"{source}/*.yaml" if source else "*/*.yaml"
    return sorted(root.glob(pattern))


def load_example(path: Path) -> Example:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
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
        fetched={str(k): path.parent / str(v) for k, v in (request.get("fetched") or {}).items()},
        once_taken=frozenset(str(key) for key in data.get("once_taken") or ()),
    )


def run_example(
    example: Example, source: Source, *, phone_region: str = "RU", upstream_format: str = "json"
) -> list[str]:
    """Run one example; the list of differences is empty when it holds. With `upstream_format="xml"` an
    example whose calls XML cannot carry (a field named `Lead Source`) fails, as its deliveries would."""
    context = TranslateContext(env=example.env, phone_region=example.env.get("RELAY_PHONE_REGION", phone_region))
    expect = example.expect
    try:
        # The request as relay keeps it: the URL's event among its headers, a token in the body taken out.
        received = dataclasses.replace(
            example.request, headers=with_url_event(source, example.request.headers, example.query)
        )
        request = take_body_token(source, received)[1]
        payload = parse_request(request)
    except RequestRejected as exc:
        return [f"request does not parse: {exc.detail}"]
    if expect.get("ping"):
        return [] if is_ping(source, request, payload) else ["expected a ping, got none"]
    if is_ping(source, request, payload):
        return ["request is treated as a ping"]
    fetches: list[str] = []

    def fetch(wanted: FetchRequest) -> Any:
        fetches.append(wanted.shown)
        answer = example.fetched.get(wanted.name)
        if answer is None:
            raise MappingError(f"fetch {wanted.name}: the example gives no answer for it (request.fetched)")
        return answer_from_file(wanted.name, answer)

    try:
        translation = translate_request(
            source,
            request,
            context,
            upstream_format=upstream_format,
            fetch=fetch,
            once_holder=lambda key: "an earlier delivery (once_taken)" if key in example.once_taken else None,
        )
    except MappingError as exc:
        if "error" in expect and str(expect["error"]) in exc.detail:
            return []
        return [f"mapping error: {exc.detail}"]
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
