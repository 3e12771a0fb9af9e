"""A person's deliveries, found by e-mail or phone and forgotten on request, through the real app and worker.

Tilda forms and a Shopify checkout go through the app to the sandbox upstream on loopback, on SQLite and on
PostgreSQL: the admin API and the command line find a person's deliveries by any spelling of their address
or phone (in the calls of a delivered one, in the payload of one not yet translated or ignored by its
mapping), and forget them with their attempts; a longer address that contains theirs is someone else.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import replace
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from relay.contacts import contact_keys, find_deliveries, forget, names_contact, parse_contact
from relay.inbound import InboundRequest
from relay.mapping.transforms import TransformContext, apply_transform
from relay.store import Store, contact_key, deliveries, delivery_contacts, new_id
from relay.worker import KEY_WAITING_AFTER, Worker

from .conftest import (
    MAPPINGS,
    SECRETS,
    captured_log_lines,
    counting_steps,
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


def _keys(store, delivery_id: str) -> tuple[int | None, set[str]]:  # type: ignore[no-untyped-def]
    """What the store keeps of a delivery for finding it by a person: its mark, and its contacts' keys."""
    with store.engine.connect() as connection:
        mark = connection.execute(
            select(deliveries.c.contacts_indexed).where(deliveries.c.id == delivery_id)
        ).scalar_one_or_none()
        keys = connection.execute(
            select(delivery_contacts.c.contact).where(delivery_contacts.c.delivery_id == delivery_id)
        ).scalars()
        return mark, set(keys)


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


IVAN_EMAIL, IVAN_PHONE = (parse_contact(typed, "RU").key for typed in ("ivan.petrov@example.com", "+79123456789"))


def test_the_worker_keeps_the_keys_of_the_contacts_a_delivery_names(relay, stored):
    """A person's deliveries are found by key, not by reading every delivery: the worker keeps a key for each
    e-mail and phone a delivery's calls hold, or, for one its mapping ignored, its payload; one not translated
    yet, or stored before relay kept keys, is found by reading it, as before."""
    client, store, worker, _ = relay
    assert _keys(store, stored["ivan_delivered"]) == (1, {IVAN_EMAIL, IVAN_PHONE})
    assert _keys(store, stored["ivan_checkout"]) == (1, {IVAN_EMAIL})
    assert _keys(store, stored["maria"]) == (1, {parse_contact("maria@example.com", "RU").key, _key("+79120001122")})
    assert _keys(store, stored["ivan_queued"]) == (None, set())
    assert _keys(store, stored["ivan_ignored"]) == (None, set())  # settled by hand, as an older relay left it
    # A completed checkout: its mapping ignores it, the worker keeps its payload's contacts.
    checkout = json.loads((MAPPINGS / "examples/shopify/checkouts-create.json").read_text(encoding="utf-8"))
    checkout.update({"id": 777, "token": "t777", "email": "Ivan.Petrov@Example.com", "phone": "8 912 345 67 89"})
    checkout["completed_at"] = "2026-11-30T10:00:00+03:00"
    completed = post_shopify(client, "checkouts/update", checkout)
    assert _process(store, worker, completed, later=3600) == "delivered" and store.get(completed).reason == "ignored"
    mark, keys = _keys(store, completed)
    assert mark == 1 and {IVAN_EMAIL, IVAN_PHONE} <= keys
    # One stored before relay kept keys: found by reading its calls.
    with store.engine.begin() as connection:
        connection.execute(
            update(deliveries).where(deliveries.c.id == stored["ivan_delivered"]).values(contacts_indexed=None)
        )
        connection.execute(
            delivery_contacts.delete().where(delivery_contacts.c.delivery_id == stored["ivan_delivered"])
        )
    ivan = {stored[name] for name in ("ivan_delivered", "ivan_checkout", "ivan_ignored", "ivan_queued")}
    assert _found(client, "IVAN.PETROV@example.com") == ivan | {completed}
    assert _found(client, "8 912 345-67-89") == ivan - {stored["ivan_checkout"]} | {completed}


