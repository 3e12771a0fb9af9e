"""Thin webhooks: the worker fetches the record from the provider's API, then translates and delivers.

BigCommerce's hooks name an order or a customer by id only. A fake of the three BigCommerce endpoints the
built-in mapping reads (v2 order, v3 customers, v3 subscriber), served by a real HTTP server on loopback,
answers the worker's fetches; the sandbox upstream takes the calls.
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from relay.errors import MappingError
from relay.mapping.fetches import build_request
from relay.mapping.loader import load_source_file
from relay.mapping.translate import TranslateContext, translate
from relay.metrics import REGISTRY
from relay.sandbox import SandboxServer
from relay.web import create_app
from relay.worker import Worker

from .conftest import (
    FIXTURES,
    MAPPINGS,
    SECRETS,
    LoopbackFake,
    drain,
    hand_driven,
    make_settings,
    quick_retry_settings,
    relay_command,
)
from .test_signatures import paddle as paddle_headers

EXAMPLES = MAPPINGS / "examples" / "bigcommerce"
STORE_HASH = "abc123"
API_TOKEN = SECRETS["BIGCOMMERCE_API_TOKEN"]
HOOK_TOKEN = SECRETS["BIGCOMMERCE_WEBHOOK_TOKEN"]


def _example(name: str) -> Any:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


class FakeBigCommerce(LoopbackFake):
    """BigCommerce's store API for what the mapping fetches: X-Auth-Token checked (401), unknown records
    404, an order's products, a customer list filtered by `id:in`; `faults` are answered first, one a request."""

    def __init__(self) -> None:
        self.orders: dict[int, Any] = {250: _example("api-order-250.json")}
        self.products: dict[int, Any] = {250: _example("api-order-250-products.json")}
        self.customers: dict[int, Any] = {32: _example("api-customer-32.json")["data"][0]}
        self.subscribers: dict[int, Any] = {5: _example("api-subscriber-5.json")["data"]}
        cart = _example("api-cart-abandoned.json")["data"]
        self.carts: dict[str, Any] = {cart["id"]: cart}
        self.faults: list[dict[str, Any]] = []
        self.product_faults: list[dict[str, Any]] = []  # answered first to the products' requests alone
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                fake.requests.append({"path": self.path, "headers": dict(self.headers)})
                status, headers, body = fake.answer(self.path, self.headers.get("X-Auth-Token"))
                drip = float(headers.pop("X-Drip-Seconds", 0))
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for at in range(0, len(body), 1 if drip else len(body) or 1):
                    self.wfile.write(body[at : at + (1 if drip else len(body))])
                    self.wfile.flush()
                    time.sleep(drip)

        self.serve(Handler)

    def answer(self, path: str, token: str | None) -> tuple[int, dict[str, str], bytes]:
        if self.faults:
            fault = self.faults.pop(0)
            return fault.get("status", 503), fault.get("headers", {}), fault.get("body", b'{"status": 503}')
        if token != API_TOKEN:
            return 401, {}, b'{"status": 401, "title": "You have not provided the X-Auth-Token header"}'
        parts = urlsplit(path)
        prefix = f"/stores/{STORE_HASH}"
        route = parts.path.removeprefix(prefix)
        if not parts.path.startswith(prefix + "/"):
            return 404, {}, b'{"status": 404, "title": "store not found"}'
        if route.startswith("/v2/orders/") and route.endswith("/products"):
            if self.product_faults:
                fault = self.product_faults.pop(0)
                return fault.get("status", 503), fault.get("headers", {}), fault.get("body", b'{"status": 503}')
            products = self.products.get(int(route.split("/")[3]))
            return (200, {}, json.dumps(products).encode()) if products else (404, {}, b'[{"status": 404}]')
        if route.startswith("/v2/orders/"):
            order = self.orders.get(int(route.rsplit("/", 1)[1]))
            return (200, {}, json.dumps(order).encode()) if order else (404, {}, b'[{"status": 404}]')
        if route == "/v3/customers":
            wanted = {int(i) for i in parse_qs(parts.query).get("id:in", [""])[0].split(",") if i}
            found = [customer for key, customer in self.customers.items() if key in wanted]
            return 200, {}, json.dumps({"data": found, "meta": {"pagination": {"total": len(found)}}}).encode()
        if route.startswith("/v3/carts/"):
            cart = self.carts.get(route.rsplit("/", 1)[1])
            if cart is None:
                return 404, {}, b'{"status": 404, "title": "Cart not found"}'
            return 200, {}, json.dumps({"data": cart, "meta": {}}).encode()
        if route.startswith("/v3/customers/subscribers/"):
            subscriber = self.subscribers.get(int(route.rsplit("/", 1)[1]))
            if subscriber is None:
                return 404, {}, b'{"status": 404, "title": "Subscriber not found"}'
            return 200, {}, json.dumps({"data": subscriber, "meta": {}}).encode()
        return 404, {}, b'{"status": 404}'


@pytest.fixture
def bigcommerce():  # type: ignore[no-untyped-def]
    fake = FakeBigCommerce()
    yield fake
    fake.stop()


def _settings(tmp_path: Path, sandbox: SandboxServer, api: FakeBigCommerce, **env: str):  # type: ignore[no-untyped-def]
    return quick_retry_settings(
        tmp_path, sandbox, RELAY_MAX_ATTEMPTS="5", BIGCOMMERCE_API_URL=api.url, BIGCOMMERCE_STORE_HASH=STORE_HASH, **env
    )


@pytest.fixture
def relay(tmp_path, sandbox, bigcommerce):  # type: ignore[no-untyped-def]
    yield from hand_driven(_settings(tmp_path, sandbox, bigcommerce))


@pytest.fixture
def market(tmp_path, sandbox, bigcommerce):  # type: ignore[no-untyped-def]
    """As `relay`, with the market module on."""
    yield from hand_driven(_settings(tmp_path, sandbox, bigcommerce, RELAY_MARKET_ENDPOINT="web-shop"))


def post(client: Any, sample: str, **headers: str) -> Any:
    return client.post(
        "/hooks/bigcommerce",
        data=(EXAMPLES / sample).read_bytes(),
        content_type="application/json",
        headers={"X-Relay-Token": HOOK_TOKEN, **headers},
    )


def _fetch_count(outcome: str) -> float:
    value = REGISTRY.get_sample_value("relay_fetches_total", {"source": "bigcommerce", "outcome": outcome})
    return value or 0.0


