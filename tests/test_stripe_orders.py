"""Stripe Checkout's orders: the session's lines fetched for the order alone.

Stripe's `checkout.session.completed` carries the buyer and the totals, not the lines. With the market
module on and an API key set, the worker fetches the lines from a fake of Stripe's line-items endpoint,
served by a real HTTP server on loopback, after the profile calls are built; whatever that API does, the
buyer's profile goes to the sandbox upstream, and the order follows once the lines come.
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from relay.sandbox import SandboxServer
from relay.web import create_app
from relay.worker import Worker

from .conftest import MAPPINGS, SECRETS, LoopbackFake, drain, quick_retry_settings
from .test_signatures import stripe as stripe_headers

EXAMPLES = MAPPINGS / "examples" / "stripe"
CHECKOUT = (EXAMPLES / "checkout.session.completed.jpy.json").read_bytes()
SESSION = json.loads(CHECKOUT)["data"]["object"]["id"]
API_KEY = "rk_test_51Relay0linesOnly9f2c"


class FakeStripe(LoopbackFake):
    """Stripe's `GET /v1/checkout/sessions/{id}/line_items` and `GET /v1/customers/{id}`: the Bearer key
    checked (401), an unknown session or customer 404, Stripe's error shape; `faults` are answered first, one
    a request."""

    def __init__(self) -> None:
        self.line_items = {SESSION: json.loads((EXAMPLES / "api-line-items-jpy.json").read_text(encoding="utf-8"))}
        customer = json.loads((EXAMPLES / "api-customer-cus_RelayExample0001.json").read_text(encoding="utf-8"))
        self.customers = {customer["id"]: customer}
        self.faults: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                fake.requests.append({"path": self.path, "headers": dict(self.headers)})
                status, headers, body = fake.answer(self.path, self.headers.get("Authorization"))
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.serve(Handler)

    def answer(self, path: str, authorization: str | None) -> tuple[int, dict[str, str], bytes]:
        if self.faults:
            fault = self.faults.pop(0)
            return fault["status"], fault.get("headers", {}), b'{"error": {"type": "api_error"}}'
        if authorization != f"Bearer {API_KEY}":
            return 401, {}, b'{"error": {"message": "Invalid API Key provided", "type": "invalid_request_error"}}'
        parts = urlsplit(path)
        if parts.path.startswith("/v1/customers/"):
            customer = self.customers.get(parts.path.removeprefix("/v1/customers/"))
            if customer is None:
                return 404, {}, b'{"error": {"code": "resource_missing", "type": "invalid_request_error"}}'
            return 200, {}, json.dumps(customer).encode()
        session = parts.path.removeprefix("/v1/checkout/sessions/").removesuffix("/line_items")
        if session not in self.line_items:
            return 404, {}, b'{"error": {"code": "resource_missing", "type": "invalid_request_error"}}'
        return 200, {}, json.dumps(self.line_items[session]).encode()


@pytest.fixture
def stripe_api():  # type: ignore[no-untyped-def]
    fake = FakeStripe()
    yield fake
    fake.stop()


def _settings(tmp_path: Path, sandbox: SandboxServer, api: FakeStripe, **env: str):  # type: ignore[no-untyped-def]
    return quick_retry_settings(tmp_path, sandbox, RELAY_MAX_ATTEMPTS="5", STRIPE_API_URL=api.url, **env)


class Shop:
    """The app and a worker on one SQLite store, the worker driven by hand."""

    def __init__(self, settings: Any) -> None:
        self.app = create_app(settings)
        self.store = self.app.extensions["relay"]["store"]
        self.worker = Worker(settings, store=self.store)

    def post(self, body: bytes) -> Any:
        """Post one event as Stripe signs it; the answer."""
        return self.app.test_client().post(
            "/hooks/stripe",
            data=body,
            content_type="application/json; charset=utf-8",
            headers=stripe_headers(SECRETS["STRIPE_WEBHOOK_SECRET"], body, time.time()),
        )

    def post_checkout(self, body: bytes = CHECKOUT) -> str:
        """Post one event that is taken; its delivery's id."""
        response = self.post(body)
        assert response.status_code == 202, response.get_json()
        return str(response.get_json()["id"])

    def process_once(self) -> str:
        claimed = self.store.claim(owner=self.worker.owner, limit=1, lease_seconds=30, now=time.time() + 3600)
        return str(self.worker.process(*claimed[0]))

    def close(self) -> None:
        self.worker.stop()
        self.store.close()


