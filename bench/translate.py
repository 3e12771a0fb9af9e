"""Translation throughput on one core: payloads per second for a real Shopify order and a Tilda form.

    .venv/bin/python bench/translate.py [--seconds 5]

Prints JSON. Target: at least 3,000 Shopify orders per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.inbound import InboundRequest  # noqa: E402
from relay.mapping.loader import load_sources  # noqa: E402
from relay.mapping.translate import TranslateContext  # noqa: E402
from relay.pipeline import translate_request  # noqa: E402

EXAMPLES = ROOT / "mappings" / "examples"


def measure(source, request: InboundRequest, seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    context = TranslateContext()
    translate_request(source, request, context)  # warm caches
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            translate_request(source, request, context)
        count += 100
    elapsed = time.perf_counter() - started
    return {"per_second": round(count / elapsed), "microseconds_each": round(elapsed / count * 1e6, 1)}


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
    report = {
        "shopify_order": measure(sources["shopify"], shopify, args.seconds),
        "tilda_form": measure(sources["tilda"], tilda, args.seconds),
        "machine_reference": reference(shopify.body, args.seconds),
        "target_shopify_per_second": 3000,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
