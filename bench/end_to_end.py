"""End to end: webhooks delivered per second to the sandbox upstream, against bare httpx posting the same bodies.

    .venv/bin/python bench/end_to_end.py [--deliveries 3000] [--processes 2] [--threads 2]

The store (SQLite) is filled with real Tilda webhooks, then two `python -m
relay worker` processes of two threads each (what RELAY_WORKER_PROCESSES=2
starts on this 2-core machine) drain it into `python -m relay sandbox`; the
clock runs from the first delivery to the last. The baseline posts the very
same translated bodies to the same sandbox with one pooled httpx client and as
many threads as relay has calls in flight (4). Also reports the largest
worker's resident memory. Targets: relay >= 0.7 of bare httpx; worker RSS <=
120 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from common import BIN, ROOT, Sandbox, report_with_sandbox, rss_mb

from relay.inbound import InboundRequest
from relay.mapping.loader import load_sources
from relay.mapping.translate import TranslateContext
from relay.pipeline import translate_request
from relay.store import Store

TOKEN = "bench-upstream-token"
FORM = "application/x-www-form-urlencoded"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--processes", type=int, default=2, help="`relay worker` processes (one per core here)")
    parser.add_argument("--threads", type=int, default=2, help="threads per worker process")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the summary takes the median")
    report_with_sandbox(TOKEN, parser, repeated)


def repeated(sandbox: Sandbox, args: argparse.Namespace) -> dict[str, object]:
    """The machine is shared and noisy: several runs, and their medians."""
    runs = [run(sandbox, args) for _ in range(args.repeat)]
    summary = {
        "relay_per_second": statistics.median(r["relay"]["per_second"] for r in runs),  # type: ignore[index]
        "bare_per_second": statistics.median(r["bare_httpx"]["per_second"] for r in runs),  # type: ignore[index]
        "ratio": statistics.median(r["ratio"] for r in runs),  # type: ignore[misc]
        "worker_rss_mb": max(r["relay"]["worker_rss_mb"] for r in runs),  # type: ignore[index]
        "targets": {"ratio": 0.7, "worker_rss_mb": 120},
    }
    return {"summary_median": summary, "runs": runs}


def run(sandbox: Sandbox, args: argparse.Namespace) -> dict[str, object]:
    base = sandbox.base
    sandbox.control("reset")  # each run starts from an empty upstream
    work = tempfile.mkdtemp(prefix="bench-e2e-")
    url = f"sqlite:///{work}/relay.db"
    store = Store(url)
    requests = [
        InboundRequest(
            source="tilda",
            body=f"Email=lead{i}%40example.com&Name=Lead+{i}&Phone=8+912+{i:07d}".encode(),
            content_type=FORM,
        )
        for i in range(args.deliveries)
    ]
    for index, request in enumerate(requests):
        store.accept(request, dedup_key=f"e2e:{index}", status="queued", dedup_window=3600)
    env = {
        **os.environ,
        "RELAY_DATABASE_URL": url,
        "RELAY_UPSTREAM_URL": f"{base}/api/v1.1",
        "RELAY_UPSTREAM_TOKEN": TOKEN,
        "RELAY_UPSTREAM_RATE": "100000",
        "RELAY_WORKER_CONCURRENCY": str(args.threads),
        "RELAY_POLL_INTERVAL": "0.01",
        "RELAY_LOG_LEVEL": "warning",
    }
    launched = time.perf_counter()
    workers = [
        subprocess.Popen(
            [str(BIN / "python"), "-m", "relay", "worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(args.processes)
    ]
    # The clock starts at the first delivery, so the worker's start-up (imports, mappings) is
    # reported apart and does not dilute the steady rate.
    while (first := store.counts().get("delivered", 0)) == 0 and time.perf_counter() - launched < 60:
        time.sleep(0.005)
    started = time.perf_counter()
    startup_seconds = started - launched
    while store.counts().get("delivered", 0) < args.deliveries:
        time.sleep(0.05)
        if time.perf_counter() - started > 600:
            break
    relay_seconds = time.perf_counter() - started
    worker_rss = max(rss_mb(worker.pid) for worker in workers)
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.wait(timeout=30)
    counts = store.counts()
    store.close()

    sandbox.control("reset")
    source = load_sources(ROOT / "mappings")["tilda"]
    bodies = [
        json.dumps({"token": TOKEN, **translate_request(source, r, TranslateContext()).calls[0].body}).encode()
        for r in requests
    ]
    client = httpx.Client(timeout=10, limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))

    def post(body: bytes) -> int:
        return client.post(
            f"{base}/api/v1.1/profiles/import", content=body, headers={"Content-Type": "application/json"}
        ).status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(args.processes * args.threads) as pool:  # as many calls in flight as relay
        statuses = list(pool.map(post, bodies))
    bare_seconds = time.perf_counter() - started
    client.close()
    relay_rate = (counts.get("delivered", 0) - first) / relay_seconds
    bare_rate = len(bodies) / bare_seconds
    return {
        "deliveries": args.deliveries,
        "worker_processes": args.processes,
        "threads_per_process": args.threads,
        "relay": {
            "delivered": counts.get("delivered", 0),
            "seconds": round(relay_seconds, 2),
            "per_second": round(relay_rate, 1),
            "worker_rss_mb": worker_rss,
            "startup_seconds": round(startup_seconds, 2),
        },
        "bare_httpx": {
            "ok": statuses.count(200),
            "seconds": round(bare_seconds, 2),
            "per_second": round(bare_rate, 1),
        },
        "ratio": round(relay_rate / bare_rate, 3),
        "targets": {"ratio": 0.7, "worker_rss_mb": 120},
    }


if __name__ == "__main__":
    main()
