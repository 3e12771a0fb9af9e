"""A rule with `once` applies once per key: an order counted by whichever of its hooks says it is paid first.

The store's take on SQLite and PostgreSQL (two takers of one key: one wins), the translator's passing over,
and WooCommerce's orders through the real app and worker to the sandbox upstream on loopback: an order
created unpaid, then paid, then completed, is counted once; so is BigCommerce's order whose two hooks both
find it complete.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from relay.errors import MappingError
from relay.mapping.loader import load_source_file
from relay.mapping.model import Source
from relay.mapping.translate import translate
from relay.store import ONCE_KEEP_SECONDS, Store
from relay.web import create_app
from relay.worker import Worker

from .conftest import (
    MAPPINGS,
    SECRETS,
    body_digest,
    drain,
    hand_driven,
    post_signed,
    quick_retry_settings,
    relay_command,
)

WOO = MAPPINGS / "examples" / "woocommerce"

RULES = """
version: 1
source: shop
auth: {scheme: none}
event: {path: topic}
rules:
  - name: paid
    events: [paid, updated]
    when: "paid"
    once: "order {id} paid"
    match: {email: email}
    fields:
      email: email
      orders_count: {op: incr, value: {value: 1}}
  - name: paid_again
    events: [paid]
    once: {path: "join(' ', ['order', to_string(id), 'paid'])"}
    match: {email: email}
    fields: {email: email, again: {value: 1}}
  - name: updated
    events: [updated]
    match: {email: email}
    fields: {email: email}
  - name: rest
    ignore: nothing to do
