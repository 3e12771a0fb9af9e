"""A shop's order and its lines to the market module (market/orders/import), after the profile call.

Through the real app and worker to the sandbox upstream on loopback, which checks orders as the contract
says (currencies it knows, prices as text, at least one line) and keeps them by their external id.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from relay.errors import MappingError
from relay.mapping.loader import load_source_file
from relay.mapping.translate import TranslateContext, translate
from relay.replay_check import check_delivery
from relay.sandbox import Sandbox, default_config
from relay.store import Store
from relay.upstream.xmlbody import to_xml
from relay.web import create_app
from relay.worker import Worker

from .conftest import MAPPINGS, SECRETS, drain, hand_driven, make_settings
from .test_signatures import shopify as shopify_headers
from .test_signatures import webflow as webflow_headers

ORDER = (MAPPINGS / "examples" / "shopify" / "orders-paid-live.json").read_bytes()


def shopify_post(client, body: bytes, webhook_id: str, topic: str = "orders/paid"):  # type: ignore[no-untyped-def]
    headers = {
        "X-Shopify-Topic": topic,
        "X-Shopify-Webhook-Id": webhook_id,
        **shopify_headers(SECRETS["SHOPIFY_WEBHOOK_SECRET"], body, time.time()),
    }
    return client.post("/hooks/shopify", data=body, content_type="application/json", headers=headers)


@pytest.fixture
def shop(tmp_path, sandbox):  # type: ignore[no-untyped-def]
    settings = make_settings(
        tmp_path,
        RELAY_UPSTREAM_URL=sandbox.api_url,
        RELAY_MARKET_ENDPOINT="web-shop",
        RELAY_RETRY_SCHEDULE="0.05,0.1",
    )
    yield from hand_driven(settings)


def test_a_paid_order_reaches_the_market_module_tied_to_the_buyers_profile(shop, sandbox):
    """The order is counted (orders_count, revenue) at orders/paid alone, once: not at orders/create, which
    comes first, nor when Shopify says it is paid again."""
    client, store, worker = shop
    created = shopify_post(client, ORDER, "w-0", topic="orders/create")
    assert drain(store, worker, created.json["id"]) == "delivered"
    (profile,) = sandbox.sandbox.profiles.values()
    assert "orders_count" not in profile.fields and "revenue" not in profile.fields
    sandbox.sandbox.requests.clear()
    answer = shopify_post(client, ORDER, "w-1")
    assert answer.status_code == 202, answer.json
    assert drain(store, worker, answer.json["id"]) == "delivered"
    fake = sandbox.sandbox
    methods = [r["method"] for r in fake.requests]
    assert methods == ["profiles/import", "profiles/update", "market/orders/import"]
    (order,) = fake.orders.values()
    (profile,) = fake.profiles.values()
    assert order["profile_id"] == profile.id  # the profile call made the buyer first
    assert order["external_id"] == "820982911946154508" and order["status"] == "paid"
    assert (order["total_price"], order["currency"], order["delivery_cost"]) == ("36.99", "CAD", "10.00")
    assert [(line["product"], line["count"], line["base_price_per_item"]) for line in order["lines"]] == [
        ("1", 1, "1.99"),  # its SKU
        ("43383372185812", 1, "30.00"),  # no SKU: its variant
    ]
    assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 36.99)
    # Shopify says the order is paid again (a new webhook id: an edited order): one order, updated, and its
    # revenue not added twice (order_paid's once key; order_paid_again sends the order alone).
    again = shopify_post(client, ORDER.replace(b'"quantity":1', b'"quantity":2'), "w-2")
    assert drain(store, worker, again.json["id"]) == "delivered"
    assert len(fake.orders) == 1
    assert [line["count"] for line in fake.orders["820982911946154508"]["lines"]] == [2, 2]
    assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 36.99)


def test_a_buyer_with_a_phone_and_no_email_is_found_by_phone_and_a_buyer_with_both_by_email(shop, sandbox):
    """Shopify's checkout takes a mobile number instead of an e-mail. Such an order creates the profile by
    phone, subscribes it to SMS when the box was ticked, and is counted there, its market order tied to it.
    A later order with an e-mail and a phone matches by the e-mail alone: the phone, already on that first
    profile, does not make the upstream find two profiles and refuse the update."""
    client, store, worker = shop
    phone_only = (MAPPINGS / "examples" / "shopify" / "orders-phone-only.json").read_bytes()
    for topic in ("orders/create", "orders/paid"):
        answer = shopify_post(client, phone_only, f"w-phone-{topic}", topic=topic)
        assert drain(store, worker, answer.json["id"]) == "delivered"
    fake = sandbox.sandbox
    (by_phone,) = fake.profiles.values()
    assert by_phone.fields["phones"] == ["+16135550142"] and "email" not in by_phone.fields
    assert [(s["channel"], s["phone"], s["status"]) for s in by_phone.subscriptions] == [
        ("sms", "+16135550142", "subscribed")
    ]
    assert (by_phone.fields["orders_count"], by_phone.fields["revenue"]) == (1, 36.99)
    assert fake.orders["820982911946154508"]["profile_id"] == by_phone.id

    second = json.loads(phone_only)
    second.update(id=820982911946154509, email="jon@example.com", phone="+16135550142")
    answer = shopify_post(client, json.dumps(second).encode(), "w-both")
    assert drain(store, worker, answer.json["id"]) == "delivered"
    by_email = next(p for p in fake.profiles.values() if p.fields.get("email") == "jon@example.com")
    assert by_email.id != by_phone.id and by_email.fields["orders_count"] == 1
    assert by_phone.fields["orders_count"] == 1


def deliver_the_order(tmp_path: Path, sandbox, **env: str) -> None:  # type: ignore[no-untyped-def]
    """Shopify's paid order through a relay with these settings, to the sandbox."""
    settings = make_settings(tmp_path, RELAY_UPSTREAM_URL=sandbox.api_url, **env)
    app = create_app(settings)
    store = app.extensions["relay"]["store"]
    worker = Worker(settings, store=store)
    try:
        answer = shopify_post(app.test_client(), ORDER, "w-1")
        assert drain(store, worker, answer.json["id"]) == "delivered"
    finally:
        worker.stop()
        store.close()


