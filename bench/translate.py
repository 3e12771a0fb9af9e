"""Translation throughput on one core: payloads per second for a real Shopify order and a Tilda form.

    .venv/bin/python bench/translate.py [--seconds 5]

Prints JSON. Target: at least 3,000 Shopify orders per second.

Each payload is translated as 10,000 customers' copies, taken in turn: the same order with its e-mail,
phones and IP changed. Relay caches normalised addresses and phones (a mapping reads the same one up to
three times a payload), and one payload translated again and again would find them all cached, which
real traffic does not: its figure is printed too, as `*_repeated`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.inbound import InboundRequest  # noqa: E402
from relay.mapping.loader import load_sources  # noqa: E402
from relay.mapping.translate import TranslateContext  # noqa: E402
from relay.pipeline import translate_request  # noqa: E402

EXAMPLES = ROOT / "mappings" / "examples"


CUSTOMERS = 10_000  # more than the 8,192 addresses and phones each of relay's caches keeps


def measure(source, requests: list[InboundRequest], seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    context = TranslateContext()
    for request in requests[:100]:
        translate_request(source, request, context)  # what a worker has loaded by its first delivery
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            translate_request(source, requests[count % len(requests)], context)
            count += 1
    elapsed = time.perf_counter() - started
    return {"per_second": round(count / elapsed), "microseconds_each": round(elapsed / count * 1e6, 1)}


def customers(request: InboundRequest, changes: list[tuple[bytes, str]]) -> list[InboundRequest]:
    """`request` as CUSTOMERS customers' copies: each `old` text replaced by `new` formatted with n."""
    copies = []
    for n in range(CUSTOMERS):
        body = request.body
        numbers = {"n": n, "hi": 200 + n // 10_000, "lo": n % 10_000, "a": n // 250, "b": n % 250 + 1}
        for old, new in changes:
            assert old in body, old
            body = body.replace(old, new.format(**numbers).encode())
        copies.append(replace(request, body=body))
    return copies


def reference(body: bytes, seconds: float) -> dict[str, float]:
    """The same machine's speed at plain Python work (parse and dump the same order), so figures
    taken on different days, or machines, can be compared: this shared machine varies by 2x."""
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds / 2:
        for _ in range(100):
            json.dumps(json.loads(body))
        count += 100
    return {"json_round_trips_per_second": round(count / (time.perf_counter() - started))}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    sources = load_sources(ROOT / "mappings")
    shopify = InboundRequest(
        source="shopify",
        body=(EXAMPLES / "shopify" / "orders-create-with-ip.json").read_bytes(),
        content_type="application/json",
        headers={"X-Shopify-Topic": "orders/create"},
    )
    tilda = InboundRequest(
        source="tilda",
        body=(EXAMPLES / "tilda" / "form-russian-phone.txt").read_bytes(),
        content_type="application/x-www-form-urlencoded",
    )
    shopify_customers = customers(
        shopify,
        [
            (b"jon@example.com", "jon.{n}@example.com"),
            (b"+1 (613) 555-0147", "+1 (613) {hi}-{lo:04d}"),
            (b"123-123-1234", "{hi}-124-{lo:04d}"),
            (b"81.2.69.142", "81.2.{a}.{b}"),
        ],
    )
    tilda_customers = customers(
        tilda, [(b"Ivan.Petrov%40Example.COM", "Ivan.Petrov{n}%40Example.COM"), (b"345-67-89", "{hi}-{lo:04d}")]
    )
    report = {
        "shopify_order": measure(sources["shopify"], shopify_customers, args.seconds),
        "tilda_form": measure(sources["tilda"], tilda_customers, args.seconds),
        "shopify_order_repeated": measure(sources["shopify"], [shopify], args.seconds / 2),
        "tilda_form_repeated": measure(sources["tilda"], [tilda], args.seconds / 2),
        "machine_reference": reference(shopify.body, args.seconds),
        "target_shopify_per_second": 3000,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