def test_a_thin_order_hook_is_fetched_translated_and_delivered(relay, sandbox, bigcommerce):
    """The hook says order 250; the worker gets it with the store's token and the upstream gets the buyer."""
    client, store, worker = relay
    fetched_before = _fetch_count("fetched")
    response = post(client, "order-created.json")
    assert response.status_code == 202, response.get_json()
    delivery_id = response.get_json()["id"]
    assert drain(store, worker, delivery_id) == "delivered"
    [request] = bigcommerce.requests
    assert request["path"] == f"/stores/{STORE_HASH}/v2/orders/250"
    assert request["headers"]["X-Auth-Token"] == API_TOKEN
    assert request["headers"]["Accept"] == "application/json"
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["email"] == "jane.doe@example.com"
    assert profile.fields["phones"] == ["+15125550142"]
    assert profile.fields["orders_count"] == 1
    assert _fetch_count("fetched") == fetched_before + 1
    # What the operator sees: the calls made from the fetched order, and no token anywhere in the row.
    delivery = store.get(delivery_id)
    assert delivery is not None and delivery.calls and delivery.calls[0]["body"]["email"] == "jane.doe@example.com"
    kept = Path(store.engine.url.database).read_bytes()
    assert API_TOKEN.encode() not in kept and HOOK_TOKEN.encode() not in kept


def test_with_the_market_module_on_the_orders_products_are_fetched_and_the_order_follows_the_profile(
    market, sandbox, bigcommerce
):
    """RELAY_MARKET_ENDPOINT set: a second fetch gets the order's products, and the order with its lines goes
    to market/orders/import for the buyer the profile call made (without the setting, the test above makes
    one fetch and no order)."""
    client, store, worker = market
    response = post(client, "order-created.json")
    assert drain(store, worker, response.get_json()["id"]) == "delivered"
    assert [r["path"] for r in bigcommerce.requests] == [
        f"/stores/{STORE_HASH}/v2/orders/250",
        f"/stores/{STORE_HASH}/v2/orders/250/products?limit=250",
    ]
    assert bigcommerce.requests[1]["headers"]["X-Auth-Token"] == API_TOKEN
    [profile] = sandbox.sandbox.profiles.values()
    order = sandbox.sandbox.orders["250"]
    assert order["profile_id"] == profile.id
    assert (order["status"], order["total_price"], order["currency"]) == ("paid", "225.0000", "USD")
    assert [(line["product"], line["count"], line["final_price_per_item"]) for line in order["lines"]] == [
        ("OTL", 1, "109.0000"),
        ("65", 1, "116.0000"),  # no SKU: its variant
    ]


def test_with_the_market_module_on_a_counted_orders_status_changes_follow_it_there(market, sandbox, bigcommerce):
    """A counted order's later status change (Awaiting Fulfillment to Completed) is fetched, order and
    products, and moves the market module's order to delivered; the profile's count stays at one."""
    client, store, worker = market
    assert drain(store, worker, post(client, "order-created.json").get_json()["id"]) == "delivered"
    bigcommerce.orders[250] = {**bigcommerce.orders[250], "status_id": 10, "status": "Completed"}
    body = (EXAMPLES / "order-status-shipped.json").read_bytes().replace(b'"new_status_id": 2', b'"new_status_id": 10')
    response = client.post(
        "/hooks/bigcommerce", data=body, content_type="application/json", headers={"X-Relay-Token": HOOK_TOKEN}
    )
    assert response.status_code == 202, response.get_json()
    assert drain(store, worker, response.get_json()["id"]) == "delivered"
    assert len(bigcommerce.requests) == 4  # the order and its products, twice
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["orders_count"] == 1
    assert sandbox.sandbox.orders["250"]["status"] == "delivered"


def test_products_that_do_not_come_hold_back_the_order_alone_until_a_retry_brings_them(market, sandbox, bigcommerce):
    """The order's lines are fetched for the order alone: the API failing there (503, then a 429 that pauses
    the source's fetches) sends the buyer's profile at once, and the retries fetch the products again and
    send the order only, the profile's order count applied once."""
    client, store, worker = market
    bigcommerce.product_faults += [{"status": 503}, {"status": 429, "headers": {"Retry-After": "0"}}]
    delivery_id = post(client, "order-created.json").get_json()["id"]
    claimed = store.claim(owner=worker.owner, limit=1, lease_seconds=30)
    assert worker.process(*claimed[0]) == "retrying"
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["orders_count"] == 1 and sandbox.sandbox.orders == {}
    delivery = store.get(delivery_id)
    assert delivery is not None and delivery.calls_done == 2  # the profile, and its abandoned_checkout tag off
    assert delivery.detail == f"the order was not sent: fetch products from {bigcommerce.url}: HTTP 503"
    assert drain(store, worker, delivery_id) == "delivered"
    assert profile.fields["orders_count"] == 1
    assert sandbox.sandbox.orders["250"]["profile_id"] == profile.id
    assert [(a["method"], a["outcome"], a["http_status"]) for a in store.attempts_of(delivery_id)] == [
        ("profiles/import", "delivered", 200),
        ("profiles/update", "delivered", 200),
        ("fetch products", "transient", 503),
        ("fetch products", "transient", 429),
        ("market/orders/import", "delivered", 200),
    ]
    products = f"/stores/{STORE_HASH}/v2/orders/250/products?limit=250"
    assert [r["path"] for r in bigcommerce.requests].count(products) == 3


def test_products_the_api_refuses_fail_the_order_alone_as_rejected_and_a_replay_sends_it(market, sandbox, bigcommerce):
    """A final answer for the products (404) fails the delivery as rejected after the profile went, naming
    the fetch; once the API has them, a replay fetches again and sends the order without the profile call."""
    client, store, worker = market
    products = bigcommerce.products.pop(250)
    delivery_id = post(client, "order-created.json").get_json()["id"]
    assert drain(store, worker, delivery_id) == "failed"
    delivery = store.get(delivery_id)
    assert delivery is not None and delivery.reason == "rejected" and delivery.calls_done == 2
    assert delivery.detail == f"the order was not sent: fetch products from {bigcommerce.url}: HTTP 404"
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["orders_count"] == 1 and sandbox.sandbox.orders == {}
    bigcommerce.products[250] = products
    assert store.replay(delivery_id)
    assert drain(store, worker, delivery_id) == "delivered"
    assert profile.fields["orders_count"] == 1
    assert [line["product"] for line in sandbox.sandbox.orders["250"]["lines"]] == ["OTL", "65"]


