"""A mapping's `delay`: an event's webhook is answered and stored at once, and the worker takes it later.

Through the real app and worker to the sandbox upstream on loopback, on SQLite and PostgreSQL: a delayed
event waits while others go; the wait comes from a setting (its default while unset, or when the value is
no number of seconds, which is logged without the value); the retry budget starts when the delivery is due;
the file's mistakes are said by `check` with the key.
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from relay.mapping.delays import seconds_of, wait_for
from relay.mapping.loader import load_source_file
from relay.mapping.model import DelaySpec
from relay.store import ONCE_KEEP_SECONDS, latest_keys

from .conftest import (
    MAPPINGS,
    captured_log_lines,
    drain,
    hand_driven,
    make_settings,
    post_shopify,
    quick_retry_settings,
)

TOKEN = "shop-test-token-5e5f"

MAPPING = """
version: 1
source: shop
auth: {scheme: token, secret: "${SHOP_WEBHOOK_TOKEN}"}
event: {header: X-Shop-Event}
delay:
  - events: [checkout.left]
    seconds: ${SHOP_CHECKOUT_WAIT:-600}
rules:
  - name: buyer
    events: [checkout.left, order.paid]
    matching: email
    match: {email: {path: email, transform: email}}
    fields:
      email: {path: email, transform: email}
    tags:
      add: [from_shop]
