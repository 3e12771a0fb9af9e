"""Gumroad through the real app and worker to the sandbox upstream on loopback.

Gumroad cannot sign: its ping URL carries the token. It takes 200 alone as delivered, posts form-urlencoded
bodies (nested values as bracketed keys), and names no event: the payload's shape says which it is. A sale is
counted once in US dollars; a refund cancels its market order; a membership's status is one tag.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest

from .conftest import MAPPINGS, SECRETS, drain_accepted, hand_driven, quick_retry_settings

EXAMPLES = MAPPINGS / "examples" / "gumroad"
FORM = "application/x-www-form-urlencoded"
HOOK = "/hooks/gumroad?token=" + SECRETS["GUMROAD_WEBHOOK_TOKEN"]


def _fields(name: str, **changes: str) -> list[tuple[str, str]]:
    pairs = urllib.parse.parse_qsl((EXAMPLES / name).read_text(encoding="utf-8"), keep_blank_values=True)
    return [(key, changes.pop(key, value)) for key, value in pairs] + list(changes.items())


@pytest.fixture
def relay(tmp_path, sandbox):  # type: ignore[no-untyped-def]
    yield from hand_driven(quick_retry_settings(tmp_path, sandbox, RELAY_MARKET_ENDPOINT="web-shop"))


@pytest.fixture
def deliver(relay):  # type: ignore[no-untyped-def]
    client, store, worker = relay

    def send(pairs: list[tuple[str, str]]) -> str:
        response = client.post(HOOK, data=urllib.parse.urlencode(pairs), content_type=FORM)
        return drain_accepted(store, worker, response, status_code=200)  # Gumroad sends anything else again

    return send


def _statuses(profile: Any) -> list[str]:
    return [tag for tag in profile.fields["tags"] if tag.startswith("subscription_")]


def test_a_ping_sent_again_is_a_duplicate_and_one_without_the_token_is_refused(relay):
    client, _store, _worker = relay
    body = urllib.parse.urlencode(_fields("sale.txt"))
    first = client.post(HOOK, data=body, content_type=FORM)
    again = client.post(HOOK, data=body, content_type=FORM)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.get_json() == {"status": "duplicate", "id": first.get_json()["id"]}
    refused = client.post("/hooks/gumroad?token=guess", data=body, content_type=FORM)
    assert refused.status_code == 401


def test_a_sale_is_counted_once_in_dollars_and_its_refund_cancels_the_market_order(deliver, sandbox):
    assert deliver(_fields("sale.txt")) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 49)
    assert profile.fields["email"] == "lea.martin@example.com" and "order_paid" in profile.fields["tags"]
    assert sandbox.sandbox.orders["Xb2nQ8rT4kLm1vWc7yZa0g=="]["status"] == "paid"
    # The same sale again in another body (a field Gumroad added since): not counted twice.
    assert deliver(_fields("sale.txt", quantity="1", affiliate="")) == "delivered"
    assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 49)
    assert deliver(_fields("refund.txt")) == "delivered"
    assert sandbox.sandbox.orders["Xb2nQ8rT4kLm1vWc7yZa0g=="]["status"] == "canceled"
    assert "order_refunded" in profile.fields["tags"] and profile.fields["revenue"] == 49


def test_a_test_purchase_counts_nothing(deliver, sandbox):
    assert deliver(_fields("sale-test.txt")) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert "test_order" in profile.fields["tags"] and "orders_count" not in profile.fields
    assert sandbox.sandbox.orders == {}


def test_a_memberships_charges_add_up_and_its_status_is_one_tag(deliver, sandbox):
    assert deliver(_fields("membership-sale.txt")) == "delivered"
    [profile] = sandbox.sandbox.profiles.values()
    assert _statuses(profile) == ["subscription_active"] and "subscriber" in profile.fields["tags"]
    assert deliver(_fields("renewal.txt")) == "delivered"
    assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 30)
    assert "renewal_paid" in profile.fields["tags"]
    for name, status in [
        ("cancellation.txt", "subscription_cancelled"),
        ("subscription-ended.txt", "subscription_expired"),
        ("subscription-restarted.txt", "subscription_active"),
    ]:
        assert deliver(_fields(name)) == "delivered"
        assert _statuses(profile) == [status], name