def test_the_apis_transient_answers_are_retried_and_each_try_is_kept(relay, bigcommerce):
    """503, 429 with Retry-After and a 200 that is not JSON (a proxy's page) are tried again on the schedule;
    each try is in the delivery's log with the address (no token) and the API's answer."""
    client, store, worker = relay
    bigcommerce.faults += [
        {"status": 503},
        {"status": 429, "headers": {"Retry-After": "0"}},
        {"status": 200, "body": b"<html>maintenance</html>", "headers": {"Content-Type": "text/html"}},
    ]
    delivery_id = post(client, "order-created.json").get_json()["id"]
    assert drain(store, worker, delivery_id) == "delivered"
    attempts = store.attempts_of(delivery_id)
    assert [(a["method"], a["outcome"], a["http_status"]) for a in attempts] == [
        ("fetch order", "transient", 503),
        ("fetch order", "transient", 429),
        ("fetch order", "transient", 200),
        ("profiles/import", "delivered", 200),
        ("profiles/update", "delivered", 200),
    ]
    address = f"{bigcommerce.url}/stores/{STORE_HASH}/v2/orders/250"
    assert attempts[0]["request"] == {"url": address}
    assert attempts[0]["error"] == f"fetch order from {bigcommerce.url}: HTTP 503"
    assert attempts[2]["error"].endswith("HTTP 200 with an answer that is not JSON")
    assert attempts[2]["response"] == "<html>maintenance</html>"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ("token", "HTTP 401"),
        ("deleted", "HTTP 404"),
        ("redirect", "HTTP 302: redirected to https://login.example.net/sso"),
    ],
    ids=["wrong-token", "order-gone", "redirect"],
)
def test_a_final_answer_fails_the_delivery_as_rejected_and_a_replay_fetches_again(
    tmp_path, relay, sandbox, bigcommerce, change, error
):
    """A wrong token, a deleted order or a redirect (followed, it would take the token to another host)
    will not change by itself: the delivery fails as rejected with the API's answer, and once fixed a
    replay fetches again and delivers."""
    client, store, worker = relay
    if change == "token":
        worker.stop()
        worker = Worker(_settings(tmp_path, sandbox, bigcommerce, BIGCOMMERCE_API_TOKEN="revoked"), store=store)
    elif change == "deleted":
        order = bigcommerce.orders.pop(250)
    else:
        bigcommerce.faults.append({"status": 302, "headers": {"Location": "https://login.example.net/sso?t=1"}})
    delivery_id = post(client, "order-created.json").get_json()["id"]
    assert drain(store, worker, delivery_id) == "failed"
    delivery = store.get(delivery_id)
    assert delivery is not None and delivery.reason == "rejected"
    assert error in (delivery.detail or "")
    assert [r["path"] for r in bigcommerce.requests] == [f"/stores/{STORE_HASH}/v2/orders/250"]  # no redirect taken
    if change == "token":
        worker.stop()
        worker = Worker(_settings(tmp_path, sandbox, bigcommerce), store=store)
    elif change == "deleted":
        bigcommerce.orders[250] = order
    assert store.replay(delivery_id)
    assert drain(store, worker, delivery_id) == "delivered"
    worker.stop()


def test_an_api_that_does_not_answer_is_retried_then_exhausted(relay, bigcommerce):
    """The API gone (connection refused): retried on the schedule, then failed as exhausted, replayable."""
    client, store, worker = relay
    bigcommerce.stop()
    delivery_id = post(client, "order-created.json").get_json()["id"]
    assert drain(store, worker, delivery_id) == "failed"
    delivery = store.get(delivery_id)
    assert delivery is not None and delivery.reason == "exhausted"
    attempts = store.attempts_of(delivery_id)
    assert len(attempts) == 5 and {a["outcome"] for a in attempts} == {"transient"}
    assert "network: ConnectError" in attempts[0]["error"]


def test_an_answer_that_drips_is_cut_off_at_the_timeout_and_retried(relay, bigcommerce):
    """httpx's timeout bounds each read, not the answer: a document sent a byte every 0.1 s would hold the
    worker's thread for as long as it lasts. It is cut off at RELAY_UPSTREAM_TIMEOUT (0.5 s) and retried."""
    client, store, worker = relay
    bigcommerce.faults.append({"status": 200, "headers": {"X-Drip-Seconds": "0.1"}, "body": b'{"id": 250, "x": 1}'})
    delivery_id = post(client, "order-created.json").get_json()["id"]
    assert drain(store, worker, delivery_id) == "delivered"
    first = store.attempts_of(delivery_id)[0]
    assert first["outcome"] == "transient" and first["duration_ms"] < 1500
    assert first["error"].endswith("timeout: the answer was still arriving after 0.5 s")


def test_an_answer_too_large_is_cut_off(relay, bigcommerce, monkeypatch):
    client, store, worker = relay
    monkeypatch.setattr("relay.fetch.MAX_DOCUMENT_BYTES", 1000)
    delivery_id = post(client, "order-created.json").get_json()["id"]
    assert drain(store, worker, delivery_id) == "failed"
    delivery = store.get(delivery_id)
    assert delivery is not None and delivery.reason == "rejected"
    assert "answer larger than 1000 bytes" in (delivery.detail or "")


def test_an_unset_api_token_fails_as_mapping_naming_the_setting(tmp_path, sandbox, bigcommerce):
    settings = _settings(tmp_path, sandbox, bigcommerce, BIGCOMMERCE_API_TOKEN="")
    app = create_app(settings)
    store = app.extensions["relay"]["store"]
    worker = Worker(settings, store=store)
    try:
        delivery_id = post(app.test_client(), "order-created.json").get_json()["id"]
        assert drain(store, worker, delivery_id) == "failed"
        delivery = store.get(delivery_id)
        assert delivery is not None and delivery.reason == "mapping"
        assert delivery.detail == "fetch order needs BIGCOMMERCE_API_TOKEN, which is not set"
        assert bigcommerce.requests == []
    finally:
        worker.stop()
        store.close()


def test_the_ingress_ignores_only_what_no_fetched_document_could_forward(relay, bigcommerce):
    """A converted cart has no rule: 200 ignored, nothing stored or fetched. An order's rule reads the fetched
    order (`when: ... fetched.order.status_id`), which the ingress does not have: it is stored, and the
    worker, having fetched an incomplete order, settles it as ignored."""
    client, store, worker = relay
    converted = (FIXTURES / "bigcommerce-store.cart.converted.json").read_bytes()
    response = client.post(
        "/hooks/bigcommerce", data=converted, content_type="application/json", headers={"X-Relay-Token": HOOK_TOKEN}
    )
    assert response.status_code == 200
    assert response.get_json() == {"status": "ignored", "reason": "no rule forwards event 'store/cart/converted'"}
    bigcommerce.orders[250] = {**bigcommerce.orders[250], "status_id": 0}
    delivery_id = post(client, "order-created.json").get_json()["id"]
    assert drain(store, worker, delivery_id) == "delivered"
    delivery = store.get(delivery_id)
    assert delivery is not None and delivery.reason == "ignored"
    assert "not paid yet (incomplete" in (delivery.detail or "")
    assert len(bigcommerce.requests) == 1


