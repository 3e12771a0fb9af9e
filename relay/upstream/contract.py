"""Constants of the upstream contract (see the Altcraft contract draft)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "CHANNELS",
    "CHANNEL_IDENTITY",
    "MATCHING_MODES",
    "METHODS",
    "OPERATORS",
    "ORDERS_METHOD",
    "ORDER_STATUSES",
    "PROFILE_METHODS",
    "SUBSCRIPTION_STATUSES",
    "missing_match",
]

PROFILE_METHODS = ("profiles/update", "profiles/import")
# A shop's order, with its lines, for Altcraft's market module: made after a rule's profile call, when the
# rule has an `order` section (altcraft-sources: market/orders/import).
ORDERS_METHOD = "market/orders/import"
METHODS = (*PROFILE_METHODS, ORDERS_METHOD)
ORDER_STATUSES = ("new", "paid", "delivered", "canceled", "part_refunded")

# mode -> (keys that must all be present, keys of which at least one must be)
MATCHING_MODES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "email": (("email",), ()),
    "email_profile": (("email",), ()),
    "email_sub": (("email",), ()),
    "phone": (("phone",), ()),
    "phone_sub": (("phone",), ()),
    "profile_id": (("profile_id",), ()),
    "push_sub": (("provider", "subscription_id"), ()),
    "custom": (("field_name", "field_value"), ()),
    "custom_sub": (("field_name", "field_value"), ()),
    "email_phone": ((), ("email", "phone")),
    "email_phone_sub": ((), ("email", "phone")),
}

MATCHING_KEYS = ("email", "phone", "profile_id", "provider", "subscription_id", "field_name", "field_value")

OPERATORS = ("set", "unset", "incr", "add", "delete", "upsert")

CHANNELS = ("email", "sms", "push", "telegram_bot", "whatsapp", "viber", "notify")

# channel -> the identity keys of the flat form
CHANNEL_IDENTITY: dict[str, tuple[str, ...]] = {
    "email": ("email",),
    "sms": ("phone",),
    "push": ("provider", "subscription_id"),
    "telegram_bot": ("cc_data.id",),
    "whatsapp": ("cc_data.phone",),
    "viber": ("cc_data.phone",),
    "notify": ("cc_data.phone",),
}

SUBSCRIPTION_STATUSES = {
    "subscribed": 0,
    "unsubscribed": 1,
    "complained": 2,
    "hardbounced": 3,
    "unconfirmed": 4,
    "suspended": 5,
    "invalid": 6,
}


def missing_match(mode: str, body: Mapping[str, Any]) -> str | None:
    """What `body` lacks of the keys matching `mode` needs (`email`; `email or phone`), or None when it has
    them (or the mode is unknown: the mode's own check says so)."""
    required, one_of = MATCHING_MODES.get(mode, ((), ()))
    missing = [key for key in required if body.get(key) in (None, "")]
    if missing:
        return ", ".join(missing)
    if one_of and not any(body.get(key) not in (None, "") for key in one_of):
        return " or ".join(one_of)
    return None