def test_a_test_order_reaches_the_profile_uncounted_and_takes_no_once_key(shop, sandbox):
    """Shopify's test orders (`"test": true`) show a shop's setup working without counting anything: the
    profile is tagged test_order, no order goes to the market module, and the live order of the same id that
    follows is still counted."""
    client, store, worker = shop
    test_order = ORDER.replace(b'"test":false', b'"test":true', 1)
    assert test_order != ORDER
    answer = shopify_post(client, test_order, "w-test")
    assert drain(store, worker, answer.json["id"]) == "delivered"
    (profile,) = sandbox.sandbox.profiles.values()
    assert "test_order" in profile.fields["tags"] and "orders_count" not in profile.fields
    assert sandbox.sandbox.orders == {}
    live = shopify_post(client, ORDER, "w-live")
    assert drain(store, worker, live.json["id"]) == "delivered"
    assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 36.99)


def test_a_paid_orders_fulfilment_and_cancellation_update_its_market_order_and_count_nothing(shop, sandbox):
    """orders/fulfilled and orders/cancelled move the market module's order of the same id (delivered, then
    canceled); the profile is tagged, and its count and revenue stay as orders/paid left them."""
    client, store, worker = shop
    examples = MAPPINGS / "examples" / "shopify"
    statuses = []
    for topic, body in (
        ("orders/paid", ORDER),
        ("orders/fulfilled", (examples / "orders-fulfilled.json").read_bytes()),
        ("orders/cancelled", (examples / "orders-cancelled.json").read_bytes()),
    ):
        answer = shopify_post(client, body, f"w-{topic}", topic=topic)
        assert drain(store, worker, answer.json["id"]) == "delivered"
        statuses.append(sandbox.sandbox.orders["820982911946154508"]["status"])
    assert statuses == ["paid", "delivered", "canceled"]
    (profile,) = sandbox.sandbox.profiles.values()
    assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 36.99)
    assert {"order_paid", "order_fulfilled", "order_cancelled"} <= set(profile.fields["tags"])


