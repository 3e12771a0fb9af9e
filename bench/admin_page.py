"""The admin page at a store's size after weeks of webhooks: how long each of its API calls takes.

    .venv/bin/python bench/admin_page.py [--deliveries 100000] [--failed 1] [--repeat 5] [--no-browser]

Prints JSON. Fills a fresh SQLite store as `bench/contact_search.py` does (Tilda forms and Shopify orders,
each of a customer of its own), fails `--failed` percent of them for their mapping, serves it with
`gunicorn app:app` (the project's gunicorn.conf.py, no upstream), and times each call the page makes, as
the page makes it: the overview with /readyz, the sources, a page of deliveries (all, failed, one source,
one person), one delivery, its preview, a replay's dry run over the failed ones and a forget's dry run
(median and slowest of `--repeat`). With Chromium, its driver and selenium (requirements-dev.txt) it also
times the page itself: from the sign-in to the overview drawn, and from a click to the failed deliveries
drawn. A diagnostic, without a target: an operator's page should answer in well under a second.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from typing import Any

import httpx
from common import Server
from contact_search import fill

from relay.contacts import delivery_contact_keys
from relay.store import Store, deliveries, delivery_contacts

ADMIN_TOKEN = "bench-admin-token"
FAILED_DETAIL = "rule 'form' matches by email_phone but the payload gives no usable email or phone"


def _fail_some(store: Store, percent: float) -> int:
    """Every (100 / percent)-th delivery failed for its mapping, as the worker leaves one: no calls, and the
    keys of the contacts its payload names."""
    step = max(1, round(100 / percent))
    with store.engine.begin() as connection:
        ids = [row.id for row in connection.execute(deliveries.select().with_only_columns(deliveries.c.id))]
        chosen = ids[::step]
        for start in range(0, len(chosen), 2_000):
            part = chosen[start : start + 2_000]
            connection.execute(
                deliveries.update()
                .where(deliveries.c.id.in_(part))
                .values(status="failed", reason="mapping", detail=FAILED_DETAIL, calls=None)
            )
            connection.execute(delivery_contacts.delete().where(delivery_contacts.c.delivery_id.in_(part)))
    keys = []
    for delivery_id in chosen:
        delivery = store.get(delivery_id)
        assert delivery is not None
        keys += [{"contact": key, "delivery_id": delivery_id} for key in delivery_contact_keys(delivery, "RU")]
    with store.engine.begin() as connection:
        connection.execute(delivery_contacts.insert(), keys)
    return len(chosen)


def _timed_calls(base: str, email: str, repeat: int) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    figures: dict[str, Any] = {}
    with httpx.Client(base_url=base, headers=auth, timeout=120) as client:
        newest_failed = client.get("/admin/api/deliveries", params={"status": "failed", "limit": 1}).json()
        one = newest_failed["deliveries"][0]["id"]
        calls: dict[str, tuple[str, str, dict[str, Any] | None]] = {
            "overview": ("GET", "/admin/api/overview", None),
            "readyz": ("GET", "/readyz", None),
            "sources": ("GET", "/admin/api/sources", None),
            "deliveries": ("GET", "/admin/api/deliveries?limit=50", None),
            "deliveries_failed": ("GET", "/admin/api/deliveries?status=failed&limit=50", None),
            "deliveries_one_source": ("GET", "/admin/api/deliveries?source=tilda&limit=50", None),
            "deliveries_one_person": ("GET", f"/admin/api/deliveries?contact={email}&limit=50", None),
            "one_delivery": ("GET", f"/admin/api/deliveries/{one}", None),
            "one_preview": ("GET", f"/admin/api/deliveries/{one}/preview", None),
            "replay_dry_run_failed": ("POST", "/admin/api/replay?status=failed&dry_run=1", None),
            "forget_dry_run": ("POST", "/admin/api/forget", {"contact": email, "dry_run": True}),
        }
        for name, (method, path, body) in calls.items():
            seconds = []
            for _ in range(repeat):
                started = time.perf_counter()
                answer = client.request(method, path, json=body)
                seconds.append(time.perf_counter() - started)
                if answer.status_code >= 400:
                    raise RuntimeError(f"{name}: HTTP {answer.status_code} {answer.text[:200]}")
            median, slowest = statistics.median(seconds), max(seconds)
            figures[name] = {"median_ms": round(median * 1000, 1), "max_ms": round(slowest * 1000, 1)}
    return figures


def _timed_page(base: str) -> dict[str, Any] | str:
    """Milliseconds from the sign-in to the overview drawn, and from a click on the failed card to the list."""
    missing = [program for program in ("chromium", "chromedriver") if shutil.which(program) is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
    except ImportError:
        missing.append("selenium")
    if missing:
        return f"not measured: {', '.join(missing)} missing"
    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium"))
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(shutil.which("chromedriver"))), options=options)

    def drawn_after(action: Any, css: str) -> float:
        before = driver.execute_script("return document.body.dataset.shown || ''")
        started = time.perf_counter()
        action()
        deadline = started + 120
        while time.perf_counter() < deadline:
            shown = driver.execute_script("return document.body.dataset.shown || ''")
            if shown not in ("", before) and driver.find_elements(By.CSS_SELECTOR, css):
                return round((time.perf_counter() - started) * 1000, 1)
            time.sleep(0.005)
        raise RuntimeError(f"{css} was not drawn within 120 s")

    try:
        driver.get(f"{base}/admin/#/")
        driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
        submit = driver.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]")
        overview = drawn_after(submit.click, ".cards")
        failed = drawn_after(driver.find_element(By.CSS_SELECTOR, "a.card.status-failed").click, "#delivery-rows tr")
        return {"sign_in_to_overview_ms": overview, "failed_card_to_list_ms": failed}
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--failed", type=float, default=1.0, help="percent of the deliveries failed for mapping")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-admin-")
    store = Store(f"sqlite:///{folder}/relay.db")
    store.ensure_schema()
    started = time.perf_counter()
    email, _phone = fill(store, args.deliveries, 0.0)
    failed = _fail_some(store, args.failed)
    store.close()
    figures: dict[str, Any] = {
        "deliveries": args.deliveries,
        "failed": failed,
        "fill_seconds": round(time.perf_counter() - started, 1),
    }
    env = {
        "RELAY_DATABASE_URL": f"sqlite:///{folder}/relay.db",
        "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "RELAY_PHONE_REGION": "RU",
        "RELAY_LOG_LEVEL": "warning",
    }
    with Server.gunicorn("app:app", env) as server:
        figures["api"] = _timed_calls(server.url, email, args.repeat)
        if not args.no_browser:
            figures["page"] = _timed_page(server.url)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