def test_the_deliveries_an_older_relay_settled_get_their_keys_from_the_worker(relay, stored, tmp_path):
    """Settled before relay kept keys: the worker's housekeeping gives them theirs (with RELAY_KEEP_DELIVERED=0
    too, when it purges nothing), a batch at a time, and leaves one that changed since it read it."""
    client, store, _, settings = relay
    with store.engine.begin() as connection:
        connection.execute(
            update(deliveries).where(deliveries.c.id == stored["ivan_delivered"]).values(contacts_indexed=None)
        )
        connection.execute(
            delivery_contacts.delete().where(delivery_contacts.c.delivery_id == stored["ivan_delivered"])
        )
    older = [stored["ivan_delivered"], stored["ivan_ignored"]]
    waiting_since = time.time() - KEY_WAITING_AFTER
    assert [delivery.id for delivery in store.unkeyed(waiting_before=waiting_since)] == sorted(older)
    # One read, then changed before its keys are kept: left for the next round.
    [first, _] = store.unkeyed(waiting_before=waiting_since)
    assert store.keep_contact_keys({first.id: (first.updated_at - 1, {IVAN_EMAIL})}) == 0
    assert _keys(store, first.id) == (None, set())
    keeping = Worker(replace(settings, keep_delivered=0, upstream_url=None), store=store)
    keeping.start()
    try:
        deadline = time.monotonic() + 10
        while store.unkeyed(waiting_before=waiting_since) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        keeping.stop()
    assert _keys(store, stored["ivan_delivered"]) == (1, {IVAN_EMAIL, IVAN_PHONE})  # its calls'
    assert _keys(store, stored["ivan_ignored"]) == (1, {IVAN_EMAIL, IVAN_PHONE})  # its payload's
    assert keeping.key_deliveries() == 0
    ivan = {stored[name] for name in ("ivan_delivered", "ivan_checkout", "ivan_ignored", "ivan_queued")}
    assert _found(client, "ivan.petrov@example.com") == ivan
    assert _keys(store, stored["ivan_queued"]) == (None, set())  # received a moment ago: read, and sent soon


def _waited_for_minutes(store, delivery_id: str) -> None:  # type: ignore[no-untyped-def]
    """As if the delivery had waited untranslated since its receipt for longer than KEY_WAITING_AFTER."""
    long_ago = time.time() - KEY_WAITING_AFTER - 1
    with store.engine.begin() as connection:
        connection.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(cycle_started_at=long_ago))


def test_a_delivery_waiting_untranslated_for_minutes_gets_its_payloads_keys(relay, stored):
    """Held while no upstream is set, or waiting out an outage: after KEY_WAITING_AFTER the housekeeping keys
    it from its payload, which is what a search reads of it, so that a search does not read every one of
    them; the worker adds its calls' keys when it sends it. One received a moment ago is left to the worker."""
    client, store, worker, settings = relay
    waiting = stored["ivan_queued"]
    _waited_for_minutes(store, waiting)
    just_now = _tilda(client, {"Email": "olga@example.com", "Phone": "+7 912 555-44-33"}, "6:1")
    housekeeping = Worker(replace(settings, keep_delivered=0), store=store)
    assert housekeeping.key_deliveries() == 2  # with the one the fixture settled as an older relay left it
    assert _keys(store, waiting) == (1, {IVAN_EMAIL, IVAN_PHONE})
    assert _keys(store, just_now) == (None, set())
    ivan = {stored[name] for name in ("ivan_delivered", "ivan_checkout", "ivan_ignored", "ivan_queued")}
    assert _found(client, "Ivan.Petrov@example.com") == ivan
    assert _found(client, "8 912 345 67 89") == ivan - {stored["ivan_checkout"]}
    # Sent later: the calls' keys join the payload's (the same person here), and nothing fails on the ones kept.
    assert drain(store, worker, waiting) == "delivered"
    assert _keys(store, waiting) == (1, {IVAN_EMAIL, IVAN_PHONE})
    assert _found(client, "ivan.petrov@example.com") == ivan
    assert housekeeping.key_deliveries() == 0