def test_without_a_market_endpoint_no_order_is_sent(tmp_path, sandbox):
    """Accounts without the market module: RELAY_MARKET_ENDPOINT unset, the profile calls alone."""
    deliver_the_order(tmp_path, sandbox)
    assert [r["method"] for r in sandbox.sandbox.requests] == ["profiles/import", "profiles/update"]
    assert sandbox.sandbox.orders == {}


def test_an_order_the_upstream_refuses_fails_after_the_profile_calls_and_a_replay_sends_only_it(shop, sandbox):
    """A currency the account has not configured: the upstream's 400 fails the delivery as rejected with its
    words; the profile calls made before it are not made again when the delivery is replayed."""
    client, store, worker = shop
    fake = sandbox.sandbox
    fake.config["currencies"] = ["USD"]
    answer = shopify_post(client, ORDER, "w-1")
    delivery_id = answer.json["id"]
    assert drain(store, worker, delivery_id) == "failed"
    delivery = store.get(delivery_id)
    assert delivery is not None and delivery.reason == "rejected"
    assert "currency CAD is not configured" in (delivery.detail or "")
    applied = fake.applied
    fake.config["currencies"] = ["USD", "CAD"]
    assert store.replay(delivery_id)
    assert drain(store, worker, delivery_id) == "delivered"
    assert fake.applied == applied  # the profile's revenue was not counted twice
    assert list(fake.orders) == ["820982911946154508"]


def test_an_order_the_mapping_gets_wrong_holds_back_only_itself_until_the_fix_is_replayed(tmp_path, sandbox):
    """The buyer's profile is a lead: an order section that reads the wrong key fails the delivery as
    `mapping` after the profile call went, and once the file is fixed a replay sends the order alone."""
    folder = tmp_path / "mappings"
    folder.mkdir()
    (folder / "shop.yaml").write_text(RULE.replace("currency: {path: currency,", "currency: {path: curency,"))
    settings = make_settings(
        tmp_path, RELAY_UPSTREAM_URL=sandbox.api_url, RELAY_MAPPINGS_DIR=str(folder), SHOP_TOKEN="s-1", MARKET="m1"
    )
    app = create_app(settings)
    store: Store = app.extensions["relay"]["store"]
    worker = Worker(settings, store=store)
    fake = sandbox.sandbox
    try:
        answer = app.test_client().post("/hooks/shop?token=s-1", json=PAYLOAD)
        assert answer.status_code == 202, answer.json
        delivery_id = answer.json["id"]
        assert drain(store, worker, delivery_id) == "failed"
        delivery = store.get(delivery_id)
        assert delivery is not None and (delivery.reason, delivery.calls_done) == ("mapping", 1)
        assert "the order was not sent" in (delivery.detail or "")
        assert "data.0.currency: Missing data for required field" in (delivery.detail or "")
        assert [r["method"] for r in fake.requests] == ["profiles/import"]
        (profile,) = fake.profiles.values()
        assert fake.orders == {}
        dry_run = check_delivery(delivery, settings, store)  # what `relay replay --dry-run` says of it
        assert (dry_run["still_fail"], dry_run["translate"]) == (1, 0)
        assert "data.0.currency" in dry_run["errors"][0]["error"]
        (folder / "shop.yaml").write_text(RULE)  # the fix: the worker reads it before it fails the order
        assert check_delivery(delivery, settings, store)["translate"] == 1
        assert store.replay(delivery_id)
        assert drain(store, worker, delivery_id) == "delivered"
        assert [r["method"] for r in fake.requests] == ["profiles/import", "market/orders/import"]
        assert fake.orders["1001"]["profile_id"] == profile.id and fake.orders["1001"]["currency"] == "RUB"
    finally:
        worker.stop()
        store.close()