@pytest.mark.parametrize("unpaid", [(0, "Incomplete"), (7, "Awaiting Payment")])
def test_an_unpaid_order_is_counted_once_when_its_status_says_paid(relay, sandbox, bigcommerce, unpaid):
    """BigCommerce sends store/order/created for an order whose payment has not gone through (status 0) or
    has not been received (7, a bank deposit): ignored then. Its status moving to a paid one (11) is the
    order: fetched, counted once. A later status change is answered `ignored` at once, with no fetch, and so
    is an unpaid order's move to Cancelled."""
    client, store, worker = relay
    paid = bigcommerce.orders[250]
    bigcommerce.orders[250] = {**paid, "status_id": unpaid[0], "status": unpaid[1]}
    assert drain(store, worker, post(client, "order-created.json").get_json()["id"]) == "delivered"
    assert sandbox.sandbox.profiles == {}
    bigcommerce.orders[250] = paid
    response = post(client, "order-status-updated.json")
    assert response.status_code == 202, response.get_json()
    assert drain(store, worker, response.get_json()["id"]) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["orders_count"] == 1
    asked = len(bigcommerce.requests)
    response = post(client, "order-status-shipped.json")
    assert response.status_code == 200
    assert "a status change that does not make an unpaid order paid" in response.get_json()["reason"]
    assert len(bigcommerce.requests) == asked and profile.fields["orders_count"] == 1
    bigcommerce.orders[250] = {**paid, "status_id": 5, "status": "Cancelled"}
    body = (EXAMPLES / "order-status-updated.json").read_bytes().replace(b'"new_status_id": 11', b'"new_status_id": 5')
    response = client.post(
        "/hooks/bigcommerce", data=body, content_type="application/json", headers={"X-Relay-Token": HOOK_TOKEN}
    )
    assert response.status_code == 200 and response.get_json()["status"] == "ignored"  # no fetch, nothing kept
    assert len(bigcommerce.requests) == asked and profile.fields["orders_count"] == 1


def test_an_order_both_of_whose_hooks_find_it_complete_is_counted_once(relay, sandbox, bigcommerce):
    """The created hook waited in relay's queue until after the payment went through: it and the status
    change both read a complete order. The first counts it and takes the rule's once key; the second is
    ignored, its detail naming the delivery that counted the order."""
    client, store, worker = relay
    created = post(client, "order-created.json").get_json()["id"]
    updated = post(client, "order-status-updated.json").get_json()["id"]
    assert drain(store, worker, created) == "delivered"
    assert drain(store, worker, updated) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 225)
    second = store.get(updated)
    assert second is not None and second.reason == "ignored"
    assert second.detail is not None and second.detail.endswith(
        f"(rule 'order_created' passed over: its once key 'order 250 counted' was taken by delivery {created})"
    )
    assert [r["path"] for r in bigcommerce.requests].count(f"/stores/{STORE_HASH}/v2/orders/250") == 2


def test_customers_and_subscribers_are_fetched_from_their_own_endpoints(relay, sandbox, bigcommerce):
    client, store, worker = relay
    customer = post(client, "customer-created.json").get_json()["id"]
    subscriber = post(client, "subscriber-created.json").get_json()["id"]
    assert drain(store, worker, customer) == "delivered"
    assert drain(store, worker, subscriber) == "delivered"
    assert [r["path"] for r in bigcommerce.requests] == [
        f"/stores/{STORE_HASH}/v3/customers?id:in=32",
        f"/stores/{STORE_HASH}/v3/customers/subscribers/5",
    ]
    emails = sorted(profile.fields["email"] for profile in sandbox.sandbox.profiles.values())
    assert emails == ["jane.doe@example.com", "newsletter.reader@example.com"]


def test_an_abandoned_cart_tags_the_shopper_until_their_order_is_counted(relay, sandbox, bigcommerce):
    """store/cart/abandoned names the cart; its e-mail (v3 carts API) is tagged abandoned_checkout, and the
    order counted later takes the tag off. A cart gone by the time relay asks (404) is no cart: ignored, not
    failed, and counted as an absent fetch, which the failing-fetches alert leaves out."""
    client, store, worker = relay
    abandoned = post(client, "cart-abandoned.json")
    assert abandoned.status_code == 202, abandoned.get_json()
    assert drain(store, worker, abandoned.get_json()["id"]) == "delivered"
    [cart_id] = bigcommerce.carts
    assert [r["path"] for r in bigcommerce.requests] == [f"/stores/{STORE_HASH}/v3/carts/{cart_id}"]
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["email"] == "jane.doe@example.com"
    assert set(profile.fields["tags"]) == {"bigcommerce", "abandoned_checkout"}
    ordered = post(client, "order-created.json")
    assert drain(store, worker, ordered.get_json()["id"]) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert set(profile.fields["tags"]) == {"bigcommerce", "order_created"}
    bigcommerce.carts.clear()
    absent_before = _fetch_count("absent")
    gone = post(client, "cart-abandoned.json", **{"webhook-id": "msg_gone"}).get_json()["id"]
    assert drain(store, worker, gone) == "delivered"
    settled = store.get(gone)
    assert settled.reason == "ignored" and "the store no longer has it" in settled.detail
    assert _fetch_count("absent") == absent_before + 1
    assert store.attempts_of(gone) == []  # nothing failed, nothing to keep


def _fetching_source(tmp_path: Path, fetch: str) -> Any:
    path = tmp_path / "thin.yaml"
    path.write_text(
        "version: 1\nsource: thin\nauth: {scheme: none}\n"
        + fetch
        + "rules:\n  - name: r\n    match: {email: fetched.doc.email}\n    fields: {email: fetched.doc.email}\n",
        encoding="utf-8",
    )
    return load_source_file(path)


def test_a_credential_never_shows_in_the_address_kept_and_values_stay_one_segment(tmp_path):
    """A setting whose name says it is a credential is *** in the address relay keeps, logs and prints,
    wherever it sits; a payload value is percent-encoded, so `../admin?x=1` cannot leave its segment."""
    source, problems = _fetching_source(
        tmp_path,
        "fetch:\n  doc:\n    url: https://api.example.com/${SHOP_ID}/items/{id}?key=${EXAMPLE_API_KEY}&v=2\n",
    )
    assert problems == []
    [spec] = source.fetches
    env = {"SHOP_ID": "shop-7", "EXAMPLE_API_KEY": "k-secret-1"}
    request = build_request(spec, {"id": "../admin?x=1"}, env)
    assert request.url == "https://api.example.com/shop-7/items/..%2Fadmin%3Fx%3D1?key=k-secret-1&v=2"
    assert request.shown == "https://api.example.com/shop-7/items/..%2Fadmin%3Fx%3D1?key=***&v=2"
    assert "k-secret-1" not in repr(request)
    with pytest.raises(MappingError, match=r"\{id\} is empty in this payload"):
        build_request(spec, {"id": ""}, env)
    for dots in (".", "..", "..."):  # httpx resolves dot segments: /items/.. would be /shop-7
        with pytest.raises(MappingError, match="names no record"):
            build_request(spec, {"id": dots}, env)