"""


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'once.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened = Store(url)
    yield opened
    opened.close()


def test_a_key_is_taken_once_its_holder_keeps_it_and_it_goes_after_its_time(store):
    assert store.once_taken_by("shop", "d1", "order 5 paid") is None
    assert store.take_once("shop", "order 5 paid", "d1", now=1000.0) == "d1"
    assert store.take_once("shop", "order 5 paid", "d1") == "d1"  # its retry, its replay
    assert store.take_once("shop", "order 5 paid", "d2") == "d1"
    assert store.once_taken_by("shop", "d1", "order 5 paid") is None
    assert store.once_taken_by("shop", "d2", "order 5 paid") == "delivery d1"
    assert store.take_once("other_shop", "order 5 paid", "d3", now=1000.0) == "d3"  # keys are per source
    assert store.take_once("shop", "order 6 paid", "d4", now=1000.0 + ONCE_KEEP_SECONDS) == "d4"
    later = 1001.0 + ONCE_KEEP_SECONDS
    assert store.purge(received_before=500.0, now=later)["once_keys"] == 0  # kept while deliveries are kept
    purged = store.purge(received_before=later, now=later)
    assert purged["once_keys"] == 2  # order 5 of both sources; order 6 was taken a second later
    assert store.take_once("shop", "order 5 paid", "d2") == "d2"
    assert store.take_once("shop", "order 6 paid", "d2") == "d4"


def test_workers_taking_one_key_together_leave_it_to_one(store):
    """Eight threads take the same key at once: one of them has it, and all eight say which."""
    start = threading.Barrier(8, timeout=10)
    answers: list[str] = []

    def take(index: int) -> None:
        start.wait()
        answers.append(store.take_once("shop", "order 9 paid", f"d{index}"))

    threads = [threading.Thread(target=take, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert len(answers) == 8 and len(set(answers)) == 1 and answers[0] in {f"d{index}" for index in range(8)}


def _load(tmp_path: Path, text: str) -> tuple[Source | None, list[str]]:
    path = tmp_path / "shop.yaml"
    path.write_text(text, encoding="utf-8")
    return load_source_file(path)


@pytest.fixture
def shop_rules(tmp_path: Path) -> Source:
    source, problems = _load(tmp_path, RULES)
    assert source is not None, problems
    return source


def _translate(source: Source, payload: dict[str, Any], taken: frozenset[str] = frozenset()) -> Any:
    return translate(source, payload, once_holder=lambda key: "delivery d0" if key in taken else None)


def test_a_rule_whose_key_was_taken_is_passed_over_for_the_rules_after_it(shop_rules):
    order = {"topic": "paid", "id": 5, "paid": True, "email": "a@example.com"}
    taken = frozenset({"order 5 paid"})
    first = _translate(shop_rules, order)
    assert (first.rule, first.once_key, first.passed_over) == ("paid", "order 5 paid", ())
    assert first.calls[0].body["data"]["orders_count"] == {"action": "incr", "value": 1}
    # Two rules that give the same key share it: both are passed over.
    again = _translate(shop_rules, order, taken)
    assert again.ignored == "nothing to do" and again.calls == []
    assert [(p.rule, p.key) for p in again.passed_over] == [("paid", "order 5 paid"), ("paid_again", "order 5 paid")]
    assert again.passed_note == (
        "rule 'paid' passed over: its once key 'order 5 paid' was taken by delivery d0; "
        "rule 'paid_again' passed over: its once key 'order 5 paid' was taken by delivery d0"
    )
    update = _translate(shop_rules, {**order, "topic": "updated"}, taken)
    assert update.rule == "updated" and update.once_key is None
    assert "orders_count" not in update.calls[0].body["data"]
    assert _translate(shop_rules, {**order, "id": 6}, taken).rule == "paid"  # another order's key is free


def test_a_payload_that_gives_no_key_or_too_long_a_one_fails_as_mapping(shop_rules):
    paid = {"topic": "paid", "paid": True, "email": "a@example.com"}
    with pytest.raises(MappingError, match="applies once per key, and this payload gives none"):
        _translate(shop_rules, {**paid, "id": None})
    with pytest.raises(MappingError, match="longer than 200 characters"):
        _translate(shop_rules, {**paid, "id": "9" * 200})


def test_once_is_refused_on_a_rule_that_ignores_and_must_be_a_good_template(tmp_path):
    ignoring = RULES.replace("    ignore: nothing to do", "    ignore: nothing to do\n    once: 'x {id}'")
    source, problems = _load(tmp_path, ignoring)
    assert source is None and any("rules.3.once: once is for a rule that forwards" in p for p in problems), problems
    source, problems = _load(tmp_path, RULES.replace('once: "order {id} paid"', 'once: "order {id"'))
    assert source is None and any("rules.0.once" in p for p in problems), problems


# -- WooCommerce through the real app and worker ------------------------------------------------------------


@pytest.fixture
def relay(tmp_path, sandbox):  # type: ignore[no-untyped-def]
    yield from hand_driven(quick_retry_settings(tmp_path, sandbox, RELAY_MAX_ATTEMPTS="3"))


def _signed_woo(client: Any, topic: str, payload: dict[str, Any]) -> str:
    """Post one WooCommerce webhook as WooCommerce signs it; the delivery's id."""
    response = post_signed(
        client,
        "woocommerce",
        payload,
        secret=SECRETS["WOOCOMMERCE_WEBHOOK_SECRET"],
        header="X-WC-Webhook-Signature",
        headers={"X-WC-Webhook-Topic": topic, "X-WC-Webhook-Delivery-ID": f"{topic}-{body_digest(payload)[:16]}"},
    )
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["id"])


@pytest.fixture
def woo(relay):  # type: ignore[no-untyped-def]
    """Post one signed WooCommerce webhook and deliver it: its delivery id and final status."""
    client, store, worker = relay

    def deliver(topic: str, payload: dict[str, Any]) -> tuple[str, str]:
        delivery_id = _signed_woo(client, topic, payload)
        return delivery_id, drain(store, worker, delivery_id)

    return deliver


def _passed_over_count(source: str, rule: str) -> float:
    from relay.metrics import REGISTRY

    return REGISTRY.get_sample_value("relay_rules_passed_over_total", {"source": source, "rule": rule}) or 0.0


