"""A person's deliveries, found by e-mail or phone and forgotten on request, through the real app and worker.

Tilda forms and a Shopify checkout go through the app to the sandbox upstream on loopback, on SQLite and on
PostgreSQL: the admin API and the command line find a person's deliveries by any spelling of their address
or phone (in the calls of a delivered one, in the payload of one not yet translated or ignored by its
mapping), and forget them with their attempts; a longer address that contains theirs is someone else.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest

from relay.contacts import forget, parse_contact

from .conftest import (
    MAPPINGS,
    SECRETS,
    captured_log_lines,
    drain,
    hand_driven,
    post_shopify,
    quick_retry_settings,
    relay_command,
)

ADMIN = {"Authorization": f"Bearer {SECRETS['RELAY_ADMIN_TOKEN']}"}
IVAN = {"Name": "Иван Петров", "Email": "Ivan.Petrov@Example.COM", "Phone": "8 (912) 345-67-89"}


@pytest.fixture(params=["sqlite", "postgresql"])
def relay(request, tmp_path, sandbox):  # type: ignore[no-untyped-def]
    database = {} if request.param == "sqlite" else {"RELAY_DATABASE_URL": request.getfixturevalue("pg_url")}
    settings = quick_retry_settings(tmp_path, sandbox, RELAY_PHONE_REGION="RU", RELAY_LOG_LEVEL="info", **database)
    for client, store, worker in hand_driven(settings):
        yield client, store, worker, settings


def _tilda(client, form: dict[str, str], tranid: str) -> str:  # type: ignore[no-untyped-def]
    response = client.post(
        f"/hooks/tilda?token={SECRETS['TILDA_WEBHOOK_TOKEN']}", data={**form, "tranid": tranid, "formid": "form1"}
    )
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["id"])


@pytest.fixture
def stored(relay):  # type: ignore[no-untyped-def]
    """Ivan's form delivered, his Shopify checkout delivered, a form of his that its mapping ignored, another
    not yet tried; Maria's form, and a form whose address contains Ivan's: ids by name."""
    client, store, worker, _ = relay
    ids = {"ivan_delivered": _tilda(client, IVAN, "1:1")}
    assert drain(store, worker, ids["ivan_delivered"]) == "delivered"
    maria = {"Email": "maria@example.com", "Phone": "+7 912 000-11-22"}
    ids["maria"] = _tilda(client, maria, "2:1")
    ids["longer_address"] = _tilda(client, {"Email": "xivan.petrov@example.com"}, "3:1")
    for name in ("maria", "longer_address"):
        assert drain(store, worker, ids[name]) == "delivered"
    checkout = json.loads((MAPPINGS / "examples/shopify/checkouts-create.json").read_text(encoding="utf-8"))
    checkout.update({"email": "IVAN.PETROV@example.com", "phone": None})
    ids["ivan_checkout"] = post_shopify(client, "checkouts/create", checkout)
    assert drain(store, worker, ids["ivan_checkout"]) == "delivered"
    # What the worker does with a delivery its mapping ignores (one replayed after its rule became `ignore`):
    # delivered with no calls, found by its payload.
    ids["ivan_ignored"] = _tilda(client, IVAN, "5:1")
    [(claimed, token)] = store.claim(owner=worker.owner, limit=1, lease_seconds=30)
    assert store.finish(claimed.id, token, status="delivered", reason="ignored", detail="a rule's ignore", calls=[])
    ids["ivan_queued"] = _tilda(client, {**IVAN, "Email": " ivan.petrov@example.com"}, "4:1")
    return ids


def _found(client, contact: str) -> set[str]:  # type: ignore[no-untyped-def]
    response = client.get(f"/admin/api/deliveries?contact={quote(contact)}", headers=ADMIN)
    assert response.status_code == 200, response.get_json()
    return {row["id"] for row in response.get_json()["deliveries"]}


def test_a_persons_deliveries_are_found_by_any_spelling_of_their_email_or_phone(relay, stored):
    client, store, _, _ = relay
    ivan = {stored[name] for name in ("ivan_delivered", "ivan_checkout", "ivan_ignored", "ivan_queued")}
    assert store.get(stored["ivan_queued"]).calls is None  # found by its payload
    assert _found(client, "ivan.petrov@EXAMPLE.com") == ivan
    # by phone: the Shopify checkout gave none
    assert _found(client, "+7 912 345 67 89") == ivan - {stored["ivan_checkout"]}
    assert _found(client, "89123456789") == ivan - {stored["ivan_checkout"]}
    assert _found(client, "maria@example.com") == {stored["maria"]}
    assert _found(client, "nobody@example.com") == set()
    response = client.get("/admin/api/deliveries?contact=ivan.petrov%40example.com&status=queued", headers=ADMIN)
    assert [row["id"] for row in response.get_json()["deliveries"]] == [stored["ivan_queued"]]
    paged = client.get("/admin/api/deliveries?contact=ivan.petrov%40example.com&limit=2", headers=ADMIN).get_json()
    assert len(paged["deliveries"]) == 2 and paged["next"] == paged["deliveries"][-1]["id"]
    rest = client.get(
        f"/admin/api/deliveries?contact=ivan.petrov%40example.com&limit=2&before={paged['next']}", headers=ADMIN
    )
    assert {row["id"] for row in rest.get_json()["deliveries"] + paged["deliveries"]} == ivan
    refused = client.get("/admin/api/deliveries?contact=hello", headers=ADMIN)
    assert refused.status_code == 400
    assert "neither an e-mail address nor a phone number" in refused.get_json()["detail"]


def test_forgetting_a_person_deletes_their_deliveries_with_their_attempts_and_no_log_line_names_them(relay, stored):
    client, store, _, _ = relay
    ivan = {stored[name] for name in ("ivan_delivered", "ivan_checkout", "ivan_ignored", "ivan_queued")}
    assert store.attempts_of(stored["ivan_delivered"])
    dry = client.post("/admin/api/forget", json={"contact": "Ivan.Petrov@example.com", "dry_run": True}, headers=ADMIN)
    assert dry.status_code == 200
    assert dry.get_json()["would_forget"] == 4 and set(dry.get_json()["ids"]) == ivan
    assert all(store.get(delivery_id) is not None for delivery_id in ivan)
    with captured_log_lines() as lines:
        done = client.post("/admin/api/forget", json={"contact": "Ivan.Petrov@example.com"}, headers=ADMIN)
    assert done.status_code == 200, done.get_json()
    answer = done.get_json()
    assert answer["forgotten"] == 4 and set(answer["ids"]) == ivan and answer["being_delivered"] == []
    assert all(store.get(delivery_id) is None for delivery_id in ivan)
    assert store.attempts_of(stored["ivan_delivered"]) == []
    assert {stored["maria"], stored["longer_address"]} <= {d.id for d in store.list_deliveries(limit=10)}
    [line] = [json.loads(line) for line in lines if "deliveries forgotten" in line]
    assert line["count"] == 4
    assert not any("ivan" in line.lower() or "9123456789" in line for line in lines)
    # The same webhook again: its key stays, nothing of it is stored again.
    again = client.post(
        f"/hooks/tilda?token={SECRETS['TILDA_WEBHOOK_TOKEN']}", data={**IVAN, "tranid": "1:1", "formid": "form1"}
    )
    assert again.status_code == 200 and again.get_json()["status"] == "duplicate"
    assert _found(client, "ivan.petrov@example.com") == set()
    assert client.post("/admin/api/forget", json={"contact": "no one"}, headers=ADMIN).status_code == 400
    quoted = client.post("/admin/api/forget", json={"contact": "maria@example.com", "dry_run": "false"}, headers=ADMIN)
    assert quoted.status_code == 400 and store.get(stored["maria"]) is not None
    assert client.post("/admin/api/forget", data="ivan", headers=ADMIN).status_code == 400


def test_a_delivery_being_sent_is_left_and_named(relay, stored):
    client, store, worker, _ = relay
    [(claimed, _token)] = store.claim(owner=worker.owner, limit=1, lease_seconds=30)
    assert claimed.id == stored["ivan_queued"]
    answer = client.post("/admin/api/forget", json={"contact": "+79123456789"}, headers=ADMIN).get_json()
    assert answer["being_delivered"] == [stored["ivan_queued"]]
    assert set(answer["ids"]) == {stored["ivan_delivered"], stored["ivan_ignored"]}
    assert store.get(stored["ivan_queued"]) is not None


def test_the_command_line_finds_and_forgets(relay, stored):
    _, _, _, settings = relay
    env = {"RELAY_DATABASE_URL": settings.database_url, "RELAY_PHONE_REGION": "RU"}
    listed = relay_command("deliveries", "--contact", "8 912 345-67-89", env=env)
    assert listed.returncode == 0, listed.stderr
    assert {line.split()[0] for line in listed.stdout.splitlines()} == {
        stored["ivan_delivered"],
        stored["ivan_ignored"],
        stored["ivan_queued"],
    }
    dry = relay_command("forget", "IVAN.PETROV@example.com", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert len(dry.stdout.split()) == 4 and "would forget 4 deliveries naming ivan.petrov@example.com" in dry.stderr
    done = relay_command("forget", "IVAN.PETROV@example.com", env=env)
    assert done.returncode == 0, done.stderr
    assert "forgot 4 deliveries naming ivan.petrov@example.com, with their attempts" in done.stderr
    assert relay_command("deliveries", "--contact", "ivan.petrov@example.com", env=env).stdout == ""
    wrong = relay_command("forget", "ivan", env=env)
    assert wrong.returncode == 1 and "'ivan' is neither an e-mail address nor a phone number" in wrong.stderr


@pytest.mark.parametrize(
    ("typed", "kind", "value"),
    [
        (" Ivan.Petrov@Example.COM ", "email", "ivan.petrov@example.com"),
        ("8 (912) 345-67-89", "phone", "+79123456789"),
        ("+1 613-555-0143", "phone", "+16135550143"),
    ],
)
def test_a_contact_is_read_as_the_mappings_write_it(typed, kind, value):
    contact = parse_contact(typed, "RU")
    assert (contact.kind, contact.value) == (kind, value)


@pytest.mark.parametrize("typed", ["", "ivan@", "@example.com", "hello", "12"])
def test_what_is_no_contact_is_refused(typed):
    with pytest.raises(ValueError, match="e-mail address|phone number"):
        parse_contact(typed, "RU")


def test_forgetting_while_the_worker_delivers_leaves_nothing_of_the_person(relay):
    """A worker of four threads delivers forty forms of one person while `forget` runs again and again: each
    form is deleted whatever the moment (queued, or delivered), none while a thread sends it, no attempt of one
    is left behind, and the worker meets no error of its own."""
    client, store, worker, _ = relay
    ids = {_tilda(client, IVAN, f"{n}:9") for n in range(40)}
    with captured_log_lines() as lines:
        worker.start()
        try:
            deadline = time.monotonic() + 30
            forgotten: set[str] = set()
            while forgotten != ids and time.monotonic() < deadline:
                forgotten |= set(forget(store, parse_contact("ivan.petrov@example.com", "RU")).ids)
                time.sleep(0.01)
        finally:
            worker.stop()
    assert forgotten == ids
    assert all(store.get(delivery_id) is None and store.attempts_of(delivery_id) == [] for delivery_id in ids)
    assert not [line for line in lines if '"level": "error"' in line or "Traceback" in line]


def _redact(client, email: str, phone: str) -> str:  # type: ignore[no-untyped-def]
    """Shopify's customers/redact for this customer: the delivery's id."""
    request = {
        "shop_id": 954889,
        "shop_domain": "relay-example.myshopify.com",
        "customer": {"id": 191167, "email": email, "phone": phone},
        "orders_to_redact": [299938],
    }
    return post_shopify(client, "customers/redact", request)


def _process(store, worker, delivery_id: str, later: float = 0) -> str:  # type: ignore[no-untyped-def]
    """This delivery processed by the worker, the others it claimed with it handed back untouched."""
    claimed = store.claim(owner=worker.owner, limit=20, lease_seconds=30, now=time.time() + later)
    for delivery, token in claimed:
        if delivery.id != delivery_id:
            assert store.release(delivery.id, token)
    [(delivery, token)] = [(delivery, token) for delivery, token in claimed if delivery.id == delivery_id]
    return str(worker.process(delivery, token))


def test_a_shopify_erasure_request_forgets_the_customer_from_every_source_and_keeps_none_of_itself(relay, stored):
    client, store, worker, _ = relay
    ivan = {stored[name] for name in ("ivan_delivered", "ivan_checkout", "ivan_ignored", "ivan_queued")}
    request_id = _redact(client, "IVAN.PETROV@example.com", "+7 912 345-67-89")
    assert _process(store, worker, request_id) == "delivered"
    assert all(store.get(delivery_id) is None for delivery_id in ivan)  # Tilda's forms as much as Shopify's
    assert {stored["maria"], stored["longer_address"]} <= {d.id for d in store.list_deliveries(limit=20)}
    done = store.get(request_id)
    assert done.detail == "forgot 4 deliveries naming the person (rule 'customer_redact')"
    assert (done.body, done.headers, done.client_ip) == (b"", {}, None)
    assert "ivan" not in json.dumps(client.get(f"/admin/api/deliveries/{request_id}", headers=ADMIN).get_json())


def test_an_erasure_request_waits_for_a_delivery_being_sent_and_forgets_it_next(relay, stored):
    client, store, worker, _ = relay
    [(claimed, token)] = store.claim(owner="another-worker", limit=1, lease_seconds=30)
    assert claimed.id == stored["ivan_queued"]
    request_id = _redact(client, "ivan.petrov@example.com", "")
    assert _process(store, worker, request_id) == "retrying"
    waiting = store.get(request_id)
    assert "1 being sent, forgotten next" in waiting.detail and waiting.body != b""
    assert store.get(stored["ivan_delivered"]) is None and store.get(stored["ivan_queued"]) is not None
    assert store.release(claimed.id, token)  # the other worker is done with it
    assert _process(store, worker, request_id, later=120) == "delivered"
    assert store.get(stored["ivan_queued"]) is None and store.get(request_id).body == b""
