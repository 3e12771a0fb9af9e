"""`relay copy-store --to URL`: the move from the embedded SQLite store to PostgreSQL (or another SQLite file).

A store filled through the real app and worker (delivered, failed and waiting deliveries with their attempts,
de-duplication, once and latest keys) is copied by the command in its own process; relay started on the new
store then answers a provider's retry `duplicate`, does not count an order twice, replays what failed, and
records new attempts after the copied ones.
"""

from __future__ import annotations

import json

import pytest

from relay.store import Store
from relay.web import create_app
from relay.worker import Worker

from .conftest import MAPPINGS, SECRETS, drain, make_settings, post_shopify, quick_retry_settings, relay_command

TILDA = "/hooks/tilda?token=" + SECRETS["TILDA_WEBHOOK_TOKEN"]
FORM = "application/x-www-form-urlencoded"


def _paid_order() -> dict:  # type: ignore[type-arg]
    return json.loads((MAPPINGS / "examples/shopify/orders-paid-live.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@pytest.fixture(params=["sqlite to postgresql", "postgresql to sqlite", "sqlite to sqlite"])
def move(request, tmp_path) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(the store relay uses, the one it moves to)."""
    first, moved = f"sqlite:///{tmp_path / 'first.db'}", f"sqlite:///{tmp_path / 'moved.db'}"
    if request.param == "sqlite to sqlite":
        return first, moved
    postgresql = str(request.getfixturevalue("pg_url"))
    return (first, postgresql) if request.param == "sqlite to postgresql" else (postgresql, moved)


def test_a_copied_store_keeps_its_deliveries_keys_and_attempts(tmp_path, sandbox, move):
    first, target = move
    settings = quick_retry_settings(tmp_path, sandbox, RELAY_DATABASE_URL=first)
    app = create_app(settings)
    client, store = app.test_client(), app.extensions["relay"]["store"]
    worker = Worker(settings, store=store)
    try:
        lead = client.post(TILDA, data="Email=lead@example.com&tranid=9:1", content_type=FORM)
        assert drain(store, worker, lead.get_json()["id"]) == "delivered"
        order = post_shopify(client, "orders/paid", _paid_order())
        assert drain(store, worker, order) == "delivered"
        broken = client.post(TILDA, data="Name=Nobody&tranid=9:2", content_type=FORM)  # no e-mail or phone
        assert drain(store, worker, broken.get_json()["id"]) == "failed"
        waiting = post_shopify(client, "checkouts/create", {"token": "t-1", "email": "c@example.com"})
    finally:
        worker.stop()
        store.close()
    env = {"PATH": "/usr/bin:/bin", "RELAY_DATABASE_URL": settings.database_url}
    copied = relay_command("copy-store", "--to", target, env=env)
    assert copied.returncode == 0, copied.stderr
    counts = json.loads(copied.stdout)["copied"]
    assert counts["deliveries"] == 4 and counts["dedup_keys"] == 4 and counts["once_keys"] == 1
    assert counts["latest_keys"] == 1 and counts["attempts"] >= 3
    again = relay_command("copy-store", "--to", target, env=env)
    assert again.returncode == 1 and "it already holds 4 deliveries; copy into a store that holds none" in again.stderr

    moved = quick_retry_settings(tmp_path, sandbox, RELAY_DATABASE_URL=target)
    app = create_app(moved)
    client, store = app.test_client(), app.extensions["relay"]["store"]
    worker = Worker(moved, store=store)
    try:
        assert store.get(waiting) is not None and store.get(waiting).status == "queued"  # type: ignore[union-attr]
        retry = client.post(TILDA, data="Email=lead@example.com&tranid=9:1", content_type=FORM)
        assert retry.get_json() == {"status": "duplicate", "id": lead.get_json()["id"]}
        # The same order paid again, from a new webhook: its once key came along, so it is not counted twice.
        recount = post_shopify(client, "orders/paid", {**_paid_order(), "note": "sent again"})
        assert drain(store, worker, recount) == "delivered"
        profiles = [p for p in sandbox.sandbox.profiles.values() if "orders_count" in p.fields]
        assert [p.fields["orders_count"] for p in profiles] == [1]
        assert "passed over" in (store.get(recount).detail or "")  # type: ignore[union-attr]
        # Its call was recorded after the copied ones: PostgreSQL's sequence of attempt ids was moved on (else
        # the first new attempt takes id 1, which a copied one has).
        assert store.attempts_of(recount)
        # What failed for its mapping came along, and is replayed.
        assert store.replay(broken.get_json()["id"])
        assert drain(store, worker, broken.get_json()["id"]) == "failed"
    finally:
        worker.stop()
        store.close()


def test_copying_into_the_store_in_use_is_refused(tmp_path):
    settings = make_settings(tmp_path)
    Store(settings.database_url).close()
    env = {"PATH": "/usr/bin:/bin", "RELAY_DATABASE_URL": settings.database_url}
    same = relay_command("copy-store", "--to", settings.database_url, env=env)
    assert same.returncode == 1 and "--to names the store relay uses now" in same.stderr
    garbled = relay_command("copy-store", "--to", "postgres ql://user:s3cret@db/relay", env=env)
    assert garbled.returncode == 1 and "--to is no database URL" in garbled.stderr and "s3cret" not in garbled.stderr
