"""Fuzzing the edge: random sources, content types, bodies, headers and signatures never make a 5xx."""

from __future__ import annotations

import json
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.web import create_app

from .conftest import BUILT_IN_SOURCES, SECRETS, make_settings

SOURCES = [*BUILT_IN_SOURCES, "nope", "../etc", "tilda/extra"]
CONTENT_TYPES = [
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "multipart/form-data",
    "application/xml",
    "text/xml",
    "text/plain",
    "",
    "image/png",
    "application/json; charset=latin-1",
    "application/json; charset=nope",
    "application/vnd.api+json",
]
SIGNATURE_HEADERS = [
    "X-Shopify-Hmac-Sha256",
    "X-WC-Webhook-Signature",
    "Typeform-Signature",
    "Tally-Signature",
    "Stripe-Signature",
    "x-webflow-signature",
    "x-webflow-timestamp",
    "Paddle-Signature",
    "X-Shopify-Topic",
    "X-WC-Webhook-Topic",
    "X-Shopify-Test",
    "X-Forwarded-For",
    "X-Relay-Token",
]

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)),
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=12), st.text(max_size=20), max_size=6).map(
        lambda d: "&".join(f"{k}={v}" for k, v in d.items()).encode("utf-8", "surrogatepass")
    ),
    st.sampled_from(
        [
            b"test=test",
            b"webhook_id=7",
            b"<xml><a>1</a></xml>",
            b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--xyz--\r\n',
            b"[" * 200,
            b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x>&e;</x>",
        ]
    ),
)
headers = st.dictionaries(
    st.sampled_from(SIGNATURE_HEADERS),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
    max_size=4,
)


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):  # type: ignore[no-untyped-def]
    app = create_app(make_settings(tmp_path_factory.mktemp("fuzz"), RELAY_MAX_BODY_BYTES="4096"))
    yield app
    app.extensions["relay"]["store"].close()


# What a request is made of, for each fuzz test; the examples share one app, so the fixture is not per example.
REQUEST_PARTS = {
    "source": st.sampled_from(SOURCES),
    "content_type": st.sampled_from(CONTENT_TYPES),
    "body": bodies,
    "extra": headers,
}
UNHURRIED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]}


@settings(max_examples=400, **UNHURRIED)
@given(**REQUEST_PARTS, good_token=st.booleans())
def test_no_input_makes_a_5xx_and_failed_auth_stores_nothing(fuzz_app, source, content_type, body, extra, good_token):
    """Whatever arrives, the answer is below 500 and in JSON; a 401 leaves the store untouched."""
    store = fuzz_app.extensions["relay"]["store"]
    before = sum(store.counts().values())
    token = SECRETS.get(f"{source.upper()}_WEBHOOK_TOKEN", "x") if good_token else "wrong"
    response = fuzz_app.test_client().post(
        f"/hooks/{source}?token={token}", data=body, headers={**extra, "Content-Type": content_type}
    )
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json
    after = sum(store.counts().values())
    accepted = response.status_code in (200, 202) and response.get_json().get("status") == "accepted"
    assert after == before + (1 if accepted else 0)


def test_xml_bomb_is_refused_fast_with_flat_memory(client):
    """A billion-laughs document is a 400 in well under a second, without growing memory."""
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + b"".join(
            f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'.encode()
            for i in range(1, 10)
        )
        + b"]><lolz>&lol9;</lolz>"
    )
    tracemalloc.start()
    started = time.perf_counter()
    response = client.post(
        "/hooks/tilda?token=" + SECRETS["TILDA_WEBHOOK_TOKEN"], data=bomb, content_type="application/xml"
    )
    elapsed = time.perf_counter() - started
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert response.status_code == 400 and response.get_json()["error"] == "unparsable"
    assert elapsed < 0.5
    assert peak < 2 * 1024 * 1024


@settings(max_examples=300, **UNHURRIED)
@given(
    **REQUEST_PARTS, query=st.dictionaries(st.sampled_from(["topic", "token", "x"]), st.text(max_size=20), max_size=2)
)
def test_no_payload_tried_on_a_mapping_makes_a_5xx_or_an_error_of_relays_own(
    fuzz_app, source, content_type, body, extra, query
):
    """The admin API's `POST /sources/<name>/preview` answers below 500 whatever the sample, stores nothing,
    and a sample the mapping cannot take says why, never as an error of relay's own (a bug)."""
    store = fuzz_app.extensions["relay"]["store"]
    before = sum(store.counts().values())
    sample = {"body": body.decode("utf-8", "replace"), "content_type": content_type, "headers": extra, "query": query}
    response = fuzz_app.test_client().post(
        f"/admin/api/sources/{source}/preview",
        json=sample,
        headers={"Authorization": "Bearer " + SECRETS["RELAY_ADMIN_TOKEN"]},
    )
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json
    assert "error of relay's own" not in str(response.get_json().get("error")), response.get_json()
    assert sum(store.counts().values()) == before
