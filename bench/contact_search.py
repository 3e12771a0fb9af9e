"""Finding one person's deliveries in a full store, and forgetting them: seconds per search.

    .venv/bin/python bench/contact_search.py [--deliveries 100000] [--untranslated 2] [--housekeeping]
        [--database-url URL]

Prints JSON. Fills a fresh store (a temporary SQLite file unless `--database-url` names another; the
tables must not exist there yet) with Tilda forms and Shopify orders as the worker leaves them, each of
a customer of its own, with their translated calls; `--untranslated` percent of them (2) wait untranslated
(queued; all of them held while no upstream is set), whose payloads the search reads. Then times
`relay deliveries --contact`'s search for an address that is there, a phone, and one that is not, and
`relay forget` of one customer. With `--housekeeping`, the worker's housekeeping first gives the untranslated
ones that have waited over five minutes (three in four: they arrived over the past 17 minutes) their payload's
keys, as it does once a minute (`Worker.key_deliveries`, timed), and the searches find those by key. A
diagnostic, without a target: an operator's question should be answered in seconds, not minutes, at the
store's size after 30 days of webhooks.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.contacts import contact_keys, find_deliveries, forget, parse_contact  # noqa: E402
from relay.inbound import InboundRequest  # noqa: E402
from relay.mapping.loader import load_sources  # noqa: E402
from relay.mapping.translate import TranslateContext  # noqa: E402
from relay.pipeline import translate_request  # noqa: E402
from relay.settings import Settings  # noqa: E402
from relay.store import Store, deliveries, delivery_contacts, new_id  # noqa: E402
from relay.worker import Worker  # noqa: E402

EXAMPLES = ROOT / "mappings" / "examples"
BATCH = 2_000


def _requests() -> list[tuple[InboundRequest, str, str]]:
    """(a request, the e-mail it carries, the phone), Shopify's order and Tilda's form in E.164-able shapes."""
    order = json.loads((EXAMPLES / "shopify" / "orders-paid.json").read_text(encoding="utf-8"))
    form = (EXAMPLES / "tilda" / "form-russian-phone.txt").read_text(encoding="utf-8").strip()
    return [
        (
            InboundRequest(
                "shopify",
                json.dumps(order).encode(),
                "application/json",
                {"X-Shopify-Topic": "orders/paid", "X-Shopify-Webhook-Id": "w"},
            ),
            order["email"],
            "",
        ),
        (InboundRequest("tilda", form.encode(), "application/x-www-form-urlencoded"), "Ivan.Petrov%40Example.COM", ""),
    ]


def fill(store: Store, count: int, untranslated_percent: float) -> tuple[str, str]:
    """`count` deliveries, each of its own customer; (the e-mail of one in the middle, its phone)."""
    sources = load_sources(ROOT / "mappings")
    context = TranslateContext(phone_region="RU")
    templates = _requests()
    now = time.time() - count / 100  # a hundred a second, arriving over the past hours
    rows: list[dict[str, object]] = []
    keys: list[dict[str, object]] = []
    middle = ("", "")
    for number in range(count):
        request, email, _ = templates[number % len(templates)]
        own = f"customer{number}@example{number % 97}.com"
        phone = f"+7912{number:07d}"
        body = request.body.replace(email.encode(), own.replace("@", "%40" if "%40" in email else "@").encode())
        if request.source == "tilda":
            body = body.replace(b"8+(912)+345-67-89", phone.replace("+", "%2B").encode())
        else:
            body = body.replace(b'"phone": null', f'"phone": "{phone}"'.encode(), 1)
        request = replace(request, body=body)
        untranslated = (number * untranslated_percent) % 100 < untranslated_percent
        calls = None
        at = now + number / 100
        delivery_id = new_id(at)
        if not untranslated:
            translation = translate_request(sources[request.source], request, context)
            translated = [call.to_dict() for call in translation.calls]
            calls = json.dumps(translated, ensure_ascii=False)
            keys += [{"contact": key, "delivery_id": delivery_id} for key in contact_keys(translated, "RU")]
        rows.append(
            {
                "id": delivery_id,
                "source": request.source,
                "received_at": at,
                "status": "queued" if untranslated else "delivered",
                "body": request.body,
                "content_type": request.content_type,
                "headers": json.dumps(request.headers),
                "dedup_key": f"bench-{number}",
                "attempts": 0 if untranslated else 1,
                "calls_done": 0,
                "cycle_started_at": at,
                "next_attempt_at": at,
                "calls": calls,
                "contacts_indexed": None if untranslated else 1,
                "updated_at": at,
            }
        )
        if number == count // 2:
            middle = (own, phone)
        if len(rows) == BATCH:
            _insert(store, rows, keys)
    _insert(store, rows, keys)
    return middle


def _insert(store: Store, rows: list[dict[str, object]], keys: list[dict[str, object]]) -> None:
    if rows:
        with store.engine.begin() as connection:
            connection.execute(deliveries.insert(), rows)
            if keys:
                connection.execute(delivery_contacts.insert(), keys)
        rows.clear()
        keys.clear()


def timed(function, *args, **kwargs):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, round(time.perf_counter() - started, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--untranslated", type=float, default=2.0, help="percent of the deliveries without calls")
    parser.add_argument("--housekeeping", action="store_true", help="key the long-waiting ones first, as the worker")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-contacts-")
    store = Store(args.database_url or f"sqlite:///{folder}/relay.db")
    store.ensure_schema()
    (email, phone), fill_seconds = timed(fill, store, args.deliveries, args.untranslated)
    figures: dict[str, object] = {
        "deliveries": args.deliveries,
        "untranslated_percent": args.untranslated,
        "fill_seconds": fill_seconds,
    }
    if args.housekeeping:
        settings = Settings.from_env({"RELAY_MAPPINGS_DIR": str(ROOT / "mappings"), "RELAY_PHONE_REGION": "RU"})
        keyed, seconds = timed(Worker(settings, store=store).key_deliveries)
        figures["housekeeping"] = {"keyed": keyed, "seconds": seconds}
    for name, text in (("email", email.upper()), ("phone", phone), ("absent", "nobody@example.org")):
        found, seconds = timed(find_deliveries, store, parse_contact(text, "RU"), limit=50)
        figures[f"find_{name}"] = {"found": len(found), "seconds": seconds}
    forgotten, seconds = timed(forget, store, parse_contact(email, "RU"))
    figures["forget"] = {"forgotten": len(forgotten.ids), "seconds": seconds}
    if store.database_file:
        figures["store_mb"] = round(Path(store.database_file).stat().st_size / 2**20, 1)
    store.close()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