@pytest.mark.parametrize(
    ("fetch", "problem"),
    [
        ("fetch:\n  doc:\n    url: https://api.example.com/x\n    headers: {X-Auth-Token: abc}\n", "never inline"),
        ("fetch:\n  doc:\n    url: https://{shop}.example.com/x\n", "never from the payload"),
        ("fetch:\n  doc:\n    url: ftp://example.com/x\n", "https://"),
        ("fetch:\n  Doc:\n    url: https://api.example.com/x\n", "lower-case"),
        ("fetch:\n  doc:\n    url: https://api.example.com/{a[}\n", "fetch"),
        ("fetch:\n  doc:\n    url: https://api.example.com/x\n    headers: {Host: x}\n", "set by relay"),
        ("fetch:\n  doc:\n    url: https://api.example.com/x\n    events: [a]\n", "needs an event"),
        ("fetch:\n  doc:\n    url: https://api.example.com/x\n    needs: [MARKET]\n", "give optional: true"),
        ("fetch:\n  doc:\n    url: https://x.example\n    optional: true\n    needs: [A-B]\n", "a setting's name"),
        ("fetch:\n  doc:\n    url: https://x.example\n    order_only: true\n", "no rule has an order section"),
        ("fetch:\n  doc:\n    url: https://x.example\n    absent_on: [403]\n", "404 or 410, the answers that say"),
        (
            "fetch:\n  doc:\n    url: https://x.example\n    order_only: true\n    absent_on: [404]\n",
            "an order's lines cannot be absent",
        ),
    ],
    ids=[
        "inline-credential",
        "host-from-payload",
        "not-http",
        "name",
        "bad-expression",
        "host-header",
        "events",
        "needs-not-optional",
        "needs-a-name",
        "order-only-without-order",
        "absent-on-not-gone",
        "absent-order-lines",
    ],
)
def test_a_fetch_that_could_leak_or_mislead_is_refused_when_the_file_loads(tmp_path, fetch, problem):
    source, problems = _fetching_source(tmp_path, fetch)
    assert source is None
    assert any(problem in line for line in problems), problems


def test_preview_takes_the_apis_answer_from_a_file_and_says_what_it_would_fetch(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "BIGCOMMERCE_STORE_HASH": STORE_HASH, "BIGCOMMERCE_API_TOKEN": API_TOKEN}
    sample = str(EXAMPLES / "order-created.json")
    done = relay_command(
        "preview", "--source", "bigcommerce", sample, "--fetched", f"order={EXAMPLES / 'api-order-250.json'}", env=env
    )
    assert done.returncode == 0, done.stderr
    [call, untag] = json.loads(done.stdout)
    assert call["body"]["email"] == "jane.doe@example.com" and call["body"]["data"]["orders_count"]["value"] == 1
    assert untag["body"]["data"]["tags"] == {"action": "delete", "value": ["abandoned_checkout"]}
    assert f"fetch order: GET https://api.bigcommerce.com/stores/{STORE_HASH}/v2/orders/250" in done.stderr
    assert API_TOKEN not in done.stdout + done.stderr
    # The API's answer may be a status: 404 is not a gone order (its fetch has no absent_on), as the worker's
    # delivery would fail as rejected.
    refused = relay_command("preview", "--source", "bigcommerce", sample, "--fetched", "order=404", env=env)
    assert refused.returncode == 1
    assert "fetch order: HTTP 404, which the fetch does not take as the record gone" in refused.stderr
    missing = relay_command("preview", "--source", "bigcommerce", sample, env=env)
    assert missing.returncode == 1
    assert "preview makes no network call; give the API's answer as --fetched order=FILE" in missing.stderr


def test_sources_names_what_a_source_fetches_and_the_settings_it_still_needs():
    done = relay_command(
        "sources", env={"PATH": "/usr/bin:/bin", "BIGCOMMERCE_WEBHOOK_TOKEN": HOOK_TOKEN, "BIGCOMMERCE_STORE_HASH": "s"}
    )
    assert done.returncode == 0, done.stderr
    block = done.stdout.split("bigcommerce\n", 1)[1].split("\n\n", 1)[0]
    assert "status:   NOT READY: set BIGCOMMERCE_API_TOKEN" in block
    assert "fetches:  order: GET ${BIGCOMMERCE_API_URL:-https://api.bigcommerce.com}/stores/" in block


def test_a_delivery_whose_lease_ran_short_is_handed_back_before_its_calls(relay, sandbox, bigcommerce):
    """Fetches that took long leave less lease than the calls may need: sent anyway, a call could still be
    under way when another worker claims the delivery again and sends it twice. It goes back to the queue,
    no try spent, and the next claim delivers it."""
    client, store, worker = relay
    delivery_id = post(client, "order-created.json").get_json()["id"]
    [(delivery, token)] = store.claim(owner=worker.owner, limit=1, lease_seconds=3)
    assert delivery.lease_expires_at is not None
    assert worker.process(delivery, token) == "retrying"
    held_back = store.get(delivery_id)
    assert held_back is not None and "lease ran short" in (held_back.detail or "")
    assert store.attempts_of(delivery_id) == [] and sandbox.sandbox.profiles == {}
    assert drain(store, worker, delivery_id) == "delivered"


def test_a_replays_dry_run_checks_the_fetch_but_asks_the_api_nothing(tmp_path, relay, sandbox, bigcommerce):
    """The dry run sends nothing: a delivery whose record is fetched is counted as fetching first (its address
    and settings checked); with the API token unset it is one that would still fail, with the setting named."""
    from relay.replay_check import check_replay

    client, store, worker = relay
    bigcommerce.orders.pop(250)
    delivery_id = post(client, "order-created.json").get_json()["id"]
    assert drain(store, worker, delivery_id) == "failed"
    asked = len(bigcommerce.requests)
    settings = _settings(tmp_path, sandbox, bigcommerce)
    assert check_replay(store, settings, {"status": "failed"}) == {
        "checked": 1,
        "translate": 0,
        "ignored": 0,
        "still_fail": 0,
        "fetch_first": 1,
        "errors": [],
    }
    unset = check_replay(store, _settings(tmp_path, sandbox, bigcommerce, BIGCOMMERCE_API_TOKEN=""), {})
    assert (unset["still_fail"], unset["errors"][0]["error"]) == (
        1,
        "fetch order needs BIGCOMMERCE_API_TOKEN, which is not set",
    )
    # One delivery's preview (the admin API's, the page's) stops at the fetch alike.
    from relay.replay_check import preview_delivery

    previewed = preview_delivery(store.get(delivery_id), settings, store)
    assert previewed["outcome"] == "fetch_first" and "provider's API" in previewed["detail"]
    assert len(bigcommerce.requests) == asked


