"""Soak: N webhooks through `python -m relay run` while the upstream fails and relay is SIGKILLed.

    .venv/bin/python bench/soak.py --webhooks 10000 --fail-rate 0.3 --kill-every 3

The sandbox upstream (in this process) fails the given share of calls (500, 503,
429 with Retry-After, dropped connections). Senders behave like providers: they
retry a webhook until relay answers 2xx. Relay is SIGKILLed every few seconds
and started again. At the end it prints JSON: accepted, delivered, lost (accepted
but neither applied upstream nor still kept in the store), how many the deadline
caught still waiting, and how many were applied twice (sent again after a kill
cut off the answer). Bounded: stops after --max-seconds whatever happens.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.sandbox import Sandbox, SandboxServer, default_config  # noqa: E402
from relay.store import Store  # noqa: E402
from relay.testing import RelayProcess, free_port  # noqa: E402

TOKEN = "soak-upstream-token"
HOOK_TOKEN = "soak-hook-token"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--webhooks", type=int, default=10_000)
    parser.add_argument("--fail-rate", type=float, default=0.3)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between SIGKILLs")
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="relay-soak-"))
    sandbox = SandboxServer(Sandbox(default_config([TOKEN]))).start()
    sandbox.sandbox.chaos = {"fail_rate": args.fail_rate, "kinds": ["500", "503", "429", "drop"]}
    database = work / "relay.db"
    env = {
        "RELAY_DATABASE_URL": f"sqlite:///{database}",
        "RELAY_UPSTREAM_URL": sandbox.api_url,
        "RELAY_UPSTREAM_TOKEN": TOKEN,
        "TILDA_WEBHOOK_TOKEN": HOOK_TOKEN,
        "RELAY_LEASE_SECONDS": "3",
        "RELAY_UPSTREAM_TIMEOUT": "1",
        "RELAY_RETRY_SCHEDULE": "0.2,0.5,1",
        "RELAY_MAX_ATTEMPTS": "1000",
        "RELAY_UPSTREAM_RATE": "2000",
        "RELAY_POLL_INTERVAL": "0.05",
        "RELAY_LOG_LEVEL": "warning",
    }
    relay = RelayProcess(env, port=free_port(), log=work / "relay.log").start()
    started = time.monotonic()
    deadline = started + args.max_seconds
    accepted: set[int] = set()
    lock = threading.Lock()
    kills = 0
    stop_killing = threading.Event()

    def send(index: int) -> None:
        body = urlencode({"Email": f"soak{index}@example.com", "Name": f"Lead {index}", "tranid": f"soak:{index}"})
        with httpx.Client(base_url=relay.url, timeout=5) as client:
            while time.monotonic() < deadline:
                try:
                    response = client.post(
                        f"/hooks/tilda?token={HOOK_TOKEN}",
                        content=body,
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                    )
                except httpx.HTTPError:
                    time.sleep(0.2)  # relay is down: the provider retries
                    continue
                if response.status_code in (200, 202):
                    with lock:
                        accepted.add(index)
                    return
                time.sleep(0.2)

    def killer() -> None:
        nonlocal kills
        while not stop_killing.wait(args.kill_every):
            relay.kill()
            kills += 1
            relay.start()

    chaos = threading.Thread(target=killer, daemon=True)
    chaos.start()
    with ThreadPoolExecutor(args.senders) as pool:
        list(pool.map(send, range(args.webhooks)))
    sent_seconds = time.monotonic() - started
    store = Store(f"sqlite:///{database}")
    while time.monotonic() < deadline:
        counts = store.counts()
        if counts.get("delivered", 0) >= len(accepted):
            break
        time.sleep(0.5)
    stop_killing.set()
    chaos.join()
    counts = store.counts()
    relay.stop()
    # Accepted webhooks the deadline caught still waiting in the store (kept, not lost).
    waiting = {
        parse_qs(delivery.body.decode())["Email"][0]
        for status in ("queued", "retrying", "delivering")
        for delivery in store.list_deliveries(status=status, limit=args.webhooks)
    }
    store.close()
    applied = Counter(r["body"]["email"] for r in sandbox.sandbox.requests if r["outcome"] == "ok" and r["body"])
    faults = sum(1 for r in sandbox.sandbox.requests if r["outcome"] != "ok")
    sandbox.stop()
    expected = {f"soak{i}@example.com" for i in accepted}
    report = {
        "webhooks": args.webhooks,
        "accepted": len(accepted),
        "delivered": counts.get("delivered", 0),
        "statuses": counts,
        "still_waiting_at_deadline": len(waiting),
        "lost": len(expected - set(applied) - waiting),  # accepted, never applied, and not in the store
        "applied_twice": sum(1 for email in expected if applied[email] > 1),
        "extra_sends": sum(applied[email] - 1 for email in expected if applied[email] > 1),
        "upstream_faults_injected": faults,
        "kills": kills,
        "seconds_to_accept_all": round(sent_seconds, 1),
        "seconds_total": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report, indent=2))
    return 0 if report["lost"] == 0 and report["delivered"] == report["accepted"] == args.webhooks else 1


if __name__ == "__main__":
    sys.exit(main())
