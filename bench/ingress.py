"""Ingress: accepted webhooks per second and latency of `gunicorn app:app` against a bare Flask endpoint.

    .venv/bin/python bench/ingress.py [--rounds 7] [--seconds 5] [--bounds] [--durable]

Both run under the same gunicorn settings (gunicorn.conf.py: 2 workers x 4
threads). Relay stores every webhook durably in SQLite before answering;
the bare endpoint only parses JSON.

Both servers are up for the whole run and are measured in alternating turns:
each round gives each the most it takes for a few seconds (wrk, 16
connections, closed loop), in turn, and the round's ratio compares turns
seconds apart. This shared machine slows down for tens of seconds at a time;
measured one after the other, a slowdown that hit only the bare endpoint once
made relay look 2.1 times as fast as it. The figure is the median of the
rounds' ratios. Then latency at 300 requests/s (wrk paced: 30 connections that
each wait 100 ms after every answer), 3 turns each, medians. Beside wrk's p99,
which counts the whole round trip (gunicorn's queue, both servers' and wrk's
own waits for a core on this 2-core machine), each paced turn of relay reads
relay's own time to accept a webhook from its `relay_ingress_seconds` histogram
(`/metrics`, from the request's start to the answer built): the share of that
turn's webhooks over 10 ms and over 25 ms, and the histogram bucket its 99th
percentile falls in. Where wrk's p99 is over 25 ms and relay's own share over
25 ms is under 1%, the rest of the round trip made the tail.

With --bounds, each round also measures relay with the store write, then the
store write and the log line, replaced by nothing (bench/relay_bound.py): the
ratio relay could reach if those cost nothing. With --durable, each round also
measures bench/durable_app.py, the bare endpoint plus one committed SQLite
INSERT a request: relay against it is what relay adds beyond the durable write.
With --payload shopify, every request is a real Shopify order (orders/paid, 7 KB of JSON), signed
with X-Shopify-Hmac-Sha256 as Shopify signs it, each under a new X-Shopify-Webhook-Id (the header
relay de-duplicates by; the signature covers the body only), instead of a small Tilda form with its
token in the URL: the same bytes go to the bare endpoint, which parses them too.
Needs wrk (apt-get install wrk). Targets: relay >= 0.7 of bare; p99 <= 25 ms at 300 requests/s.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import statistics
import tempfile
from dataclasses import dataclass
from typing import Any

import httpx
from common import ROOT, WRK_SCRIPT, Server, children_cpu_seconds, signed_body_script, wrk
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "bench-token"
SHOPIFY_SECRET = "bench-shopify-secret"
SHOPIFY_ORDER = ROOT / "mappings" / "examples" / "shopify" / "orders-paid.json"


@dataclass(frozen=True)
class Payload:
    """What every request of a run is: the hook's path and query, the wrk script, relay's settings for it."""

    target: str
    script: str
    settings: dict[str, str]


def payload(name: str) -> Payload:
    if name == "tilda":
        return Payload(f"/hooks/tilda?token={TOKEN}", WRK_SCRIPT, {"TILDA_WEBHOOK_TOKEN": TOKEN})
    body = SHOPIFY_ORDER.read_bytes()
    signature = base64.b64encode(hmac.new(SHOPIFY_SECRET.encode(), body, hashlib.sha256).digest()).decode()
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Shop-Domain": "bench.myshopify.com",
        "X-Shopify-Hmac-Sha256": signature,
    }
    script = signed_body_script(str(SHOPIFY_ORDER), headers, "X-Shopify-Webhook-Id")
    return Payload("/hooks/shopify", script, {"SHOPIFY_WEBHOOK_SECRET": SHOPIFY_SECRET})


def ingress_buckets(server: Server) -> dict[float, float]:
    """Relay's `relay_ingress_seconds` histogram as it stands: webhooks accepted in at most `le` seconds, by `le`
    (the last bucket, +Inf, is every webhook)."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    counts: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "relay_ingress_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    counts[bound] = counts.get(bound, 0.0) + sample.value
    return counts