def test_a_replay_drops_the_keys_and_forgetting_and_purging_delete_them(relay, stored):
    client, store, worker, _ = relay
    [(claimed, token)] = store.claim(owner=worker.owner, limit=1, lease_seconds=30)
    assert claimed.id == stored["ivan_queued"]
    calls = [{"method": "profiles/update", "body": {"matching": "email", "email": "ivan.petrov@example.com"}}]
    assert store.finish(claimed.id, token, status="failed", reason="rejected", calls=calls, contacts=["k1", "k2"])
    assert _keys(store, claimed.id) == (1, {"k1", "k2"})
    assert store.replay(claimed.id)
    assert _keys(store, claimed.id) == (None, set())  # its calls went: translated again, it is read till then
    assert stored["ivan_queued"] in _found(client, "ivan.petrov@example.com")
    assert drain(store, worker, claimed.id) == "delivered"
    assert _keys(store, claimed.id) == (1, {IVAN_EMAIL, IVAN_PHONE})
    forget(store, parse_contact("maria@example.com", "RU"))
    assert _keys(store, stored["maria"]) == (None, set())
    store.purge(received_before=time.time() + 60)
    with store.engine.connect() as connection:
        assert connection.execute(select(delivery_contacts)).all() == []


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


def _key(typed: str) -> str:
    return parse_contact(typed, "RU").key


SPELLINGS = [
    "Ivan.Petrov@Example.COM",
    " ivan.petrov@example.com",
    "xivan.petrov@example.com",
    "ivan.petrov@example.co",
    "8 (912) 345-67-89",
    "+7 912 345 67 89",
    "+７ ９１２ ３４５-６７-８９",  # a phone to the phone transform, whose digits no search's look finds
    "9123456789",
    "+7 912 345 67 80",
    "34567890",
    "ivan.petrov",
    "",
]
VALUES = st.one_of(
    st.sampled_from(SPELLINGS),
    st.integers(min_value=-(10**15), max_value=10**15),
    st.sampled_from([79123456789, 89123456789, 79123456789.0, True, None, 3456789]),
    st.text(alphabet="0123456789+-() @.ivanIVAN", max_size=20),
)
PAYLOADS = st.recursive(
    VALUES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=12,
)
RU = TransformContext(phone_region="RU")
LOOKED_FOR = [parse_contact(typed, "RU") for typed in ("ivan.petrov@example.com", "+79123456789", "+79123456780")]


def _named_value_by_value(data, contact) -> bool:  # type: ignore[no-untyped-def]
    """names_contact as it was before its look at all the digits at once: every value read on its own."""
    if isinstance(data, dict):
        return any(_named_value_by_value(value, contact) for value in data.values())
    if isinstance(data, list):
        return any(_named_value_by_value(value, contact) for value in data)
    if contact.kind == "email":
        return isinstance(data, str) and "@" in data and apply_transform("email", None, data, RU) == contact.value
    if isinstance(data, bool) or not isinstance(data, (str, int, float)):
        return False
    if contact.value[-7:] not in re.sub(r"\D", "", str(data)):
        return False
    return apply_transform("phone", None, data, RU) == contact.value


@settings(max_examples=300, deadline=None)
@given(PAYLOADS)
def test_the_keys_are_those_of_the_contacts_a_search_finds(payload):
    """The keys the worker keeps for a delivery are exactly those of the contacts a search finds in it by
    reading it, value by value: a delivery found by key is one reading would find, and none reading finds is
    missed."""
    keys = contact_keys(payload, "RU")
    for contact in LOOKED_FOR:
        named = _named_value_by_value(payload, contact)
        assert names_contact(payload, contact) == named, contact
        assert (contact.key in keys) == named, contact


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