RULE = """version: 1
source: shop
auth: {scheme: token, secret: "${SHOP_TOKEN}"}
rules:
  - name: order
    match:
      email: {path: email, transform: email}
    fields:
      email: {path: email, transform: email}
    skip_triggers: true
    order:
      endpoint: {value: "${MARKET:-}"}
      external_id: {path: number, transform: string}
      status: {path: state, transform: {map: {values: {paid: paid, refunded: canceled}, default: new}}}
      total_price: total
      currency: {path: currency, transform: upper}
      tags: {path: coupons}
      lines:
        path: items
        external_id: {path: sku, transform: string}
        product: {path: sku, transform: string}
        count: {path: qty, transform: integer}
        final_price_per_item: price
"""


def load(tmp_path: Path, text: str = RULE):  # type: ignore[no-untyped-def]
    path = tmp_path / "shop.yaml"
    path.write_text(text)
    return load_source_file(path)


def order_translation(tmp_path: Path, payload: dict, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    source, problems = load(tmp_path)
    assert source is not None, problems
    return translate(source, payload, context=TranslateContext(env={"MARKET": "m1", **(env or {})}))


def order_call(tmp_path: Path, payload: dict, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    translation = order_translation(tmp_path, payload, env)
    assert translation.order_refused is None, translation.order_refused
    return translation.calls[-1]


PAYLOAD = {
    "email": "Anna@Example.com",
    "number": 1001,
    "state": "paid",
    "total": 1250.5,
    "currency": "rub",
    "coupons": ["WELCOME"],
    "items": [{"sku": 77, "qty": "2", "price": 625.25}],
}


def test_an_orders_values_are_text_its_counts_whole_numbers_and_triggers_follow_the_rule(tmp_path):
    call = order_call(tmp_path, PAYLOAD)
    assert call.method == "market/orders/import"
    assert call.body == {
        "skip_triggers": True,
        "data": [
            {
                "external_id": "1001",
                "matching": "email",
                "email": "anna@example.com",
                "endpoint": "m1",
                "status": "paid",
                "total_price": "1250.5",
                "currency": "RUB",
                "tags": ["WELCOME"],
                "lines": [{"external_id": "77", "product": "77", "count": 2, "final_price_per_item": "625.25"}],
            }
        ],
    }


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"items": []}, "data.0.lines: Shorter than minimum length 1"),
        ({"items": [{"sku": 77, "qty": "none", "price": 1}]}, "data.0.lines.0.count: Missing data for required field"),
        ({"items": [{"sku": 77, "qty": 1, "price": "free"}]}, "data.0.lines.0.final_price_per_item: a price as text"),
        ({"total": None}, "data.0.total_price: Missing data for required field"),
        ({"currency": "rubles"}, "data.0.currency: an ISO 4217 code"),
        ({"number": None}, "data.0.external_id: Missing data for required field"),
    ],
)
def test_an_order_the_contract_refuses_is_left_out_naming_the_key_and_the_profile_call_stays(tmp_path, change, problem):
    translation = order_translation(tmp_path, {**PAYLOAD, **change})
    assert [call.method for call in translation.calls] == ["profiles/import"]
    assert translation.order_refused is not None
    assert translation.order_refused.startswith("the order was not sent: rule 'order' builds an invalid request")
    assert problem in translation.order_refused


def test_a_profile_the_contract_refuses_fails_the_whole_translation_order_and_all(tmp_path):
    with pytest.raises(MappingError, match="matches by email but the payload gives no usable email"):
        order_translation(tmp_path, {**PAYLOAD, "email": "not an address", "items": []})


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("final_price_per_item: price\n", "price: price\n"), "shop.yaml:23 rules.0.order.lines.price: unknown key"),
        (("      lines:\n        path: items\n", "      lines:\n"), "rules.0.order.lines.path: Missing data"),
        (("      total_price: total\n", ""), "rules.0.order.total_price: Missing data for required field"),
        (("        path: items\n", "        path: 'items['\n"), "rules.0.order.lines.path: invalid expression"),
    ],
)
def test_an_order_section_is_checked_when_the_file_loads(tmp_path, change, problem):
    source, problems = load(tmp_path, RULE.replace(*change))
    assert source is None and any(problem in line for line in problems), problems


