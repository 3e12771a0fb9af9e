"""A customer's marketing consent follows them upstream: an opt-out as much as an opt-in.

Shopify's consent topics through the real app and worker to the sandbox upstream on loopback: a customer
who subscribed at sign-up, then unsubscribed in the shop, ends with the e-mail subscription unsubscribed;
an SMS opt-in finds the same profile by its phone.
"""

from __future__ import annotations

import json

import pytest

from .conftest import MAPPINGS, SECRETS, body_digest, drain, hand_driven, post_signed, quick_retry_settings

EXAMPLES = MAPPINGS / "examples" / "shopify"


@pytest.fixture
def relay(tmp_path, sandbox):  # type: ignore[no-untyped-def]
    yield from hand_driven(quick_retry_settings(tmp_path, sandbox, RELAY_MAX_ATTEMPTS="3"))


@pytest.fixture
def shop(relay):  # type: ignore[no-untyped-def]
    """Post one signed Shopify webhook and deliver it: its final status, or the answer's (`ignored`)."""
    client, store, worker = relay

    def deliver(topic: str, payload: dict) -> str:  # type: ignore[type-arg]
        response = post_signed(
            client,
            "shopify",
            payload,
            secret=SECRETS["SHOPIFY_WEBHOOK_SECRET"],
            header="X-Shopify-Hmac-Sha256",
            headers={"X-Shopify-Topic": topic, "X-Shopify-Webhook-Id": f"{topic}-{body_digest(payload)[:16]}"},
        )
        assert response.status_code in (200, 202), response.get_json()
        if response.status_code == 200:
            return str(response.get_json()["status"])
        return drain(store, worker, response.get_json()["id"])

    return deliver


def _subscriptions(sandbox, channel: str) -> list[str]:  # type: ignore[no-untyped-def]
    [profile] = sandbox.sandbox.profiles.values()
    return [item["status"] for item in profile.subscriptions if item["channel"] == channel]


def test_an_opt_out_in_the_shop_unsubscribes_the_profile_and_an_sms_opt_in_finds_it_by_phone(shop, sandbox):
    customer = json.loads((EXAMPLES / "customers-create.json").read_text(encoding="utf-8"))
    customer.update({"phone": "+16135550143", "sms_marketing_consent": None})
    assert shop("customers/create", customer) == "delivered"
    assert _subscriptions(sandbox, "email") == ["subscribed"]
    consent = json.loads((EXAMPLES / "customers_email_marketing_consent-update.json").read_text(encoding="utf-8"))
    consent.update({"customer_id": customer["id"], "email_address": customer["email"].upper()})
    consent["email_marketing_consent"]["state"] = "unsubscribed"
    assert shop("customers_email_marketing_consent/update", consent) == "delivered"
    assert _subscriptions(sandbox, "email") == ["unsubscribed"]
    sms = {"id": customer["id"], "phone": "+1 613-555-0143", "sms_marketing_consent": {"state": "subscribed"}}
    assert shop("customers_marketing_consent/update", sms) == "delivered"
    assert len(sandbox.sandbox.profiles) == 1  # the same customer, found by phone
    assert _subscriptions(sandbox, "sms") == ["subscribed"]
    assert shop("customers_marketing_consent/update", {**sms, "phone": None}) == "ignored"