@pytest.fixture
def shop(tmp_path, sandbox, stripe_api):  # type: ignore[no-untyped-def]
    made = Shop(_settings(tmp_path, sandbox, stripe_api, RELAY_MARKET_ENDPOINT="web-shop", STRIPE_API_KEY=API_KEY))
    yield made
    made.close()


def _methods(sandbox: SandboxServer) -> list[str]:
    return [request["method"] for request in sandbox.sandbox.requests]


def test_a_completed_checkout_sends_the_profile_then_the_order_with_its_fetched_lines(shop, sandbox, stripe_api):
    delivery_id = shop.post_checkout()
    assert drain(shop.store, shop.worker, delivery_id) == "delivered"
    [request] = stripe_api.requests
    assert request["path"] == f"/v1/checkout/sessions/{SESSION}/line_items?limit=100"
    assert request["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert _methods(sandbox) == ["profiles/import", "profiles/update", "market/orders/import"]
    [profile] = sandbox.sandbox.profiles.values()
    order = sandbox.sandbox.orders[SESSION]
    assert order["profile_id"] == profile.id
    assert (order["status"], order["total_price"], order["currency"]) == ("paid", "4950", "JPY")
    assert [(line["product"], line["count"], line["base_price_per_item"]) for line in order["lines"]] == [
        ("prod_NSPDQ6F1cBzZ3m", 1, "3000"),
        ("prod_NSPEk2Wc8uVtL1", 2, "750"),
    ]
    kept = Path(shop.store.engine.url.database).read_bytes()
    assert API_KEY.encode() not in kept


@pytest.mark.parametrize(
    "env",
    [{"RELAY_MARKET_ENDPOINT": "web-shop"}, {"STRIPE_API_KEY": API_KEY}],
    ids=["no-api-key", "no-market-endpoint"],
)
def test_stripes_api_is_asked_only_for_an_order_that_goes(tmp_path, sandbox, stripe_api, env):
    """Without the key the fetch is skipped (optional) and no order goes; without the market endpoint no
    order goes, so the lines are not fetched at all: a store that sends no orders pays no API call."""
    shop = Shop(_settings(tmp_path, sandbox, stripe_api, **env))
    try:
        assert drain(shop.store, shop.worker, shop.post_checkout()) == "delivered"
    finally:
        shop.close()
    assert stripe_api.requests == []
    assert _methods(sandbox) == ["profiles/import", "profiles/update"]
    assert sandbox.sandbox.orders == {}


def test_a_429_from_stripe_holds_back_the_order_not_the_profile(shop, sandbox, stripe_api):
    """Stripe's rate limit: the profile calls go at once; while the source's fetches are paused for the
    Retry-After a retry does not ask the API again (a try in the log says so); then the order goes alone."""
    stripe_api.faults.append({"status": 429, "headers": {"Retry-After": "30"}})
    delivery_id = shop.post_checkout()
    assert shop.process_once() == "retrying"
    assert _methods(sandbox) == ["profiles/import", "profiles/update"]
    delivery = shop.store.get(delivery_id)
    assert delivery is not None and delivery.calls_done == 2
    assert delivery.detail == f"the order was not sent: fetch line_items from {stripe_api.url}: HTTP 429"
    assert shop.process_once() == "retrying"  # still paused: Stripe is not asked
    assert len(stripe_api.requests) == 1
    assert "stripe's API answered 429; fetches resume in" in (shop.store.get(delivery_id).detail or "")
    shop.worker.fetcher.paused_until.clear()  # the Retry-After has passed
    assert drain(shop.store, shop.worker, delivery_id) == "delivered"
    assert _methods(sandbox) == ["profiles/import", "profiles/update", "market/orders/import"]
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["orders_count"] == 1 and profile.fields["revenue"] == 4950
    assert [a["method"] for a in shop.store.attempts_of(delivery_id)] == [
        "profiles/import",
        "profiles/update",
        "fetch line_items",
        "fetch line_items",
        "market/orders/import",
    ]


def test_while_stripes_api_is_paused_a_subscription_waits_without_a_try_and_a_checkout_still_goes(
    shop, sandbox, stripe_api
):
    """After a 429, a subscription's event, whose rules read the fetched customer, waits the pause out in the
    queue with no try spent; a checkout, whose profile calls fetch nothing, still goes (its order waits).
    Once the pause is over the customer is fetched and tagged with the subscription's status."""
    stripe_api.faults.append({"status": 429, "headers": {"Retry-After": "30"}})
    checkout = shop.post_checkout()
    assert shop.process_once() == "retrying"  # the profile calls went; the order's lines met the 429
    body = (EXAMPLES / "customer.subscription.deleted.json").read_bytes()
    subscription = shop.post_checkout(body)
    asked = len(stripe_api.requests)
    claimed = shop.store.claim(owner=shop.worker.owner, limit=2, lease_seconds=30, now=time.time() + 3600)
    outcomes = {delivery.id: shop.worker.process(delivery, token) for delivery, token in claimed}
    assert outcomes == {checkout: "retrying", subscription: "retrying"}
    waiting = shop.store.get(subscription)
    assert waiting is not None and waiting.attempts == 0 and shop.store.attempts_of(subscription) == []
    assert "waiting: stripe's API answered 429; fetches resume in" in (waiting.detail or "")
    assert len(stripe_api.requests) == asked  # Stripe was not asked during the pause
    shop.worker.fetcher.paused_until.clear()
    assert drain(shop.store, shop.worker, checkout) == "delivered"  # the order, after its lines came
    assert drain(shop.store, shop.worker, subscription) == "delivered"
    tagged = next(p for p in sandbox.sandbox.profiles.values() if p.fields.get("email") == "claire.martin@example.com")
    assert {"subscriber", "subscription_cancelled"} <= set(tagged.fields["tags"])


def test_a_key_stripe_refuses_fails_the_order_alone_and_a_replay_with_the_right_key_sends_it(
    tmp_path, sandbox, stripe_api
):
    settings = _settings(tmp_path, sandbox, stripe_api, RELAY_MARKET_ENDPOINT="web-shop", STRIPE_API_KEY="rk_revoked")
    shop = Shop(settings)
    try:
        delivery_id = shop.post_checkout()
        assert drain(shop.store, shop.worker, delivery_id) == "failed"
        delivery = shop.store.get(delivery_id)
        assert delivery is not None and (delivery.reason, delivery.calls_done) == ("rejected", 2)
        assert delivery.detail == f"the order was not sent: fetch line_items from {stripe_api.url}: HTTP 401"
        assert _methods(sandbox) == ["profiles/import", "profiles/update"]
        shop.worker.stop()
        fixed = _settings(tmp_path, sandbox, stripe_api, RELAY_MARKET_ENDPOINT="web-shop", STRIPE_API_KEY=API_KEY)
        shop.worker = Worker(fixed, store=shop.store)
        assert shop.store.replay(delivery_id)
        assert drain(shop.store, shop.worker, delivery_id) == "delivered"
    finally:
        shop.close()
    assert _methods(sandbox) == ["profiles/import", "profiles/update", "market/orders/import"]
    assert SESSION in sandbox.sandbox.orders


def _event(kind: str, payment_status: str) -> bytes:
    """The checkout sample as Stripe sends it for a session paid by a delayed method: `kind` of event, the
    session's payment status, an event id of its own."""
    event = json.loads(CHECKOUT)
    event["id"] = f"evt_{kind}_{payment_status}"
    event["type"] = f"checkout.session.{kind}"
    event["data"]["object"]["payment_status"] = payment_status
    return json.dumps(event).encode()


@pytest.mark.parametrize(("outcome", "status"), [("succeeded", "paid"), ("failed", "canceled")])
def test_a_delayed_payment_sends_the_buyer_at_once_and_counts_the_order_only_once_paid(
    shop, sandbox, stripe_api, outcome, status
):
    """A bank debit: the session completes unpaid, and the buyer goes at once, tagged awaiting_payment, with
    the order as new and nothing counted; days later the payment succeeds (counted, the order paid) or fails
    (tagged payment_failed, the order canceled, nothing counted)."""
    assert drain(shop.store, shop.worker, shop.post_checkout(_event("completed", "unpaid"))) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert "orders_count" not in profile.fields and "awaiting_payment" in profile.fields["tags"]
    assert sandbox.sandbox.orders[SESSION]["status"] == "new"
    payment_status = "paid" if outcome == "succeeded" else "unpaid"
    body = _event(f"async_payment_{outcome}", payment_status)
    assert drain(shop.store, shop.worker, shop.post_checkout(body)) == "delivered"
    assert sandbox.sandbox.orders[SESSION]["status"] == status
    assert "awaiting_payment" not in profile.fields["tags"]
    if outcome == "succeeded":
        assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 4950)
        assert "order_paid" in profile.fields["tags"]
    else:
        assert "orders_count" not in profile.fields and "payment_failed" in profile.fields["tags"]
    assert len(stripe_api.requests) == 2