def test_the_sandbox_checks_orders_as_the_contract_says():
    """Prices are text in JSON, the currency one the account has, a line at least; XML's text is text."""
    fake = Sandbox(default_config(["t"]))
    order = {
        "external_id": "1",
        "matching": "email",
        "email": "a@example.com",
        "endpoint": "web",
        "status": "paid",
        "total_price": "10.00",
        "currency": "USD",
        "lines": [{"external_id": "1", "product": "p", "count": 1, "final_price_per_item": "10.00"}],
    }

    def call(body: dict, content_type: str = "application/json") -> tuple[int, dict]:
        raw = to_xml(body).encode() if "xml" in content_type else json.dumps(body).encode()
        path, headers = "/api/v1.1/market/orders/import", {"content-type": content_type}
        status, _headers, answer = fake.handle("POST", path, headers, raw)
        return status, json.loads(answer) if "json" in content_type else {}

    assert call({"token": "t", "data": [order]}) == (200, {"error": 0, "error_text": ""})
    as_number = call({"token": "t", "data": [{**order, "total_price": 10}]})[1]["error_text"]
    assert as_number.endswith("data.0.total_price is required, as text")
    assert "not configured" in call({"token": "t", "data": [{**order, "currency": "XOF"}]})[1]["error_text"]
    delivery_as_number = call({"token": "t", "data": [{**order, "delivery_cost": 5}]})[1]["error_text"]
    assert delivery_as_number.endswith("data.0.delivery_cost must be a price as text")
    assert "at least one line" in call({"token": "t", "data": [{**order, "lines": []}]})[1]["error_text"]
    assert call({"token": "t", "data": [{**order, "status": "shipped"}]})[0] == 400
    assert call({"token": "x", "data": [order]})[0] == 403
    fake.config["tokens"]["t"]["market"] = False
    assert "no market role" in call({"token": "t", "data": [order]})[1]["error_text"]
    fake.config["tokens"]["t"]["market"] = True
    xml_order = {**order, "external_id": "2", "total_price": "12.50"}  # XML's text stays as written
    assert call({"token": "t", "data": [xml_order]}, "application/xml")[0] == 200
    assert fake.orders["2"]["total_price"] == "12.50" and fake.orders["2"]["lines"][0]["count"] == 1


def test_a_tilda_cart_whose_products_are_text_lines_sends_the_profile_and_no_order(tmp_path):
    """Some Tilda setups send products as text (`Comb XL - 3x990 = 2970`): no line can be read from them, so
    the order section's `when` leaves the order out, and the buyer's profile still goes."""
    from relay.mapping.loader import load_sources

    tilda = load_sources(MAPPINGS)["tilda"]
    cart = {
        "Email": "buyer@example.ru",
        "payment": {"orderid": "1173042542", "amount": "2970", "products": ["Comb XL - 3x990 = 2970"]},
    }
    context = TranslateContext(env={"RELAY_MARKET_ENDPOINT": "web-shop"})
    assert [call.method for call in translate(tilda, cart, context=context).calls] == ["profiles/import"]
    cart["payment"]["products"] = [{"name": "Comb XL", "quantity": 3, "price": 990, "sku": "C-XL"}]
    cart["payment"]["systranid"] = "58712"  # the payment system's transaction: paid
    calls = translate(tilda, cart, context=context).calls
    assert [call.method for call in calls] == ["profiles/import", "market/orders/import"]
    order = calls[1].body["data"][0]
    assert (order["status"], order["currency"], order["total_price"]) == ("paid", "RUB", "2970")
    assert order["lines"] == [{"external_id": "C-XL", "product": "C-XL", "count": 3, "base_price_per_item": "990"}]


def test_orders_go_as_xml_when_the_upstream_takes_xml(tmp_path, sandbox):
    deliver_the_order(tmp_path, sandbox, RELAY_MARKET_ENDPOINT="web-shop", RELAY_UPSTREAM_FORMAT="xml")
    order = sandbox.sandbox.orders["820982911946154508"]
    assert [(line["product"], line["count"], line["base_price_per_item"]) for line in order["lines"]] == [
        ("1", 1, "1.99"),
        ("43383372185812", 1, "30.00"),
    ]


