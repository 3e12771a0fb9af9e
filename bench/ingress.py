"""Ingress: accepted webhooks per second and latency of `gunicorn app:app` against a bare Flask endpoint.

    .venv/bin/python bench/ingress.py [--seconds 10]

Both run under the same gunicorn settings (gunicorn.conf.py: 2 workers x 4
threads). Relay stores every webhook durably in SQLite before answering;
the bare endpoint only parses JSON. First the most each takes (wrk, 16
connections, closed loop), then latency at 300 requests/s (wrk paced: 30
connections that each wait 100 ms after every answer). 3 runs, medians.
With --bounds, each run also measures relay with the store write, then the
store write and the log line, replaced by nothing (bench/relay_bound.py): the
ratio relay could reach if those cost nothing.
Needs wrk (apt-get install wrk). Targets: relay >= 0.7 of bare; p99 <= 25 ms at 300 requests/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

from common import Server, children_cpu_seconds, wrk

TOKEN = "bench-token"


def once(args: argparse.Namespace) -> dict[str, object]:
    work = tempfile.mkdtemp(prefix="bench-ingress-")
    # The per-source limit stays on (its check is part of the path) but set above what is sent.
    relay_env = {
        "RELAY_DATABASE_URL": f"sqlite:///{work}/relay.db",
        "TILDA_WEBHOOK_TOKEN": TOKEN,
        "RELAY_HOOK_RATE_LIMIT": "1000000 per second",
    }
    report: dict[str, object] = {}
    for name, server in (
        ("bare_flask", Server.gunicorn("bare_app:app", {})),
        ("relay", Server.gunicorn("app:app", relay_env)),
    ):
        with server:
            url = f"{server.url}/hooks/tilda?token={TOKEN}"
            wrk(url, seconds=2)  # warm up
            assert server.process is not None
            cpu_before = children_cpu_seconds(server.process.pid)
            most = wrk(url, seconds=args.seconds)
            # CPU per request varies far less than throughput on this shared machine.
            cpu = children_cpu_seconds(server.process.pid) - cpu_before
            most["cpu_ms_per_request"] = round(cpu / (most["requests_per_second"] * args.seconds) * 1000, 3)
            report[name] = {
                "max": most,
                "fixed_rate": wrk(url, seconds=args.seconds, connections=30, rate=args.rate),
            }
    relay_max = report["relay"]["max"]["requests_per_second"]  # type: ignore[index]
    bare_max = report["bare_flask"]["max"]["requests_per_second"]  # type: ignore[index]
    if args.bounds:
        for without in ("store", "store,log"):
            with Server.gunicorn("relay_bound:app", {**relay_env, "RELAY_BENCH_WITHOUT": without}) as server:
                url = f"{server.url}/hooks/tilda?token={TOKEN}"
                wrk(url, seconds=2)
                bound = wrk(url, seconds=args.seconds)
            report[f"ratio_without_{without.replace(',', '_')}"] = round(bound["requests_per_second"] / bare_max, 3)
    report["ratio"] = round(relay_max / bare_max, 3)
    relay_cpu = report["relay"]["max"]["cpu_ms_per_request"]  # type: ignore[index]
    report["cpu_ratio"] = round(report["bare_flask"]["max"]["cpu_ms_per_request"] / relay_cpu, 3)  # type: ignore[index]
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--repeat", type=int, default=3, help="runs; the summary takes the median")
    parser.add_argument("--bounds", action="store_true", help="also relay without its store write and log line")
    args = parser.parse_args()
    runs = [once(args) for _ in range(args.repeat)]
    summary = {
        "relay_accepted_per_second": statistics.median(r["relay"]["max"]["requests_per_second"] for r in runs),
        "bare_per_second": statistics.median(r["bare_flask"]["max"]["requests_per_second"] for r in runs),
        "ratio": statistics.median(r["ratio"] for r in runs),
        "relay_cpu_ms_per_request": statistics.median(r["relay"]["max"]["cpu_ms_per_request"] for r in runs),
        "bare_cpu_ms_per_request": statistics.median(r["bare_flask"]["max"]["cpu_ms_per_request"] for r in runs),
        "cpu_ratio_bare_over_relay": statistics.median(r["cpu_ratio"] for r in runs),
        f"relay_p50_ms_at_{int(args.rate)}_rps": statistics.median(r["relay"]["fixed_rate"]["p50_ms"] for r in runs),
        f"relay_p99_ms_at_{int(args.rate)}_rps": statistics.median(r["relay"]["fixed_rate"]["p99_ms"] for r in runs),
        "relay_paced_rate_achieved": statistics.median(r["relay"]["fixed_rate"]["requests_per_second"] for r in runs),
        f"bare_p99_ms_at_{int(args.rate)}_rps": statistics.median(
            r["bare_flask"]["fixed_rate"]["p99_ms"] for r in runs
        ),
        "targets": {"ratio": 0.7, "p99_ms_at_300_rps": 25},
    }
    if args.bounds:
        for key in ("ratio_without_store", "ratio_without_store_log"):
            summary[key] = statistics.median(r[key] for r in runs)
    print(json.dumps({"summary_median": summary, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