def test_an_optional_fetch_leaves_its_source_ready_and_says_it_is_skipped():
    """Paddle's customer fetch is optional: without PADDLE_API_KEY the source is ready, its transactions are
    ignored (the examples show both ways), and `relay sources` says the fetch is skipped."""
    env = {"PATH": "/usr/bin:/bin", "PADDLE_WEBHOOK_SECRET": SECRETS["PADDLE_WEBHOOK_SECRET"]}
    done = relay_command("sources", env=env)
    assert done.returncode == 0, done.stderr
    block = done.stdout.split("\npaddle\n", 1)[1].split("\n\n", 1)[0]
    assert "status:   ready" in block
    assert "read by the rules as fetched.customer (optional: skipped while PADDLE_API_KEY is unset)" in block


def test_sources_says_which_fetches_only_the_order_reads(tmp_path):
    """Stripe's line items are read by its order section alone: the source is ready without the key, and the
    line says so. A fetch for the order alone whose own setting is unset says what that does to the order;
    one whose settings the source's other fetches need too is said once, in its status."""
    (tmp_path / "shop.yaml").write_text(
        "version: 1\nsource: shop\nauth: {scheme: none}\n"
        "fetch:\n  order:\n    url: https://api.example.com/o/{id}?k=${SHOP_API_TOKEN}\n"
        "  lines:\n    order_only: true\n    url: https://api.example.com/o/{id}/lines?k=${SHOP_LINES_TOKEN}\n"
        "rules:\n  - name: r\n    match: {email: fetched.order.email}\n    fields: {email: fetched.order.email}\n"
        "    order:\n      endpoint: {value: m}\n      external_id: id\n      status: {value: paid}\n"
        "      total_price: fetched.order.total\n      currency: {value: USD}\n"
        "      lines: {path: fetched.lines, external_id: id, product: sku, count: n}\n",
        encoding="utf-8",
    )
    blocks: dict[str, str] = {}
    for mappings, secret in ((None, "STRIPE_WEBHOOK_SECRET"), (tmp_path, None)):
        env = {"PATH": "/usr/bin:/bin", **({"RELAY_MAPPINGS_DIR": str(mappings)} if mappings else {})}
        done = relay_command("sources", env={**env, **({secret: SECRETS[secret]} if secret else {})})
        assert done.returncode == 0, done.stderr
        name = "stripe" if secret else "shop"
        blocks[name] = done.stdout.split(f"{name}\n", 1)[1].split("\n\n", 1)[0]
    assert "status:   ready" in blocks["stripe"]
    assert (
        "/line_items?limit=100, read by the order section as fetched.line_items "
        "(optional: skipped while STRIPE_API_KEY is unset)" in blocks["stripe"]
    )
    assert "status:   NOT READY: set SHOP_API_TOKEN\n" in blocks["shop"]
    assert (
        "read by the order section as fetched.lines (while SHOP_LINES_TOKEN is unset, the profile goes and the "
        "order fails as mapping)" in blocks["shop"]
    )


def test_an_optional_fetch_that_needs_a_setting_is_made_only_while_it_is_set_and_not_empty(tmp_path):
    """`needs`: a setting the fetch does not put in its request, unset or empty, skips it as an unset
    credential does."""
    source, problems = _fetching_source(
        tmp_path,
        "fetch:\n  doc:\n    url: https://api.example.com/{id}\n    optional: true\n    needs: [MARKET]\n"
        "  lines:\n    url: https://api.example.com/{id}/lines\n    optional: true\n    needs: [MARKET]\n"
        "    when: fetched.doc.email\n",
    )
    assert problems == [], problems
    fetched: list[str] = []

    def fetch(request: Any) -> Any:
        fetched.append(request.url)
        return {"email": "a@example.com"}

    for env in ({}, {"MARKET": ""}):
        with pytest.raises(MappingError, match="no usable email"):  # the rule finds no fetched.doc
            translate(source, {"id": 7}, context=TranslateContext(env=env), fetch=fetch)
        assert fetched == [], env
    translation = translate(source, {"id": 7}, context=TranslateContext(env={"MARKET": "m1"}), fetch=fetch)
    assert fetched == ["https://api.example.com/7", "https://api.example.com/7/lines"]
    assert translation.calls[0].body["email"] == "a@example.com"


def test_a_429_from_the_api_pauses_the_sources_fetches_without_spending_tries(relay, bigcommerce):
    """After a 429 with Retry-After, the source's other deliveries wait in the queue for that long instead of
    each spending a try on the same answer; then they are fetched and delivered."""
    client, store, worker = relay
    first = post(client, "order-created.json").get_json()["id"]
    second = post(client, "customer-created.json").get_json()["id"]
    bigcommerce.faults.append({"status": 429, "headers": {"Retry-After": "1"}})
    claimed = dict(
        (delivery.id, (delivery, token))
        for delivery, token in store.claim(owner=worker.owner, limit=2, lease_seconds=30)
    )
    for delivery_id in (first, second):
        assert worker.process(*claimed[delivery_id]) == "retrying"
    assert [a["http_status"] for a in store.attempts_of(first)] == [429]
    waiting = store.get(second)
    assert waiting is not None and store.attempts_of(second) == []
    assert "bigcommerce's API answered 429; fetches resume in 1 s" in (waiting.detail or "")
    assert waiting.next_attempt_at is not None and waiting.next_attempt_at > time.time() + 0.5
    assert len(bigcommerce.requests) == 1
    time.sleep(1.1)
    assert drain(store, worker, first) == "delivered"
    assert drain(store, worker, second) == "delivered"


class FakeEcwid(LoopbackFake):
    """Ecwid's REST API for one order and one unfinished order (None: deleted, 404): `Authorization: Bearer
    <token>` checked (403), the store id in the path."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.order = json.loads((MAPPINGS / "examples" / "ecwid" / "api-order-XJ12H.json").read_bytes())
        self.unfinished: dict[str, Any] | None = json.loads(
            (MAPPINGS / "examples" / "ecwid" / "api-unfinished-RA1SD.json").read_bytes()
        )
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                fake.requests.append({"path": self.path, "headers": dict(self.headers)})
                if self.headers.get("Authorization") != "Bearer " + SECRETS["ECWID_API_TOKEN"]:
                    status, body = 403, b'{"errorMessage": "Invalid token"}'
                elif self.path == "/api/v3/1003/orders/XJ12H":
                    status, body = 200, json.dumps(fake.order).encode()
                elif self.path == "/api/v3/1003/orders/RA1SD" and fake.unfinished is not None:
                    status, body = 200, json.dumps(fake.unfinished).encode()
                else:
                    status, body = 404, b'{"errorMessage": "Order not found"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.serve(Handler, "/api/v3")


def _ecwid_hook(client: Any, event_id: str, event_type: str, data: dict[str, Any], order_id: str = "XJ12H") -> Any:
    """Post one Ecwid event as Ecwid signs it: its time and id, with the app's client secret."""
    import base64
    import hashlib
    import hmac

    created = int(time.time())
    body = json.dumps(
        {
            "eventId": event_id,
            "eventCreated": created,
            "storeId": 1003,
            "entityId": 103878161,
            "eventType": event_type,
            "data": {"orderId": order_id, **data},
        }
    ).encode()
    key = SECRETS["ECWID_WEBHOOK_SECRET"].encode()
    signature = base64.b64encode(hmac.new(key, f"{created}.{event_id}".encode(), hashlib.sha256).digest()).decode()
    return client.post(
        f"/hooks/ecwid?eventtype={event_type}",
        data=body,
        headers={"X-Ecwid-Webhook-Signature": signature, "Content-Type": "application/json; charset=UTF-8"},
    )