def test_a_line_reads_what_with_adds_from_the_order(tmp_path):
    """A line's price in minor units needs the order's currency: `with` adds it to each item, over a key of
    the same name; an item that is not an object is left as it is (and fails the contract)."""
    text = RULE.replace(
        "        final_price_per_item: price\n",
        "        with: {cur: currency, sku: number}\n"
        "        final_price_per_item: {path: price, transform: {minor_units: {currency_path: cur}}}\n",
    )
    source, problems = load(tmp_path, text)
    assert source is not None, problems
    payload = {**PAYLOAD, "currency": "jpy", "items": [{"sku": 77, "qty": 2, "price": 625}]}
    context = TranslateContext(env={"MARKET": "m1"})
    (line,) = translate(source, payload, context=context).calls[-1].body["data"][0]["lines"]
    assert line == {"external_id": "1001", "product": "1001", "count": 2, "final_price_per_item": "625"}
    refused = translate(source, {**payload, "items": ["a text line"]}, context=context).order_refused
    assert refused is not None and "data.0.lines.0.external_id" in refused
    _source, problems = load(tmp_path, text.replace("with: {cur:", "with: {'a b':"))
    assert any("rules.0.order.lines.with" in line for line in problems), problems


def test_an_example_says_which_calls_still_go_when_its_order_is_refused(tmp_path):
    """`expect: {calls, error}`: the profile calls that go, and the order's refusal; either alone does not hold."""
    from relay.mapping.examples import load_example, run_example

    source, problems = load(tmp_path)
    assert source is not None, problems
    (tmp_path / "examples" / "shop").mkdir(parents=True)
    (tmp_path / "examples" / "shop" / "order.json").write_text(json.dumps({**PAYLOAD, "items": []}))
    profile_call = order_translation(tmp_path, {**PAYLOAD, "items": []}).calls[0].to_dict()

    def run(expect: dict) -> list[str]:  # type: ignore[type-arg]
        path = tmp_path / "examples" / "shop" / "order.yaml"
        request = {"body_file": "order.json", "content_type": "application/json"}
        path.write_text(json.dumps({"request": request, "env": {"MARKET": "m1"}, "expect": expect}))
        return run_example(load_example(path), source)

    assert run({"calls": [profile_call], "error": "data.0.lines: Shorter than minimum length 1"}) == []
    assert run({"error": "the order was not sent"}) == []
    (missed,) = run({"calls": [profile_call]})
    assert missed.startswith("mapping error: the order was not sent: rule 'order' builds an invalid request")
    (other,) = run({"calls": [profile_call], "error": "data.0.currency"})
    assert "data.0.lines: Shorter than minimum length 1" in other
    assert run({"calls": [], "error": "data.0.lines"})[0].startswith("calls differ")


def _webflow_post(client, payload: dict) -> object:  # type: ignore[no-untyped-def]
    """Post `payload` signed as Webflow signs it."""
    body = json.dumps(payload).encode()
    headers = webflow_headers(SECRETS["WEBFLOW_WEBHOOK_SECRET"], body, time.time())
    return client.post("/hooks/webflow", data=body, content_type="application/json", headers=headers)


def test_a_webflow_order_is_counted_once_and_its_changes_reach_its_market_order(shop, sandbox):
    """A Webflow order's webhooks share its orderId: the new order counts (once, even when it comes again in
    another body), and its change to fulfilled moves the market order to delivered without counting."""
    client, store, worker = shop
    examples = MAPPINGS / "examples" / "webflow"
    new_order = json.loads((examples / "ecomm_new_order.json").read_text(encoding="utf-8"))
    fulfilled = json.loads((examples / "ecomm_order_changed.json").read_text(encoding="utf-8"))
    again = {**new_order, "payload": {**new_order["payload"], "comment": "sent again"}}
    outcomes = []
    for payload in (new_order, fulfilled, again):
        answer = _webflow_post(client, payload)
        assert answer.status_code == 200 and answer.json["status"] == "accepted", answer.json
        outcomes.append(drain(store, worker, answer.json["id"]))
    assert outcomes == ["delivered"] * 3
    (profile,) = sandbox.sandbox.profiles.values()
    assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 60.99)
    assert "order_fulfilled" in profile.fields["tags"]
    assert sandbox.sandbox.orders["dfa-3f1"]["status"] == "delivered"