def test_an_order_created_unpaid_is_counted_once_when_paid_and_not_again_when_completed(woo, relay, sandbox):
    client, store, worker = relay
    order = json.loads((WOO / "order.created.json").read_text(encoding="utf-8"))
    pending = {**order, "status": "pending", "date_paid": None}
    assert woo("order.created", pending)[1] == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert "orders_count" not in profile.fields and "order_pending" in profile.fields["tags"]
    paid_id, status = woo("order.updated", order)  # processing: the payment went through
    assert status == "delivered"
    assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 29.35)
    assert "order_paid" in profile.fields["tags"]
    passed_before = _passed_over_count("woocommerce", "order_paid")
    completed_id, status = woo("order.updated", {**order, "status": "completed"})
    assert status == "delivered"
    assert _passed_over_count("woocommerce", "order_paid") == passed_before + 1
    assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 29.35)
    assert "order_completed" in profile.fields["tags"]
    completed = store.get(completed_id)
    assert completed is not None and completed.detail == (
        f"rule 'order_paid' passed over: its once key 'order 727 paid' was taken by delivery {paid_id}"
    )
    paid = store.get(paid_id)
    assert paid is not None and paid.detail is None
    # A late order.created, its payload read after the payment: the buyer, not another count.
    assert woo("order.created", {**order, "customer_note": "sent late"})[1] == "delivered"
    assert profile.fields["orders_count"] == 1 and len(sandbox.sandbox.profiles) == 1
    # Another order of the same buyer, paid at checkout, is counted.
    assert woo("order.created", {**order, "id": 728, "total": "10.00"})[1] == "delivered"
    assert (profile.fields["orders_count"], profile.fields["revenue"]) == (2, 39.35)


def test_a_subscriptions_renewal_orders_add_revenue_alone_and_its_status_is_one_tag(woo, relay, sandbox):
    """WooCommerce Subscriptions: the first order is the purchase (counted); a renewal order, paid, adds its
    total to revenue alone, once whichever hook says it is paid; the subscription's status is one tag,
    replaced as it changes."""
    client, store, worker = relay
    order = json.loads((WOO / "order.created.json").read_text(encoding="utf-8"))
    assert woo("order.created", order)[1] == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    renewal = json.loads((WOO / "order.created.renewal.json").read_text(encoding="utf-8"))
    assert woo("order.created", renewal)[1] == "delivered"
    assert woo("order.updated", {**renewal, "status": "completed"})[1] == "delivered"
    assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 58.7)
    assert "renewal_paid" in profile.fields["tags"]
    subscription = json.loads((WOO / "subscription.updated.json").read_text(encoding="utf-8"))
    statuses = []
    for day, status in enumerate(("active", "on-hold", "active", "pending-cancel", "expired"), start=1):
        changed = {**subscription, "status": status, "date_modified": f"2026-12-{day:02d}T09:00:00"}
        assert woo("subscription.updated", changed)[1] == "delivered"
        statuses.append(sorted(tag for tag in profile.fields["tags"] if tag.startswith("subscription_")))
    assert statuses == [
        ["subscription_active"],
        ["subscription_past_due"],
        ["subscription_active"],
        ["subscription_cancelled"],
        ["subscription_expired"],
    ]