def test_an_erasure_request_that_waited_for_minutes_keeps_no_key_of_the_person(relay, stored):
    """Waiting, it got its payload's keys from the housekeeping like any delivery; done, it keeps none."""
    client, store, worker, settings = relay
    request_id = _redact(client, "IVAN.PETROV@example.com", "+7 912 345-67-89")
    _waited_for_minutes(store, request_id)
    Worker(replace(settings, keep_delivered=0), store=store).key_deliveries()
    assert _keys(store, request_id) == (1, {IVAN_EMAIL, IVAN_PHONE})
    assert _process(store, worker, request_id) == "delivered"
    assert store.get(request_id).detail == "forgot 4 deliveries naming the person (rule 'customer_redact')"
    assert _keys(store, request_id) == (1, set())
    assert all(store.get(stored[name]) is None for name in ("ivan_delivered", "ivan_checkout", "ivan_queued"))


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


def _others(path, first: int, count: int, *, keyed: bool) -> None:  # type: ignore[no-untyped-def]
    """`count` delivered forms of other people straight into a SQLite store's file, each with its calls, and
    with their keys when `keyed` (as the worker leaves them), or without (as an older relay left them)."""
    rows, keys = [], []
    for number in range(first, first + count):
        delivery_id = new_id(time.time() - 3600 + number / 1000)
        email = f"customer{number}@example.com"
        calls = json.dumps([{"method": "profiles/update", "body": {"matching": "email", "email": email}}])
        rows.append((delivery_id, calls, 1 if keyed else None))
        keys += [(contact_key(email), delivery_id)] if keyed else []
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO deliveries (id, source, received_at, status, body, headers, dedup_key, attempts, calls_done, "
            "cycle_started_at, next_attempt_at, updated_at, calls, contacts_indexed) "
            "VALUES (?1, 'tilda', 1, 'delivered', x'00', '{}', ?1, 1, 1, 1, 1, 1, ?2, ?3)",
            rows,
        )
        db.executemany("INSERT INTO delivery_contacts (contact, delivery_id) VALUES (?, ?)", keys)


def test_a_persons_deliveries_are_found_without_reading_everyone_elses(tmp_path):
    """Reading every delivery's calls took 1.2 s at 100,000 deliveries (bench/contact_search.py). Through the
    keys, a search does the same work at 2,000 other people's deliveries as at 20, with a source and a status
    too; those an older relay left without keys are still read, and found."""
    path = tmp_path / "people.db"
    store = Store(f"sqlite:///{path}")
    ivan = parse_contact("Ivan.Petrov@example.com", "RU")
    form = InboundRequest("tilda", b"Email=ivan.petrov%40example.com", "application/x-www-form-urlencoded")
    accepted = store.accept(form, dedup_key="tilda:1", status="queued", dedup_window=60)
    [(claimed, token)] = store.claim(owner="test", limit=1, lease_seconds=30)
    calls = [{"method": "profiles/update", "body": {"matching": "email", "email": "ivan.petrov@example.com"}}]
    assert store.finish(claimed.id, token, status="delivered", calls=calls, contacts=contact_keys(calls, "RU"))

    def steps(**filters: str) -> int:
        found, count = counting_steps(store, lambda: find_deliveries(store, ivan, limit=50, **filters))
        assert [delivery.id for delivery in found] == [accepted.id]
        return count

    _others(path, 0, 20, keyed=True)
    few = steps()
    few_filtered = steps(source="tilda", status="delivered")  # not through these filters' indexes
    _others(path, 20, 2000, keyed=True)
    many = steps()
    assert many <= few + 100, (few, many)  # counted a hundred steps at a time
    assert steps(source="tilda", status="delivered") <= few_filtered + 100
    _others(path, 2020, 2000, keyed=False)
    assert steps() > many + 2000 * 10  # read, each of them
    store.close()
