"""Property-based: no payload shape makes translation fail with anything but a mapping error."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.errors import MappingError
from relay.mapping.loader import load_sources
from relay.mapping.translate import TranslateContext, translate

from .conftest import MAPPINGS

SOURCES = load_sources(MAPPINGS)
EVENTS = [
    "orders/create",
    "orders/paid",
    "checkouts/create",
    "customers/create",
    "order.created",
    "order.updated",
    "customer.created",
    "orders/destroy",
    "store/order/created",
    "store/customer/created",
    "store/subscriber/created",
    "order.create",
    None,
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["a@example.com", "8 (912) 345-67-89", "81.2.69.142", "02.04.1990", "yes", "store/order/created"]),
)
keys = st.sampled_from(
    [
        "email",
        "Email",
        "phone",
        "Phone",
        "Name",
        "name",
        "customer",
        "billing",
        "data",
        "payload",
        "object",
        "customer_details",
        "answers",
        "fields",
        "form_response",
        "rawRequest",
        "payment",
        "browser_ip",
        "type",
        "triggerType",
        "value",
        "first_name",
        "status",
        "total_price",
        "client",
        "subscribe",
        "fields_values",
        "handle",
        "scope",
        "id",
        "billing_address",
        "is_email_opt_in",
        "status_id",
        "ip_address",
        "line_items",
        "order_lines",
        "products",
        "lineItems",
        "quantity",
        "sku",
        "currency",
        "orderid",
        "x",
    ]
)
payloads = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=6)),
    max_leaves=30,
)

objects = st.dictionaries(keys, payloads, max_size=6)
# What a provider's API answers a fetch: anything, or shaped like BigCommerce's order, customer list and
# subscriber, with anything inside.
documents = st.one_of(
    payloads,
    st.fixed_dictionaries(
        {},
        optional={
            "billing_address": objects,
            "status_id": scalars,
            "is_email_opt_in": scalars,
            "ip_address": scalars,
            "data": st.one_of(payloads, objects, st.lists(objects, max_size=2)),
        },
    ),
)


@pytest.mark.parametrize("name", sorted(SOURCES))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads, event=st.sampled_from(EVENTS), document=documents)
def test_translation_fails_only_with_mapping_errors(name, payload, event, document):
    """Any JSON-like payload, and any document a fetch gets (BigCommerce's order), yields a translation or
    a MappingError, never another exception."""
    # The event as Shopify and WooCommerce send it, and as relay keeps the one a hook URL names (InSales).
    headers = {"X-Shopify-Topic": event, "X-WC-Webhook-Topic": event, "X-Relay-Event": event} if event else {}
    if SOURCES[name].fetches and event:
        # BigCommerce, Squarespace and Ecwid name the event and the record in the body; the rules then read
        # the document fetched.
        named = {"scope": event, "topic": event, "eventType": event, "entityId": 7}
        record = {"type": "x", "id": 250, "orderId": "XJ12H"}
        payload = {**(payload if isinstance(payload, dict) else {}), **named, "data": record}
    settings = (
        "BIGCOMMERCE_STORE_HASH",
        "BIGCOMMERCE_API_TOKEN",
        "SQUARESPACE_API_KEY",
        "ECWID_STORE_ID",
        "ECWID_API_TOKEN",
        "RELAY_MARKET_ENDPOINT",  # orders and their lines too
    )
    context = TranslateContext(env=dict.fromkeys(settings, "x"))
    try:
        translate(SOURCES[name], payload, headers=headers, context=context, fetch=lambda _request: document)
    except MappingError:
        pass


_KEYS = st.sampled_from(["a", "b", "email", "customer"])
_LEAVES = st.sampled_from([None, False, True, 0, 1, "", "x", [], {}, [1], 0.0])
_NESTED = st.recursive(_LEAVES, lambda inner: st.dictionaries(_KEYS, inner, max_size=4), max_leaves=12)
_PATHS = st.lists(_KEYS, min_size=1, max_size=3).map(".".join)
_LITERALS = st.sampled_from(["'x'", "''", "`0`", "`1`", "`0.0`", "`true`", "`false`", "`null`", "`[]`", "`{}`"])
_DIRECT = st.recursive(
    st.one_of(_PATHS, _LITERALS),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from([" || ", " && ", " == ", " != "]), inner).map(lambda t: f"({''.join(t)})"),
        inner.map(lambda e: f"!({e})"),
        st.lists(inner, min_size=1, max_size=3).map(lambda items: f"[{', '.join(items)}]"),
        st.tuples(_PATHS, st.lists(inner, min_size=1, max_size=3)).map(lambda t: f"{t[0]}.[{', '.join(t[1])}]"),
    ),
    max_leaves=6,
)


@settings(max_examples=600, deadline=None)
@given(expression=_DIRECT, data=_NESTED)
def test_direct_evaluation_agrees_with_jmespath(expression, data):
    """The direct evaluation of paths, ||, &&, !, ==, !=, literals and lists of expressions gives exactly what
    JMESPath gives."""
    import jmespath

    from relay.mapping.expressions import _direct, compile_expression, search

    assert _direct(compile_expression(expression).parsed) is not None  # it is the fast path under test
    ours, theirs = search(expression, data), jmespath.search(expression, data)
    assert (type(ours), ours) == (type(theirs), theirs)  # 0 and False are equal in Python, not here