def own_latency(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """Relay's own time to accept the webhooks of one turn, from its histogram before and after it."""
    turn = {bound: after[bound] - before.get(bound, 0.0) for bound in after}
    total = turn.get(float("inf"), 0.0)
    if not total:  # none accepted: no share to give, but the same figures for the summary
        nothing = float("nan")
        return {"accepted": 0, "over_10ms_percent": nothing, "over_25ms_percent": nothing, "p99_at_most_ms": nothing}
    p99_bucket = min(bound for bound, count in turn.items() if count >= 0.99 * total)
    return {
        "accepted": int(total),
        "over_10ms_percent": round(100 * (total - turn[0.01]) / total, 2),
        "over_25ms_percent": round(100 * (total - turn[0.025]) / total, 2),
        "p99_at_most_ms": p99_bucket * 1000,
    }


def servers(bounds: bool, durable: bool, sent: Payload) -> dict[str, Server]:
    work = tempfile.mkdtemp(prefix="bench-ingress-")
    # The per-source limit stays on (its check is part of the path) but set above what is sent.
    relay_env = {**sent.settings, "RELAY_HOOK_RATE_LIMIT": "1000000 per second"}
    found = {
        "bare_flask": Server.gunicorn("bare_app:app", {}),
        "relay": Server.gunicorn("app:app", {**relay_env, "RELAY_DATABASE_URL": f"sqlite:///{work}/relay.db"}),
    }
    if durable:
        found["durable_flask"] = Server.gunicorn("durable_app:app", {"BENCH_DURABLE_DB": f"{work}/durable.db"})
    if bounds:
        for without in ("store", "store,log"):
            env = {**relay_env, "RELAY_DATABASE_URL": f"sqlite:///{work}/{without}.db", "RELAY_BENCH_WITHOUT": without}
            found["relay_without_" + without.replace(",", "_")] = Server.gunicorn("relay_bound:app", env)
    return found


def most(server: Server, sent: Payload, seconds: int) -> dict[str, float]:
    """The most `server` takes in `seconds`, and the CPU its workers spent on each request."""
    assert server.process is not None
    before = children_cpu_seconds(server.process.pid)
    result = wrk(server.url + sent.target, seconds=seconds, script=sent.script)
    cpu = children_cpu_seconds(server.process.pid) - before
    result["cpu_ms_per_request"] = round(cpu / (result["requests_per_second"] * seconds) * 1000, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7, help="alternating turns; the figure is their median")
    parser.add_argument("--seconds", type=int, default=5, help="length of each turn at full load")
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--paced-seconds", type=int, default=10)
    parser.add_argument("--bounds", action="store_true", help="also relay without its store write and log line")
    parser.add_argument("--durable", action="store_true", help="also bare Flask with one committed SQLite insert")
    parser.add_argument("--payload", choices=("tilda", "shopify"), default="tilda", help="what every request is")
    args = parser.parse_args()

    sent = payload(args.payload)
    started = servers(args.bounds, args.durable, sent)
    rounds: list[dict[str, object]] = []
    paced: dict[str, list[dict[str, Any]]] = {"bare_flask": [], "relay": []}
    with contextlib.ExitStack() as stack:
        for server in started.values():
            stack.enter_context(server)
        for server in started.values():
            wrk(server.url + sent.target, seconds=2, script=sent.script)  # warm up
        names = list(started)
        for index in range(args.rounds):
            # Alternate who goes first, so neither always follows the other's load.
            order = names if index % 2 == 0 else names[::-1]
            turns = {name: most(started[name], sent, args.seconds) for name in order}
            bare = turns["bare_flask"]
            record: dict[str, object] = {"turns": turns}
            for name, turn in turns.items():
                if name != "bare_flask":
                    record[f"ratio_{name}"] = round(turn["requests_per_second"] / bare["requests_per_second"], 3)
            record["cpu_ratio_bare_over_relay"] = round(
                bare["cpu_ms_per_request"] / turns["relay"]["cpu_ms_per_request"], 3
            )
            if "durable_flask" in turns:
                durable = turns["durable_flask"]["requests_per_second"]
                record["ratio_relay_over_durable"] = round(turns["relay"]["requests_per_second"] / durable, 3)
            rounds.append(record)
        for index in range(3):
            for name in ("bare_flask", "relay") if index % 2 == 0 else ("relay", "bare_flask"):
                before = ingress_buckets(started[name]) if name == "relay" else {}
                turn = wrk(
                    started[name].url + sent.target,
                    seconds=args.paced_seconds,
                    connections=30,
                    rate=args.rate,
                    script=sent.script,
                )
                if name == "relay":
                    turn["relay_own"] = own_latency(before, ingress_buckets(started[name]))
                paced[name].append(turn)

    def median_of(key: str) -> float:
        return statistics.median(float(r[key]) for r in rounds)  # type: ignore[arg-type]

    def turn_median(name: str, key: str) -> float:
        return statistics.median(r["turns"][name][key] for r in rounds)  # type: ignore[index]

    summary: dict[str, object] = {
        "payload": args.payload,
        "ratio": median_of("ratio_relay"),
        "ratio_by_round": [r["ratio_relay"] for r in rounds],
        "relay_accepted_per_second": turn_median("relay", "requests_per_second"),
        "bare_per_second": turn_median("bare_flask", "requests_per_second"),
        "relay_cpu_ms_per_request": turn_median("relay", "cpu_ms_per_request"),
        "bare_cpu_ms_per_request": turn_median("bare_flask", "cpu_ms_per_request"),
        "cpu_ratio_bare_over_relay": median_of("cpu_ratio_bare_over_relay"),
        f"relay_p50_ms_at_{int(args.rate)}_rps": statistics.median(p["p50_ms"] for p in paced["relay"]),
        f"relay_p99_ms_at_{int(args.rate)}_rps": statistics.median(p["p99_ms"] for p in paced["relay"]),
        "relay_p99_ms_by_turn": [p["p99_ms"] for p in paced["relay"]],
        "relay_own_over_25ms_percent_by_turn": [p["relay_own"]["over_25ms_percent"] for p in paced["relay"]],
        "relay_own_p99_at_most_ms_by_turn": [p["relay_own"]["p99_at_most_ms"] for p in paced["relay"]],
        "relay_paced_rate_achieved": statistics.median(p["requests_per_second"] for p in paced["relay"]),
        f"bare_p99_ms_at_{int(args.rate)}_rps": statistics.median(p["p99_ms"] for p in paced["bare_flask"]),
        "non_2xx": sum(t["non_2xx"] for r in rounds for t in r["turns"].values()),  # type: ignore[attr-defined]
        "targets": {"ratio": 0.7, "p99_ms_at_300_rps": 25},
    }
    if args.durable:
        summary["ratio_durable_flask"] = median_of("ratio_durable_flask")
        summary["durable_per_second"] = turn_median("durable_flask", "requests_per_second")
        summary["durable_cpu_ms_per_request"] = turn_median("durable_flask", "cpu_ms_per_request")
        summary["ratio_relay_over_durable"] = median_of("ratio_relay_over_durable")
        summary["ratio_relay_over_durable_by_round"] = [r["ratio_relay_over_durable"] for r in rounds]
    if args.bounds:
        for name in ("relay_without_store", "relay_without_store_log"):
            summary[f"ratio_{name}"] = median_of(f"ratio_{name}")
            summary[f"ratio_{name}_by_round"] = [r[f"ratio_{name}"] for r in rounds]
    print(json.dumps({"summary_median": summary, "rounds": rounds, "paced": paced}, indent=2))


if __name__ == "__main__":
    main()