@pytest.fixture
def ecwid(tmp_path, sandbox):  # type: ignore[no-untyped-def]
    yield from _ecwid_relay(tmp_path, sandbox)


@pytest.fixture
def ecwid_market(tmp_path, sandbox):  # type: ignore[no-untyped-def]
    """As `ecwid`, with the market module on and the store's currency set."""
    yield from _ecwid_relay(tmp_path, sandbox, RELAY_MARKET_ENDPOINT="web-shop", ECWID_CURRENCY="RUB")


def _ecwid_relay(tmp_path: Path, sandbox: Any, **env: str) -> Any:
    api = FakeEcwid()
    settings = make_settings(
        tmp_path, RELAY_UPSTREAM_URL=sandbox.api_url, ECWID_API_URL=api.url, ECWID_STORE_ID="1003", **env
    )
    app = create_app(settings)
    store = app.extensions["relay"]["store"]
    worker = Worker(settings, store=store)
    try:
        yield app.test_client(), store, worker, api
    finally:
        worker.stop()
        store.close()
        api.stop()


def test_an_ecwid_order_is_verified_fetched_with_the_apps_token_and_delivered(ecwid, sandbox):
    """The built-in Ecwid source end to end: the signature over the event's time and id, the order fetched
    with `Authorization: Bearer <secret_ token>` from the store's address, the buyer sent upstream."""
    client, store, worker, api = ecwid
    response = _ecwid_hook(client, "e-1", "order.created", {"newPaymentStatus": "PAID"})
    assert response.status_code == 202, response.get_json()
    assert drain(store, worker, response.get_json()["id"]) == "delivered"
    [request] = api.requests
    assert request["path"] == "/api/v3/1003/orders/XJ12H"
    [profile] = sandbox.sandbox.profiles.values()
    assert (profile.fields["email"], profile.fields["phones"]) == ("olga.smirnova@example.com", ["+79151234567"])
    assert profile.fields["orders_count"] == 1


def test_an_ecwid_customer_deleted_before_the_fetch_still_sends_the_hooks_e_mail(ecwid, sandbox):
    """The store's API no longer has the customer (404): the fetch is absent, not a failure, and the e-mail the
    hook carries goes alone."""
    client, store, worker, api = ecwid
    response = _ecwid_hook(client, "e-9", "customer.created", {"customerEmail": "Anna@Example.com"})
    assert response.status_code == 202, response.get_json()
    assert drain(store, worker, response.get_json()["id"]) == "delivered"
    assert [request["path"] for request in api.requests] == ["/api/v3/1003/customers/103878161"]
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["email"] == "anna@example.com" and profile.fields["tags"] == ["ecwid", "ecwid_customer"]


def test_an_ecwid_orders_items_reach_the_market_module_in_the_stores_currency(ecwid_market, sandbox):
    """Ecwid's order names no currency: with RELAY_MARKET_ENDPOINT set, the paid order goes to the market
    module in ECWID_CURRENCY, after the buyer's profile."""
    client, store, worker, _api = ecwid_market
    sandbox.sandbox.config["currencies"] = ["RUB"]
    response = _ecwid_hook(client, "e-1", "order.created", {"newPaymentStatus": "PAID"})
    assert drain(store, worker, response.get_json()["id"]) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    order = sandbox.sandbox.orders["XJ12H"]
    assert (order["profile_id"], order["status"], order["currency"], order["total_price"]) == (
        profile.id,
        "paid",
        "RUB",
        "55.5",
    )
    assert [(line["product"], line["count"]) for line in order["lines"]] == [("MUG-01", 2)]


def test_an_ecwid_order_awaiting_payment_is_counted_once_when_its_payment_comes(ecwid, sandbox):
    """Cash on delivery: the order is created awaiting payment (the buyer goes, nothing counted); a change
    that is not its payment is answered `ignored` with no fetch; the update that says it was paid counts it;
    a second hook that finds it paid (the created hook, late) updates the buyer without counting it again."""
    client, store, worker, api = ecwid
    api.order["paymentStatus"] = "AWAITING_PAYMENT"
    created = _ecwid_hook(client, "e-1", "order.created", {"newPaymentStatus": "AWAITING_PAYMENT"})
    assert drain(store, worker, created.get_json()["id"]) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert "orders_count" not in profile.fields and profile.fields["tags"] == ["ecwid", "order_created"]
    shipped = {"oldPaymentStatus": "AWAITING_PAYMENT", "newPaymentStatus": "AWAITING_PAYMENT"}
    answer = _ecwid_hook(client, "e-2", "order.updated", {**shipped, "newFulfillmentStatus": "SHIPPED"})
    assert answer.status_code == 200 and answer.get_json()["status"] == "ignored"
    assert len(api.requests) == 1
    api.order["paymentStatus"] = "PAID"
    paid = _ecwid_hook(
        client, "e-3", "order.updated", {"oldPaymentStatus": "AWAITING_PAYMENT", "newPaymentStatus": "PAID"}
    )
    assert paid.status_code == 202, paid.get_json()
    assert drain(store, worker, paid.get_json()["id"]) == "delivered"
    assert profile.fields["orders_count"] == 1 and "order_paid" in profile.fields["tags"]
    late = _ecwid_hook(client, "e-4", "order.created", {"newPaymentStatus": "PAID"})
    assert drain(store, worker, late.get_json()["id"]) == "delivered"
    kept = store.get(late.get_json()["id"])
    assert (
        kept is not None
        and kept.calls is not None
        and kept.calls[0]["body"]["data"]["tags"]["value"]
        == [
            "ecwid",
            "order_created",
        ]
    )
    assert (kept.detail or "").startswith("rule 'order_paid' passed over")
    assert (profile.fields["orders_count"], profile.fields["revenue"], len(api.requests)) == (1, 55.5, 3)


