"""Slow upstream: relay's ingress p99 while every upstream call takes 500 ms, beside a naive inline forwarder.

    .venv/bin/python bench/slow_upstream.py [--rate 50 --seconds 10]

Relay (`python -m relay run`: web and worker) is measured at a fixed request
rate first with a fast upstream, then with one that answers in 500 ms; its p99
should not move, because it stores and answers before forwarding. The naive
Flask handler forwards inside the request under the same gunicorn settings.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time

import httpx
from common import BIN, ROOT, Sandbox, Server, free_port, open_loop, report_with_sandbox

TOKEN = "bench-upstream-token"
HOOK = "bench-hook-token"


def body(index: int) -> bytes:
    return json.dumps({"Email": f"slow{index}@example.com", "tranid": f"s:{index}:{time.time_ns()}"}).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    report_with_sandbox(TOKEN, parser, run)


def run(sandbox: Sandbox, args: argparse.Namespace) -> dict[str, object]:
    base = sandbox.base
    work = tempfile.mkdtemp(prefix="bench-slow-")
    relay_port = free_port()
    env = {
        **os.environ,
        "RELAY_DATABASE_URL": f"sqlite:///{work}/relay.db",
        "RELAY_UPSTREAM_URL": f"{base}/api/v1.1",
        "RELAY_UPSTREAM_TOKEN": TOKEN,
        "TILDA_WEBHOOK_TOKEN": HOOK,
        "RELAY_ACCESS_LOG": "0",
    }
    relay = subprocess.Popen(
        [str(BIN / "python"), "-m", "relay", "run", "--port", str(relay_port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    relay_url = f"http://127.0.0.1:{relay_port}/hooks/tilda?token={HOOK}"
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{relay_port}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    report: dict[str, object] = {}
    report["relay_fast_upstream"] = open_loop(relay_url, rate=args.rate, seconds=args.seconds, body=body)
    sandbox.control("chaos", {"latency_ms": 500})
    report["relay_slow_upstream"] = open_loop(relay_url, rate=args.rate, seconds=args.seconds, body=body)
    os.killpg(relay.pid, signal.SIGTERM)
    relay.wait(timeout=60)
    naive_env = {"NAIVE_UPSTREAM_URL": f"{base}/api/v1.1", "NAIVE_UPSTREAM_TOKEN": TOKEN}
    with Server.gunicorn("naive_forwarder:app", naive_env) as naive:
        report["naive_inline_slow_upstream"] = open_loop(
            f"{naive.url}/hooks/tilda", rate=args.rate, seconds=args.seconds, body=body
        )
    report["upstream_latency_ms"] = 500
    return report


if __name__ == "__main__":
    main()
