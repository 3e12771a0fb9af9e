"""Lemon Squeezy through the real app and worker to the sandbox upstream on loopback.

Its signature (hex HMAC-SHA256 of the body in X-Signature), the 200 it alone takes as delivered, a webhook
sent again answered `duplicate`; a paid order counted in US dollars, a pending one not; a subscription's
status kept as one tag while it changes; a refund cancelling the market order.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import MAPPINGS, SECRETS, drain_accepted, hand_driven, post_signed, quick_retry_settings

EXAMPLES = MAPPINGS / "examples" / "lemon_squeezy"


def _sample(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@pytest.fixture
def relay(tmp_path, sandbox):  # type: ignore[no-untyped-def]
    yield from hand_driven(quick_retry_settings(tmp_path, sandbox, RELAY_MARKET_ENDPOINT="web-shop"))


def _post(client: Any, payload: dict[str, Any], *, secret: str = SECRETS["LEMON_SQUEEZY_WEBHOOK_SECRET"]) -> Any:
    headers = {"X-Event-Name": payload["meta"]["event_name"]}
    return post_signed(
        client, "lemon_squeezy", payload, secret=secret, header="X-Signature", headers=headers, hex_digest=True
    )


@pytest.fixture
def deliver(relay):  # type: ignore[no-untyped-def]
    client, store, worker = relay

    def send(payload: dict[str, Any]) -> str:
        # Lemon Squeezy retries anything but 200.
        return drain_accepted(store, worker, _post(client, payload), status_code=200)

    return send


def test_a_forged_or_repeated_webhook_is_refused_or_answered_duplicate(relay):
    client, store, worker = relay
    order = _sample("order_created.json")
    forged = _post(client, order, secret="not-the-secret")
    assert forged.status_code == 401 and forged.get_json()["error"] == "authentication_failed"
    first = _post(client, order)
    again = _post(client, order)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.get_json() == {"status": "duplicate", "id": first.get_json()["id"]}


def test_a_paid_order_is_counted_in_dollars_and_a_refund_cancels_its_market_order(deliver, sandbox):
    assert deliver(_sample("order_created.json")) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 11.99)
    assert (profile.fields["_fname"], profile.fields["_lname"]) == ("Darlene", "Daugherty")
    assert sandbox.sandbox.orders["1"]["status"] == "paid"
    assert deliver(_sample("order_refunded.json")) == "delivered"
    assert sandbox.sandbox.orders["1"]["status"] == "canceled"
    assert "order_refunded" in profile.fields["tags"] and profile.fields["orders_count"] == 1
    euros = _sample("subscription_payment_success.json")  # a renewal in euros: its total_usd is added
    assert deliver(euros) == "delivered"
    assert profile.fields["revenue"] == pytest.approx(11.99 + 13.01)
    pending = _sample("order_created-pending.json")
    pending["data"]["id"] = "2"
    assert deliver(pending) == "delivered"
    assert profile.fields["orders_count"] == 1 and "order_pending" in profile.fields["tags"]


def test_test_mode_orders_and_renewals_reach_the_profile_uncounted(deliver, sandbox):
    """A test-mode webhook (meta.test_mode true) may share the live one's URL and secret: its order and renewal
    update the buyer, tagged test_order, and count nothing; no order goes to the market module."""
    order, renewal = _sample("order_created.json"), _sample("subscription_payment_success.json")
    for sample in (order, renewal):
        sample["meta"]["test_mode"] = True
    assert [deliver(order), deliver(renewal)] == ["delivered", "delivered"]
    [profile] = sandbox.sandbox.profiles.values()
    assert "test_order" in profile.fields["tags"]
    assert "orders_count" not in profile.fields and "revenue" not in profile.fields
    assert sandbox.sandbox.orders == {}


def test_a_subscriptions_status_is_one_tag_that_follows_it(deliver, sandbox):
    assert deliver(_sample("subscription_created.json")) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert [tag for tag in profile.fields["tags"] if tag.startswith("subscription_")] == ["subscription_active"]
    assert deliver(_sample("subscription_cancelled.json")) == "delivered"
    assert [tag for tag in profile.fields["tags"] if tag.startswith("subscription_")] == ["subscription_cancelled"]
    assert "subscriber" in profile.fields["tags"]