def test_an_ecwid_checkout_left_unpaid_is_tagged_after_the_wait_and_untagged_by_its_order(ecwid, sandbox):
    """unfinished_order.created is answered at once and taken 10 minutes later (Ecwid's advice): before then
    nothing is due and nothing is fetched; then the unfinished order, still INCOMPLETE, tags the shopper
    abandoned_checkout, and their order (Ecwid's order.created once they pay) takes the tag off."""
    client, store, worker, api = ecwid
    received = time.time()
    answer = _ecwid_hook(client, "u-1", "unfinished_order.created", {"cartId": "320AB5DE"}, order_id="RA1SD")
    assert answer.status_code == 202, answer.get_json()
    waiting = store.get(answer.get_json()["id"])
    assert waiting is not None and waiting.status == "queued"
    assert received + 595 < waiting.next_attempt_at < time.time() + 605
    assert store.claim(owner=worker.owner, limit=10, lease_seconds=30) == []
    assert api.requests == [] and sandbox.sandbox.profiles == {}

    assert drain(store, worker, waiting.id) == "delivered"  # drain jumps the clock an hour
    assert [request["path"] for request in api.requests] == ["/api/v3/1003/orders/RA1SD"]
    [profile] = sandbox.sandbox.profiles.values()
    assert (profile.fields["email"], profile.fields["phones"]) == ("pavel.orlov@example.com", ["+79215551234"])
    assert profile.fields["tags"] == ["ecwid", "abandoned_checkout"]
    assert "subscriptions" not in profile.fields or not profile.fields["subscriptions"]

    api.order["email"] = "Pavel.Orlov@Example.com"  # he came back and paid
    paid = _ecwid_hook(client, "e-5", "order.created", {"newPaymentStatus": "PAID"})
    assert paid.status_code == 202 and drain(store, worker, paid.get_json()["id"]) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["tags"] == ["ecwid", "order_created", "order_paid"]
    assert profile.fields["orders_count"] == 1


@pytest.mark.parametrize("since", ["paid", "deleted", "hidden"])
def test_an_ecwid_checkout_settled_within_the_wait_tags_nobody(ecwid, sandbox, since):
    """Paid within the wait (its order.created counts it), deleted by the merchant (404), or hidden in the
    control panel: the delivery is settled as ignored, no try kept as a failure, nobody tagged."""
    client, store, worker, api = ecwid
    if since == "deleted":
        api.unfinished = None
    else:
        assert api.unfinished is not None
        api.unfinished.update({"paymentStatus": "PAID"} if since == "paid" else {"hidden": True})
    answer = _ecwid_hook(client, "u-2", "unfinished_order.created", {}, order_id="RA1SD")
    assert answer.status_code == 202, answer.get_json()
    assert drain(store, worker, answer.get_json()["id"]) == "delivered"
    settled = store.get(answer.get_json()["id"])
    assert settled is not None and "paid since" in (settled.detail or "")
    assert len(api.requests) == 1 and sandbox.sandbox.profiles == {} and sandbox.sandbox.requests == []


def test_an_ecwid_checkout_is_taken_when_the_shops_own_wait_has_passed(tmp_path, sandbox):
    """ECWID_ABANDONED_AFTER_SECONDS sets the wait: with 1, the running worker (its own loop, no clock jumped)
    leaves the checkout alone for a second, then tags the shopper; 0 takes it at once."""
    for client, _store, worker, api in _ecwid_relay(tmp_path, sandbox, ECWID_ABANDONED_AFTER_SECONDS="1"):
        worker.start()
        posted = time.monotonic()
        answer = _ecwid_hook(client, "u-3", "unfinished_order.created", {}, order_id="RA1SD")
        assert answer.status_code == 202, answer.get_json()
        time.sleep(0.6)
        assert api.requests == [] and sandbox.sandbox.requests == []
        deadline = time.monotonic() + 10
        while not sandbox.sandbox.profiles and time.monotonic() < deadline:
            time.sleep(0.05)
        assert time.monotonic() - posted >= 1.0
        [profile] = sandbox.sandbox.profiles.values()
        assert profile.fields["tags"] == ["ecwid", "abandoned_checkout"]
    for client, store, _worker, _api in _ecwid_relay(tmp_path / "at-once", sandbox, ECWID_ABANDONED_AFTER_SECONDS="0"):
        answer = _ecwid_hook(client, "u-4", "unfinished_order.created", {}, order_id="RA1SD")
        delivery = store.get(answer.get_json()["id"])
        assert delivery is not None and delivery.next_attempt_at <= time.time()


def test_the_apis_refusals_of_different_orders_are_one_problem_in_the_overview(relay, bigcommerce):
    """The detail names the API, not the record (the record's address is kept with the try): a hundred orders
    the API refused are one line of `relay overview`, not a hundred."""
    client, store, worker = relay
    bigcommerce.orders.clear()
    ids = []
    for order_id in (250, 251):
        body = json.loads((EXAMPLES / "order-created.json").read_bytes())
        body["data"]["id"], body["created_at"] = order_id, body["created_at"] + order_id
        response = client.post("/hooks/bigcommerce", json=body, headers={"X-Relay-Token": HOOK_TOKEN})
        ids.append(response.get_json()["id"])
    for delivery_id in ids:
        assert drain(store, worker, delivery_id) == "failed"
    [problem] = store.problems(source="bigcommerce")
    assert (problem.count, problem.reason) == (2, "rejected")
    assert problem.detail == f"fetch order from {bigcommerce.url}: HTTP 404"
    assert [a["request"]["url"].rsplit("/", 1)[1] for delivery_id in ids for a in store.attempts_of(delivery_id)] == [
        "250",
        "251",
    ]


@pytest.mark.parametrize("event", ["transaction.completed.captured.json", "subscription.canceled.json"])
@pytest.mark.parametrize(("key", "answer"), [(None, (200, "ignored")), ("pdl_key", (202, "accepted"))])
def test_the_ingress_ignores_what_an_optional_fetch_skipped_would_leave_ignored(tmp_path, key, answer, event):
    """Paddle's customer fetch is optional: without PADDLE_API_KEY the worker would fetch nothing, so the
    ingress decides as the worker will, over an empty `fetched`, and answers a completed transaction or a
    subscription's change 200 ignored (nothing stored), as before fetches existed; with the key it is taken
    for the worker to fetch."""
    app = create_app(make_settings(tmp_path, PADDLE_API_KEY=key))
    body = (MAPPINGS / "examples" / "paddle" / event).read_bytes()
    signed = paddle_headers(SECRETS["PADDLE_WEBHOOK_SECRET"], body, time.time())
    response = app.test_client().post("/hooks/paddle", data=body, content_type="application/json", headers=signed)
    assert (response.status_code, response.get_json()["status"]) == answer
    if key is None:
        assert "set PADDLE_API_KEY" in response.get_json()["reason"]
    app.extensions["relay"]["store"].close()