def _process_together(start: threading.Barrier, worker: Worker, claim: Any, settled: list[str]) -> None:
    start.wait()
    settled.append(worker.process(*claim))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_workers_given_two_paid_hooks_of_one_order_at_once_count_it_once(kind, tmp_path, sandbox, request):
    """The created and the updated hook of an order paid at checkout, each claimed by its own worker and
    processed at the same moment, five orders over: whichever way the two interleave (one sees the other's key,
    or both look before either takes and the loser translates again), each order is counted once."""
    env = {"RELAY_DATABASE_URL": request.getfixturevalue("pg_url")} if kind == "postgres" else {}
    app = create_app(quick_retry_settings(tmp_path, sandbox, **env))
    store = app.extensions["relay"]["store"]
    workers = [Worker(app.extensions["relay"]["settings"], store=store) for _ in range(2)]
    order = json.loads((WOO / "order.created.json").read_text(encoding="utf-8"))
    try:
        for number in range(5):
            paid = {**order, "id": 900 + number}
            ids = [_signed_woo(app.test_client(), topic, paid) for topic in ("order.created", "order.updated")]
            claims = [store.claim(owner=w.owner, limit=1, lease_seconds=30)[0] for w in workers]
            start = threading.Barrier(2, timeout=10)
            settled: list[str] = []
            threads = [
                threading.Thread(target=_process_together, args=(start, worker, claim, settled))
                for worker, claim in zip(workers, claims, strict=True)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert settled == ["delivered", "delivered"]
            details = [store.get(delivery_id).detail or "" for delivery_id in ids]  # type: ignore[union-attr]
            assert sorted(bool(detail) for detail in details) == [False, True], details
        [profile] = sandbox.sandbox.profiles.values()
        assert profile.fields["orders_count"] == 5
    finally:
        for worker in workers:
            worker.stop()
        store.close()


def test_a_retry_of_the_delivery_that_took_the_key_still_counts(woo, relay, sandbox):
    """The upstream fails the first try: the key is this delivery's, and its retry counts the order."""
    client, store, worker = relay
    order = json.loads((WOO / "order.created.json").read_text(encoding="utf-8"))
    sandbox.sandbox.faults.append({"status": 503})
    delivery_id, status = woo("order.created", order)
    assert status == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["orders_count"] == 1
    assert [a["outcome"] for a in store.attempts_of(delivery_id)] == ["transient", "delivered", "delivered"]
    assert store.once_taken_by("woocommerce", "someone else", "order 727 paid") == f"delivery {delivery_id}"


def test_preview_says_the_key_and_what_a_later_hook_would_do(tmp_path):
    env = {"RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    args = ["preview", "--source", "woocommerce", str(WOO / "order.updated.json"), "--header"]
    first = relay_command(*args, "X-WC-Webhook-Topic: order.updated", env=env)
    assert first.returncode == 0, first.stderr
    assert "rule 'order_paid' applies once per key: 'order 727 paid'" in first.stderr
    assert "orders_count" in json.loads(first.stdout)[0]["body"]["data"]
    later = relay_command(*args, "X-WC-Webhook-Topic: order.updated", "--once-taken", "order 727 paid", env=env)
    assert later.returncode == 0, later.stderr
    assert "rule 'order_paid' passed over: its once key 'order 727 paid' was taken by an earlier delivery" in (
        later.stderr
    )
    assert "orders_count" not in json.loads(later.stdout)[0]["body"]["data"]
    listed = relay_command("sources", env={**env, "WOOCOMMERCE_WEBHOOK_SECRET": "x"})
    assert "order_paid: order.updated -> profiles/import" in listed.stdout
    assert "once per 'order {id} paid'" in listed.stdout


def test_a_delivery_refused_before_any_call_gives_its_key_back_and_a_replay_does_not_count_twice(woo, relay, sandbox):
    """The upstream refuses the order's first call for good (a field its database lacks): nothing was counted,
    so the key goes back, and the order's next paid hook counts it once the field is there; a replay of the
    refused one afterwards passes the rule over."""
    client, store, worker = relay
    order = json.loads((WOO / "order.created.json").read_text(encoding="utf-8"))
    tags = sandbox.sandbox.config["databases"]["1"]["fields"].pop("tags")
    refused_id, status = woo("order.created", order)
    assert status == "failed" and store.get(refused_id).reason == "rejected"  # type: ignore[union-attr]
    assert store.once_taken_by("woocommerce", "someone else", "order 727 paid") is None
    sandbox.sandbox.config["databases"]["1"]["fields"]["tags"] = tags
    paid_id, status = woo("order.updated", order)
    assert status == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["orders_count"] == 1
    assert store.replay(refused_id)
    assert drain(store, worker, refused_id) == "delivered"
    assert profile.fields["orders_count"] == 1
    assert f"was taken by delivery {paid_id}" in (store.get(refused_id).detail or "")  # type: ignore[union-attr]


def test_a_delivery_that_failed_after_its_counting_call_keeps_its_key(woo, relay, sandbox):
    """The profile call went (the order counted), then the tag removal that follows it was refused for good:
    the key stays with the failed delivery, and the order's next paid hook does not count it again."""
    client, store, worker = relay
    order = json.loads((WOO / "order.created.json").read_text(encoding="utf-8"))
    sandbox.sandbox.faults.extend([{}, {"status": 400, "body": "refused"}])  # the first call goes, not the second
    failed_id, status = woo("order.created", order)
    failed = store.get(failed_id)
    assert status == "failed" and failed is not None and (failed.reason, failed.calls_done) == ("rejected", 1)
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["orders_count"] == 1
    assert woo("order.updated", order)[1] == "delivered"
    assert profile.fields["orders_count"] == 1
    assert store.once_taken_by("woocommerce", "someone else", "order 727 paid") == f"delivery {failed_id}"