"""


def _relay(tmp_path: Path, sandbox, **env: str):  # type: ignore[no-untyped-def]
    folder = tmp_path / "mappings"
    folder.mkdir(exist_ok=True)
    (folder / "shop.yaml").write_text(MAPPING, encoding="utf-8")
    settings = quick_retry_settings(
        tmp_path, sandbox, RELAY_MAPPINGS_DIR=str(folder), SHOP_WEBHOOK_TOKEN=TOKEN, RELAY_LOG_LEVEL="info", **env
    )
    yield from hand_driven(settings)


@pytest.fixture(params=["sqlite", "postgresql"])
def relay(request, tmp_path, sandbox):  # type: ignore[no-untyped-def]
    database = {} if request.param == "sqlite" else {"RELAY_DATABASE_URL": request.getfixturevalue("pg_url")}
    yield from _relay(tmp_path, sandbox, **database)


def _post(client, event: str, email: str):  # type: ignore[no-untyped-def]
    return client.post(
        f"/hooks/shop?token={TOKEN}",
        data=json.dumps({"email": email, "event_id": f"{event}-{email}"}),
        content_type="application/json",
        headers={"X-Shop-Event": event},
    )


def test_a_delayed_event_is_stored_at_once_and_due_later_while_others_go(relay, sandbox):
    client, store, worker = relay
    with captured_log_lines() as lines:
        received = time.time()
        left = _post(client, "checkout.left", "left@example.com")
        paid = _post(client, "order.paid", "paid@example.com")
    assert (left.status_code, paid.status_code) == (202, 202)
    waiting = store.get(left.get_json()["id"])
    assert waiting is not None and waiting.status == "queued"
    assert received + 599 <= waiting.next_attempt_at <= time.time() + 601
    # The retry budget (RELAY_MAX_AGE) is counted from when it is due, not from when it came.
    assert waiting.cycle_started_at == waiting.next_attempt_at
    # `relay deliveries` says why it is not taken, and until when.
    assert (waiting.detail or "").startswith("waits 600 s (the mapping's delay for its event), due 20")
    assert store.get(paid.get_json()["id"]).detail is None  # type: ignore[union-attr]
    records = [json.loads(line) for line in lines]
    [accepted] = [record for record in records if record.get("delivery_id") == waiting.id]
    assert accepted["wait_seconds"] == 600
    # The line says what happened, with the webhook's event beside it (the event once took the message's place).
    assert (accepted["event"], accepted["webhook_event"]) == ("accepted", "checkout.left")
    assert not any("wait_seconds" in record for record in records if record.get("delivery_id") != waiting.id)

    claimed = store.claim(owner=worker.owner, limit=10, lease_seconds=30)
    assert [delivery.id for delivery, _token in claimed] == [paid.get_json()["id"]]
    worker.process(*claimed[0])
    assert [profile.fields["email"] for profile in sandbox.sandbox.profiles.values()] == ["paid@example.com"]

    # An hour on, it is due like any other, and goes.
    assert drain(store, worker, waiting.id) == "delivered"
    assert sorted(profile.fields["email"] for profile in sandbox.sandbox.profiles.values()) == [
        "left@example.com",
        "paid@example.com",
    ]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_held_delivery_queued_once_an_upstream_is_set_still_waits_out_its_delay(request, tmp_path, database):
    """With no upstream, webhooks wait as held; queued when one is set, a delayed one is still not due."""
    folder = tmp_path / "mappings"
    folder.mkdir()
    (folder / "shop.yaml").write_text(MAPPING, encoding="utf-8")
    url = {} if database == "sqlite" else {"RELAY_DATABASE_URL": request.getfixturevalue("pg_url")}
    settings = make_settings(tmp_path, RELAY_MAPPINGS_DIR=str(folder), SHOP_WEBHOOK_TOKEN=TOKEN, **url)
    for client, store, worker in hand_driven(settings):
        left = _post(client, "checkout.left", "left@example.com").get_json()["id"]
        paid = _post(client, "order.paid", "paid@example.com").get_json()["id"]
        assert {store.get(left).status, store.get(paid).status} == {"held"}  # type: ignore[union-attr]
        assert store.release_held() == 2
        waiting, due = store.get(left), store.get(paid)
        assert waiting is not None and due is not None
        assert (waiting.status, due.status) == ("queued", "queued")
        assert waiting.next_attempt_at > time.time() + 590 and waiting.cycle_started_at == waiting.next_attempt_at
        assert (waiting.detail or "").startswith("waits 600 s") and due.detail is None
        claimed = store.claim(owner=worker.owner, limit=10, lease_seconds=30)
        assert [delivery.id for delivery, _token in claimed] == [paid]


def test_a_wait_setting_that_is_no_number_of_seconds_keeps_the_default_and_is_said(tmp_path, sandbox):
    """The webhook is taken all the same, due after the default; a warning names the setting, not its value."""
    for client, store, _worker in _relay(tmp_path, sandbox, SHOP_CHECKOUT_WAIT="ten-minutes"):
        with captured_log_lines() as lines:
            answer = _post(client, "checkout.left", "left@example.com")
        assert answer.status_code == 202, answer.get_json()
        delivery = store.get(answer.get_json()["id"])
        assert delivery is not None and 595 < delivery.next_attempt_at - time.time() < 601
        [warning] = [json.loads(line) for line in lines if "delay setting not taken" in line]
        assert warning["level"] == "warning" and "SHOP_CHECKOUT_WAIT" in warning["detail"]
        assert "ten-minutes" not in "\n".join(lines)


def test_a_wait_of_0_takes_the_event_at_once(tmp_path, sandbox):
    for client, store, worker in _relay(tmp_path, sandbox, SHOP_CHECKOUT_WAIT="0"):
        answer = _post(client, "checkout.left", "left@example.com")
        claimed = store.claim(owner=worker.owner, limit=10, lease_seconds=30)
        assert [delivery.id for delivery, _token in claimed] == [answer.get_json()["id"]]


@pytest.mark.parametrize(
    ("value", "seconds", "problem"),
    [
        (None, 600, None),
        ("", 600, None),
        ("90", 90, None),
        (" 90 ", 90, None),
        ("0", 0, None),
        ("86400", 86400, None),
        ("86401", 600, "SHOP_CHECKOUT_WAIT is not a whole number of seconds from 0 to 86400"),
        ("-5", 600, "SHOP_CHECKOUT_WAIT is not"),
        ("1.5", 600, "SHOP_CHECKOUT_WAIT is not"),
    ],
)
def test_the_wait_is_the_settings_whole_seconds_or_its_default(value, seconds, problem):
    spec = DelaySpec(events=("checkout.left",), seconds="${SHOP_CHECKOUT_WAIT:-600}")
    wait = seconds_of(spec, {} if value is None else {"SHOP_CHECKOUT_WAIT": value})
    assert wait.seconds == seconds
    assert (wait.problem is None) if problem is None else (problem in (wait.problem or ""))
    assert seconds_of(DelaySpec(events=("x",), seconds=45), {}).seconds == 45


def _problems(tmp_path: Path, delay: str, event: str = "event: {header: X-Shop-Event}\n") -> list[str]:
    text = MAPPING.replace("event: {header: X-Shop-Event}\n", event).replace(
        "delay:\n  - events: [checkout.left]\n    seconds: ${SHOP_CHECKOUT_WAIT:-600}\n", textwrap.dedent(delay)
    )
    if not event:
        text = text.replace("    events: [checkout.left, order.paid]\n", "")
    path = tmp_path / "shop.yaml"
    path.write_text(text, encoding="utf-8")
    source, problems = load_source_file(path)
    assert (source is None) == bool(problems)
    return problems


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        ("delay:\n  - events: [checkout.left]\n    seconds: 0\n", "delay.0.seconds: whole seconds from 1 to 86400"),
        ("delay:\n  - events: [checkout.left]\n    seconds: 90000\n", "delay.0.seconds: whole seconds from 1"),
        ("delay:\n  - events: [checkout.left]\n    seconds: ${SHOP_WAIT}\n", "a setting's reference with a default"),
        ("delay:\n  - events: [checkout.left]\n    seconds: ${SHOP_WAIT:-soon}\n", "must be a whole number"),
        ("delay:\n  - events: [checkout.left]\n    seconds: ${SHOP_WAIT:-90000}\n", "or 0 for no wait"),
        ("delay:\n  - events: [checkout.left]\n    seconds: 1.5\n", "must be a whole number"),
        ("delay:\n  - events: []\n    seconds: 60\n", "delay.0.events"),
        ("delay:\n  - seconds: 60\n", "delay.0.events"),
        (
            "delay:\n  - events: [checkout.left]\n    seconds: 60\n  - events: [order.paid, checkout.left]\n"
            "    seconds: 30\n",
            "checkout.left is delayed twice",
        ),
        ("delay:\n  - events: [checkout.left]\n    seconds: 60\n    when: email\n", "delay.0.when: unknown key"),
        (
            "delay:\n  - events: [checkout.left]\n    seconds: 60\n    ordered_by: updated\n",
            "delay.0.ordered_by: orders the deliveries of one latest_by key: name latest_by too",
        ),
    ],
)
def test_a_delays_mistakes_are_said_with_the_key(tmp_path, delay, expected):
    problems = _problems(tmp_path, delay)
    assert any(expected in problem for problem in problems), problems


def test_a_delay_needs_the_event_it_names(tmp_path):
    problems = _problems(tmp_path, "delay:\n  - events: [checkout.left]\n    seconds: 60\n", event="")
    assert any("a delay names events: it needs an event" in problem for problem in problems), problems


def test_the_wait_is_looked_up_by_event():
    source_path = Path(__file__).resolve().parent.parent / "mappings" / "ecwid.yaml"
    source, problems = load_source_file(source_path)
    assert source is not None, problems
    assert wait_for(source, "unfinished_order.created", {}).seconds == 600
    assert wait_for(source, "unfinished_order.created", {"ECWID_ABANDONED_AFTER_SECONDS": "300"}).seconds == 300
    assert wait_for(source, "order.created", {}).seconds == 0
    assert wait_for(source, None, {}).seconds == 0


LATEST = MAPPING.replace(
    "    seconds: ${SHOP_CHECKOUT_WAIT:-600}\n",
    "    seconds: ${SHOP_CHECKOUT_WAIT:-600}\n    latest_by: checkout.id\n    ordered_by: checkout.updated\n",
)


@pytest.fixture(params=["sqlite", "postgresql"])
def latest(request, tmp_path, sandbox):  # type: ignore[no-untyped-def]
    folder = tmp_path / "mappings"
    folder.mkdir()
    (folder / "shop.yaml").write_text(LATEST, encoding="utf-8")
    database = {} if request.param == "sqlite" else {"RELAY_DATABASE_URL": request.getfixturevalue("pg_url")}
    settings = quick_retry_settings(
        tmp_path, sandbox, RELAY_MAPPINGS_DIR=str(folder), SHOP_WEBHOOK_TOKEN=TOKEN, **database
    )
    yield from hand_driven(settings)


def _step(client, checkout: str | None, email: str, step: int, updated: object = None):  # type: ignore[no-untyped-def]
    state = {"id": checkout, **({"updated": updated} if updated is not None else {})}
    body = {"email": email, "step": step, **({"checkout": state} if checkout else {})}
    answer = client.post(
        f"/hooks/shop?token={TOKEN}",
        data=json.dumps(body),
        content_type="application/json",
        headers={"X-Shop-Event": "checkout.left"},
    )
    assert answer.status_code == 202, answer.get_json()
    return str(answer.get_json()["id"])


def test_of_the_deliveries_waiting_with_one_key_only_the_last_received_goes(latest, sandbox):
    """A checkout's three steps, whose payloads give no `ordered_by` value: the first two are passed over for
    the third, no call made for them; another checkout, and one whose payload gives no key, go on their own."""
    client, store, worker = latest
    steps = [_step(client, "c-1", f"step{n}@example.com", n) for n in (1, 2, 3)]
    other = _step(client, "c-2", "other@example.com", 1)
    keyless = _step(client, None, "keyless@example.com", 1)
    for delivery_id in [*steps, other, keyless]:
        assert drain(store, worker, delivery_id) == "delivered"
    for passed in steps[:2]:
        delivery = store.get(passed)
        assert delivery is not None and delivery.reason == "ignored"
        assert delivery.detail == f"superseded by {steps[2]}, a later webhook of the same checkout.id"
    sent = sorted(profile.fields["email"] for profile in sandbox.sandbox.profiles.values())
    assert sent == ["keyless@example.com", "other@example.com", "step3@example.com"]
    assert len(sandbox.sandbox.requests) == 3
    # A later step after the last one went: it goes too, and the key names it now.
    fourth = _step(client, "c-1", "step4@example.com", 4)
    assert drain(store, worker, fourth) == "delivered" and len(sandbox.sandbox.requests) == 4
    # Keys outlive the delivered deliveries, as once keys do: a step that failed and is replayed later is still
    # passed over.
    assert store.purge(received_before=time.time() + 1) == {
        "deliveries": 6,
        "dedup_keys": 0,
        "once_keys": 0,
        "latest_keys": 0,
    }
    with store.engine.connect() as connection:
        assert set(connection.execute(select(latest_keys.c.delivery_id)).scalars()) == {fourth, other}
    later = time.time() + ONCE_KEEP_SECONDS + 1
    assert store.purge(received_before=later, now=later)["latest_keys"] == 2


def test_with_ordered_by_the_newest_goes_whatever_order_they_came_in(latest, sandbox):
    """Of one key's deliveries, the newest by `ordered_by` goes: a step that came late (a provider's retry) is
    passed over for a newer one received before it; date-times compare with their zones, numbers as numbers;
    equal values, or one without a value, go by arrival."""
    client, store, worker = latest
    checkouts = {
        "late step": [
            ("c-1", "2026-11-30T10:00:00Z"),
            ("c-1", "2026-11-30T10:10:00Z"),
            ("c-1", "2026-11-30T10:05:00Z"),
        ],
        "zones": [("c-2", "2026-11-30T10:00:00-05:00"), ("c-2", "2026-11-30T14:30:00Z")],
        "numbers": [("c-3", 7), ("c-3", 5)],
        "same value": [("c-4", "2026-11-30T10:00:00Z"), ("c-4", "2026-11-30T10:00:00Z")],
        "no value": [("c-5", "2026-11-30T10:00:00Z"), ("c-5", "soon")],
    }
    goes = {"late step": 1, "zones": 0, "numbers": 0, "same value": 1, "no value": 1}
    received = {
        name: [
            _step(client, checkout, f"{name.replace(' ', '-')}-{n}@example.com", n, updated)
            for n, (checkout, updated) in enumerate(steps)
        ]
        for name, steps in checkouts.items()
    }
    for ids in received.values():
        for delivery_id in ids:
            assert drain(store, worker, delivery_id) == "delivered"
    for name, ids in received.items():
        newest = ids[goes[name]]
        details = {delivery_id: store.get(delivery_id).detail for delivery_id in ids}  # type: ignore[union-attr]
        passed = {delivery_id: detail for delivery_id, detail in details.items() if delivery_id != newest}
        assert passed == dict.fromkeys(passed, f"superseded by {newest}, a later webhook of the same checkout.id"), name
        assert details[newest] is None or "superseded" not in details[newest], name
    sent = sorted(profile.fields["email"] for profile in sandbox.sandbox.profiles.values())
    expected = sorted(f"{name.replace(' ', '-')}-{n}@example.com" for name, n in goes.items())
    assert sent == expected and len(sandbox.sandbox.requests) == len(goes)


def _checkout(client, topic: str, **changes: object) -> str:  # type: ignore[no-untyped-def]
    """Shopify's documented checkout (token 123123123), changed, posted and signed as Shopify sends it."""
    checkout = json.loads((MAPPINGS / "examples/shopify/checkouts-create.json").read_text(encoding="utf-8"))
    checkout.update(changes)
    return post_shopify(client, topic, checkout)