def test_an_expired_session_tags_an_abandoned_cart_with_its_recovery_link_and_a_paid_one_takes_the_tag_off(
    tmp_path, sandbox, stripe_api
):
    """checkout.session.expired: the buyer who typed an e-mail is tagged abandoned_checkout, subscribed (they
    agreed to promotional e-mails), and the session's recovery link lands in the field
    RELAY_RECOVERY_URL_FIELD names; when they come back and pay, the tag comes off and the order counts."""
    sandbox.sandbox.config["databases"]["1"]["fields"]["cart_recovery_url"] = {"type": "string"}
    shop = Shop(_settings(tmp_path, sandbox, stripe_api, RELAY_RECOVERY_URL_FIELD="cart_recovery_url"))
    try:
        expired = json.loads((EXAMPLES / "checkout.session.expired.json").read_bytes())
        assert drain(shop.store, shop.worker, shop.post_checkout(json.dumps(expired).encode())) == "delivered"
        [profile] = sandbox.sandbox.profiles.values()
        assert profile.fields["email"] == "ana.lima@example.com"
        assert profile.fields["cart_recovery_url"] == expired["data"]["object"]["after_expiration"]["recovery"]["url"]
        assert "abandoned_checkout" in profile.fields["tags"] and "orders_count" not in profile.fields
        assert [(s["channel"], s["status"]) for s in profile.subscriptions] == [("email", "subscribed")]

        paid = json.loads(json.dumps(expired))
        paid["id"], paid["type"] = "evt_1QpaidRelay0000000000001", "checkout.session.completed"
        paid["data"]["object"].update(id="cs_live_recovered", status="complete", payment_status="paid")
        assert drain(shop.store, shop.worker, shop.post_checkout(json.dumps(paid).encode())) == "delivered"
        assert "abandoned_checkout" not in profile.fields["tags"]
        assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 49.0)
    finally:
        shop.close()


def test_a_subscriptions_renewal_invoices_add_to_revenue_and_its_first_invoice_is_not_counted_again(shop, sandbox):
    """invoice.paid: the first invoice of a subscription is its checkout's (counted there) and is answered
    ignored; each renewal adds what was paid to revenue, no order counted; a test-mode renewal adds nothing."""
    renewal = json.loads((EXAMPLES / "invoice.paid.renewal.json").read_bytes())
    first = json.loads(json.dumps(renewal))
    first["id"], first["data"]["object"]["billing_reason"] = "evt_first", "subscription_create"
    second = json.loads(json.dumps(renewal))
    second["id"], second["data"]["object"]["id"] = "evt_second", "in_second"
    test_mode = {**second, "id": "evt_test", "livemode": False}
    for event in (first, test_mode):
        answer = shop.post(json.dumps(event).encode())
        assert (answer.status_code, answer.get_json()["status"]) == (200, "ignored")
    for event in (renewal, second):
        assert drain(shop.store, shop.worker, shop.post_checkout(json.dumps(event).encode())) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["revenue"] == 38 and "orders_count" not in profile.fields
    assert "renewal_paid" in profile.fields["tags"]
