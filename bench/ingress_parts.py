"""What each part of ingress costs: CPU a webhook, in one process, with no HTTP server and no load generator.

`bench/ingress.py` measures the whole under gunicorn and wrk, where two
workers and wrk share two cores and every figure moves with the machine.
This one calls the WSGI app directly, one request after another, and takes
the process time of each variant in a child process of its own:

- `bare_flask`: the baseline endpoint (bench/bare_app.py);
- `relay`: the real app, Tilda webhooks with a token, committed to SQLite;
- `relay_without_store`, `relay_without_store_log`: relay with its store write,
  then also its log line, replaced by nothing (bench/relay_bound.py);
- `store_accept`: `Store.accept` alone in a loop, the committed row and nothing else.

The differences give the parts: store, log line, and the rest relay adds to
Flask (request id, limiter, authentication, parsing, ping test, rule choice,
de-duplication key, metrics, answer). The log line goes to /dev/null here, so
its cost is a lower bound. Each child's figure is the best of three passes;
the summary is the median over alternating rounds. With `--threads 4`, four
threads call the app at once in each child, as gunicorn's threads do, and the
figures include what they cost each other (waits for locks and the GIL).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "bare_flask": None,
    "relay": "",
    "relay_without_store": "store",
    "relay_without_store_log": "store,log",
    "store_accept": None,
}
TOKEN = "bench-token"
TARGET = 0.7


def _body(n: int) -> bytes:
    return f'{{"Email":"lead{n}@example.com","Name":"Lead {n}","tranid":"b:{n}"}}'.encode()


def _environ(n: int) -> dict[str, object]:
    body = _body(n)
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/hooks/tilda",
        "QUERY_STRING": f"token={TOKEN}",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def _app_loop(variant: str) -> Callable[[int, int], None]:
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    if variant == "bare_flask":
        from bare_app import app
    else:
        os.environ["RELAY_BENCH_WITHOUT"] = VARIANTS[variant] or ""
        from relay_bound import app

    def loop(first: int, count: int) -> None:
        statuses: list[str] = []  # this call's own: with --threads, several loops run at once

        def start_response(status: str, _headers: object, _exc: object = None) -> None:
            statuses.append(status)

        for n in range(first, first + count):
            for _chunk in app(_environ(n), start_response):
                pass
        if not statuses[-1].startswith("202"):
            raise SystemExit(f"{variant} answered {statuses[-1]}")

    return loop


def _store_loop() -> Callable[[int, int], None]:
    sys.path.insert(0, str(ROOT))
    from relay.inbound import InboundRequest
    from relay.store import Store

    store = Store(os.environ["RELAY_DATABASE_URL"])
    headers = {"Host": "127.0.0.1:8000", "Content-Type": "application/json", "User-Agent": "wrk"}

    def loop(first: int, count: int) -> None:
        for n in range(first, first + count):
            request = InboundRequest("tilda", _body(n), "application/json", headers, "127.0.0.1")
            store.accept(request, dedup_key=f"tilda:p:b:{n}", status="queued", dedup_window=86400)

    return loop


def child(variant: str, requests: int, threads: int) -> None:
    """Print the best of three passes, in µs of process time a request, as JSON.

    With `threads` above 1, each pass shares its requests out to that many threads calling at once, as
    gunicorn's threads do: the process time then includes what they cost each other (locks, the GIL).
    """
    loop = _store_loop() if variant == "store_accept" else _app_loop(variant)
    loop(0, min(300, requests))  # warm up: imports, first statements, caches
    share = requests // threads
    best = float("inf")
    for index in range(1, 4):
        started = time.process_time()
        if threads == 1:
            loop(index * 10_000_000, requests)
        else:
            running = [
                threading.Thread(target=loop, args=(index * 10_000_000 + thread * 1_000_000, share))
                for thread in range(threads)
            ]
            for thread in running:
                thread.start()
            for thread in running:
                thread.join()
        best = min(best, (time.process_time() - started) / (share * threads))
    print(json.dumps({"variant": variant, "us_per_request": round(best * 1e6, 1)}))


def run_child(variant: str, requests: int, threads: int) -> float:
    work = tempfile.mkdtemp(prefix="bench-parts-")
    env = {
        **os.environ,
        "TILDA_WEBHOOK_TOKEN": TOKEN,
        "RELAY_HOOK_RATE_LIMIT": "1000000 per second",
        "RELAY_DATABASE_URL": f"sqlite:///{work}/relay.db",
        "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="bench-metrics-"),
    }
    output = subprocess.run(
        [sys.executable, __file__, "--child", variant, "--requests", str(requests), "--threads", str(threads)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # relay's log lines
        check=True,
        timeout=600,
    ).stdout
    return float(json.loads(output)["us_per_request"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the figures are their medians")
    parser.add_argument("--requests", type=int, default=3000, help="requests a pass (each child makes three)")
    parser.add_argument(
        "--threads", type=int, default=1, help="threads calling at once in each child (gunicorn's default here: 4)"
    )
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.requests, args.threads)
        return

    names = list(VARIANTS)
    rounds: list[dict[str, float]] = []
    for index in range(args.rounds):
        order = names if index % 2 == 0 else names[::-1]
        rounds.append({name: run_child(name, args.requests, args.threads) for name in order})
    us = {name: statistics.median(r[name] for r in rounds) for name in names}
    bare, relay = us["bare_flask"], us["relay"]
    allowance = bare / TARGET - bare
    summary = {
        "us_per_request": us,
        "parts_us": {
            "store_write": round(relay - us["relay_without_store"], 1),
            "log_line": round(us["relay_without_store"] - us["relay_without_store_log"], 1),
            "rest_over_bare_flask": round(us["relay_without_store_log"] - bare, 1),
            "store_accept_alone": us["store_accept"],
        },
        "ratio_in_process": {
            "relay": round(bare / relay, 3),
            "relay_without_store": round(bare / us["relay_without_store"], 3),
            "relay_without_store_log": round(bare / us["relay_without_store_log"], 3),
        },
        # What relay may add to bare Flask and still be at the target ratio.
        f"allowance_us_at_{TARGET}": round(allowance, 1),
        "relay_adds_us": round(relay - bare, 1),
    }
    print(json.dumps({"threads": args.threads, "summary_median": summary, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