def test_a_shopify_checkout_paid_within_the_wait_tags_nobody_and_one_left_is_tagged_once(tmp_path, sandbox):
    """The built-in Shopify source: a checkout's create and its steps wait 10 minutes; one completed meanwhile
    (its newest update says completed_at) tags nobody abandoned_checkout, and sends nothing for its earlier
    steps, even one whose hook came after the completed one (Shopify does not keep its hooks in order); a
    checkout left after three steps updates its buyer once, from its last step."""
    for client, store, worker in hand_driven(quick_retry_settings(tmp_path, sandbox)):
        paid = [
            _checkout(client, "checkouts/create", email="paid@example.com", updated_at="2026-11-30T10:00:00Z"),
            _checkout(
                client,
                "checkouts/update",
                email="paid@example.com",
                updated_at="2026-11-30T05:05:00-05:00",
                completed_at="2026-11-30T10:05:00Z",
            ),
            _checkout(client, "checkouts/update", email="paid@example.com", updated_at="2026-11-30T10:02:00Z"),
        ]
        left = [
            _checkout(
                client,
                topic,
                token="left-1",
                email="left@example.com",
                phone=None,
                updated_at=f"2026-11-30T10:0{n}:00Z",
            )
            for n, topic in enumerate(["checkouts/create", "checkouts/update", "checkouts/update"])
        ]
        assert store.claim(owner=worker.owner, limit=10, lease_seconds=30) == []  # nothing due for 10 minutes
        for delivery_id in paid + left:
            assert drain(store, worker, delivery_id) == "delivered"
        details = [store.get(delivery_id).detail for delivery_id in paid + left]  # type: ignore[union-attr]
        assert details[:3] == [
            f"superseded by {paid[1]}, a later webhook of the same token",
            "the checkout was completed; its order's hooks update the profile",
            f"superseded by {paid[1]}, a later webhook of the same token",
        ]
        assert details[3:5] == [f"superseded by {left[2]}, a later webhook of the same token"] * 2
        [profile] = sandbox.sandbox.profiles.values()
        assert profile.fields["email"] == "left@example.com"
        assert "abandoned_checkout" in profile.fields["tags"]
        assert len(sandbox.sandbox.requests) == 1
