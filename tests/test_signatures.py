"""Every signing source accepts a genuine request and refuses a forged, stale or unsigned one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import pytest

from relay.auth import authenticate
from relay.errors import AuthenticationFailed
from relay.mapping.loader import load_source_file, load_sources

from .conftest import FIXTURES, MAPPINGS, SECRETS, make_settings

SOURCES = load_sources(MAPPINGS)
BODY = json.dumps({"email": "a@example.com", "id": 1, "event_type": "customer.created"}).encode()


def b64(secret: str, message: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def hexed(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def shopify(secret: str, body: bytes, now: float) -> dict[str, str]:
    return {"X-Shopify-Hmac-Sha256": b64(secret, body)}


def woocommerce(secret: str, body: bytes, now: float) -> dict[str, str]:
    return {"X-WC-Webhook-Signature": b64(secret, body)}


def typeform(secret: str, body: bytes, now: float) -> dict[str, str]:
    return {"Typeform-Signature": "sha256=" + b64(secret, body)}


def tally(secret: str, body: bytes, now: float) -> dict[str, str]:
    return {"Tally-Signature": b64(secret, body)}


def stripe(secret: str, body: bytes, now: float) -> dict[str, str]:
    ts = str(int(now))
    return {"Stripe-Signature": f"t={ts},v1={hexed(secret, ts.encode() + b'.' + body)},v0=ignored"}


def calendly(secret: str, body: bytes, now: float) -> dict[str, str]:
    ts = str(int(now))
    return {"Calendly-Webhook-Signature": f"t={ts},v1={hexed(secret, ts.encode() + b'.' + body)}"}


def webflow(secret: str, body: bytes, now: float) -> dict[str, str]:
    ts = str(int(now * 1000))
    return {"x-webflow-timestamp": ts, "x-webflow-signature": hexed(secret, ts.encode() + b":" + body)}


def paddle(secret: str, body: bytes, now: float) -> dict[str, str]:
    ts = str(int(now))
    return {"Paddle-Signature": f"ts={ts};h1={hexed(secret, ts.encode() + b':' + body)}"}


SIGNERS: dict[str, Callable[[str, bytes, float], dict[str, str]]] = {
    "shopify": shopify,
    "woocommerce": woocommerce,
    "typeform": typeform,
    "tally": tally,
    "stripe": stripe,
    "webflow": webflow,
    "paddle": paddle,
    "calendly": calendly,
}


def env_for(name: str, secret: str) -> dict[str, str]:
    return {f"{name.upper()}_WEBHOOK_SECRET": secret}


@pytest.mark.parametrize("name", sorted(SIGNERS))
def test_genuine_accepted_forged_refused(name):
    """A request signed with the secret passes; a changed body, a wrong secret or no header fail."""
    secret = SECRETS[f"{name.upper()}_WEBHOOK_SECRET"]
    now = time.time()
    headers = SIGNERS[name](secret, BODY, now)
    source = SOURCES[name]
    authenticate(source, body=BODY, headers=headers, query={}, env=env_for(name, secret), now=now)
    forged_cases = [
        (BODY + b" ", headers),
        (BODY, SIGNERS[name]("not-the-secret", BODY, now)),
        (BODY, {}),
    ]
    for body, forged in forged_cases:
        with pytest.raises(AuthenticationFailed):
            authenticate(source, body=body, headers=forged, query={}, env=env_for(name, secret), now=now)


@pytest.mark.parametrize("name", ["stripe", "webflow", "paddle"])
def test_replay_after_tolerance_is_refused(name):
    """A genuine signature older than five minutes is refused."""
    secret = SECRETS[f"{name.upper()}_WEBHOOK_SECRET"]
    signed_at = time.time() - 301
    headers = SIGNERS[name](secret, BODY, signed_at)
    with pytest.raises(AuthenticationFailed, match="tolerance"):
        authenticate(SOURCES[name], body=BODY, headers=headers, query={}, env=env_for(name, secret))
    authenticate(SOURCES[name], body=BODY, headers=headers, query={}, env=env_for(name, secret), now=signed_at + 299)


def test_calendlys_signature_is_refused_after_three_minutes():
    """Calendly tells receivers to refuse a signature older than 3 minutes."""
    secret = SECRETS["CALENDLY_WEBHOOK_SECRET"]
    signed_at = time.time() - 181
    headers = calendly(secret, BODY, signed_at)
    with pytest.raises(AuthenticationFailed, match="tolerance"):
        authenticate(SOURCES["calendly"], body=BODY, headers=headers, query={}, env=env_for("calendly", secret))
    authenticate(
        SOURCES["calendly"], body=BODY, headers=headers, query={}, env=env_for("calendly", secret), now=signed_at + 179
    )


@pytest.mark.parametrize("stamp", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_a_timestamp_that_is_no_time_is_outside_the_tolerance(stamp):
    """float() reads 'nan', and NaN is never greater than the tolerance: a signature made over 'nan' was
    accepted at any time (which only the secret's holder can make, but it is no time at all)."""
    secret = SECRETS["STRIPE_WEBHOOK_SECRET"]
    header = f"t={stamp},v1={hexed(secret, stamp.encode() + b'.' + BODY)}"
    with pytest.raises(AuthenticationFailed, match="tolerance"):
        authenticate(
            SOURCES["stripe"], body=BODY, headers={"Stripe-Signature": header}, query={}, env=env_for("stripe", secret)
        )


def test_paddle_published_golden_vectors():
    """Paddle's SDK vectors verify: the fixture body, and a header with a bogus h1 beside the right one."""
    body = (FIXTURES / "paddle-customer.created.json").read_bytes()
    env = {"PADDLE_WEBHOOK_SECRET": "pdl_ntfset_01hs0t3tw21j988db1pam5xg8m_GrOWLNef+vmtjJYq4mSnHNzvc8uWoJ1I"}
    header = "ts=1710498758;h1=558bf93944dbeb4790c7a8af6cb2ea435c8ca9c8396aafc1a4e37424ac132744"
    authenticate(SOURCES["paddle"], body=body, headers={"Paddle-Signature": header}, query={}, env=env, now=1710498758)
    multi = "ts=1696195954;h1=dummy;h1=d96299976a6eb066f484d7fde011ac56fc32b38fc9940bc419d6e537fdc6ef02"
    env = {"PADDLE_WEBHOOK_SECRET": "pdl_ntf_01hbpjmytsa32fhr36nqgc3kgb_WvRO0eL4Bj9rgYYIBZY6wZhG4EHy9jzh"}
    authenticate(
        SOURCES["paddle"], body=b"hello-world", headers={"Paddle-Signature": multi}, query={}, env=env, now=1696195954
    )
    with pytest.raises(AuthenticationFailed):
        authenticate(
            SOURCES["paddle"],
            body=b"hello-world!",
            headers={"Paddle-Signature": multi},
            query={},
            env=env,
            now=1696195954,
        )


def test_two_secrets_at_once_for_rotation():
    """During rotation the variable holds old,new and both verify; a third does not."""
    env = {"SHOPIFY_WEBHOOK_SECRET": "old-secret,new-secret"}
    for secret in ("old-secret", "new-secret"):
        authenticate(SOURCES["shopify"], body=BODY, headers=shopify(secret, BODY, 0), query={}, env=env)
    with pytest.raises(AuthenticationFailed):
        authenticate(SOURCES["shopify"], body=BODY, headers=shopify("other", BODY, 0), query={}, env=env)


HUBSPOT_URL = "https://hooks.example.com/hooks/hubspot?portal=27145807"


def hubspot(secret: str, body: bytes, now: float, *, method: str = "POST", url: str = HUBSPOT_URL) -> dict[str, str]:
    """HubSpot's v3 signature: base64 HMAC-SHA256 of method, URL, body and the timestamp in milliseconds."""
    ts = str(int(now * 1000))
    return {
        "X-HubSpot-Request-Timestamp": ts,
        "X-HubSpot-Signature-v3": b64(secret, method.encode() + url.encode() + body + ts.encode()),
    }


def test_hubspot_signature_covers_method_url_body_and_timestamp():
    """A genuine v3 signature passes; another URL, method, body, secret or an old timestamp fails."""
    secret = SECRETS["HUBSPOT_WEBHOOK_SECRET"]
    env = env_for("hubspot", secret)
    now = time.time()
    source = SOURCES["hubspot"]
    authenticate(source, body=BODY, headers=hubspot(secret, BODY, now), query={}, env=env, now=now, url=HUBSPOT_URL)
    refused = [
        (BODY, hubspot(secret, BODY, now), "POST", HUBSPOT_URL.replace("https:", "http:"), now, "does not match"),
        (BODY, hubspot(secret, BODY, now), "POST", HUBSPOT_URL + "&x=1", now, "does not match"),
        (BODY, hubspot(secret, BODY, now, method="PUT"), "POST", HUBSPOT_URL, now, "does not match"),
        (BODY + b" ", hubspot(secret, BODY, now), "POST", HUBSPOT_URL, now, "does not match"),
        (BODY, hubspot("other", BODY, now), "POST", HUBSPOT_URL, now, "does not match"),
        (BODY, hubspot(secret, BODY, now - 301), "POST", HUBSPOT_URL, now, "tolerance"),
        (BODY, hubspot(secret, BODY, now), "POST", None, now, "covers the URL"),
    ]
    for body, headers, method, url, at, reason in refused:
        with pytest.raises(AuthenticationFailed, match=reason):
            authenticate(source, body=body, headers=headers, query={}, env=env, now=at, method=method, url=url)
    # HubSpot signs the URL with %3A, %40, %2C... decoded, and other escapes (%7E, %26) as they are.
    sent = HUBSPOT_URL + "&from=a%3ab%40c%2Cd&x=%7E%26"
    decoded = HUBSPOT_URL + "&from=a:b@c,d&x=%7E%26"
    authenticate(
        source, body=BODY, headers=hubspot(secret, BODY, now, url=decoded), query={}, env=env, now=now, url=sent
    )
    with pytest.raises(AuthenticationFailed, match="does not match"):
        authenticate(
            source, body=BODY, headers=hubspot(secret, BODY, now, url=sent), query={}, env=env, now=now, url=sent
        )


def _guide_block(first_line: str) -> str:
    """The YAML block of mappings/README.md that begins with `first_line`."""
    guide = (MAPPINGS / "README.md").read_text(encoding="utf-8")
    [block] = [block.split("```", 1)[0] for block in guide.split("```yaml\n")[1:] if block.startswith(first_line)]
    return block


# The guide's Standard Webhooks block, and the specification's own test vector (also Svix's).
STANDARD = (
    "version: 1\nsource: standard\n"
    + _guide_block("# auth for Standard Webhooks").replace("BIGCOMMERCE_WEBHOOK_SECRET", "STANDARD_WEBHOOK_SECRET")
    + "rules:\n  - name: any\n    ignore: signatures only\n"
)
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_AT = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_standard_webhooks_vector_verifies_from_a_mapping_file(tmp_path):
    """BigCommerce's (and Svix's) scheme is a mapping file, no code: another header signed in, a base64 key
    behind whsec_, several signatures in one header. The specification's vector passes; a changed id, a
    missing id, the secret taken as text or a bogus signature alone fail."""
    (tmp_path / "standard.yaml").write_text(STANDARD)
    source = load_sources(tmp_path)["standard"]
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_AT),
        "webhook-signature": f"v1,bm90LXRoaXMtb25l v2,other {VECTOR_SIGNATURE}",
    }

    def check(secret: str = VECTOR_SECRET, source=source, **changed: str | None) -> None:  # type: ignore[no-untyped-def]
        sent = {key: value for key, value in {**headers, **changed}.items() if value is not None}
        env = {"STANDARD_WEBHOOK_SECRET": secret}
        authenticate(source, body=VECTOR_BODY, headers=sent, query={}, env=env, now=VECTOR_AT + 10)

    check()
    check(secret=VECTOR_SECRET.removeprefix("whsec_"))  # the key alone, as BigCommerce's docs hand it over
    for changed, reason in [
        ({"webhook-id": "msg_other"}, "does not match"),
        ({"webhook-id": None}, "missing header webhook-id, which the signature covers"),
        ({"webhook-signature": "v1,bm90LXRoaXMtb25l"}, "does not match"),
    ]:
        with pytest.raises(AuthenticationFailed, match=reason):
            check(**changed)
    (tmp_path / "standard.yaml").write_text(STANDARD.replace("key_encoding: base64", "key_encoding: text"))
    with pytest.raises(AuthenticationFailed, match="does not match"):
        check(source=load_sources(tmp_path)["standard"])


SQUARESPACE = """version: 1
source: squarespace
kind: shop
auth: {scheme: hmac, header: Squarespace-Signature, encoding: hex, KEY, secret: "${SQUARESPACE_WEBHOOK_SECRET}"}
rules:
  - name: any
    ignore: signatures only
"""


@pytest.mark.parametrize("key", ["hex_key: true", "key_encoding: hex"])
def test_a_hex_written_secret_is_decoded_to_its_bytes(tmp_path, key):
    """Squarespace keys its HMAC with the hex-decoded secret; `key_encoding: hex` says so, as `hex_key: true`
    did before it (files that use it keep working). The vector is the samples' own, computed with the rule."""
    (tmp_path / "squarespace.yaml").write_text(SQUARESPACE.replace("KEY", key))
    source = load_sources(tmp_path)["squarespace"]
    body = (FIXTURES / "squarespace-order.create.json").read_bytes()
    env = {"SQUARESPACE_WEBHOOK_SECRET": "b4c1e1f0d3a2c5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0"}
    signed = {"Squarespace-Signature": "a1e0a3ac1a2b764628e5de5558726aa721c6225ff81b5b54c34cb99bc6df58be"}
    authenticate(source, body=body, headers=signed, query={}, env=env)
    with pytest.raises(AuthenticationFailed, match="does not match"):
        authenticate(source, body=body, headers=signed, query={}, env={"SQUARESPACE_WEBHOOK_SECRET": "not hex"})


def test_the_built_in_squarespace_source_verifies_squarespaces_scheme():
    """The built-in mapping: the samples' vector (key hex-decoded), and a changed body or no header refused."""
    source = SOURCES["squarespace"]
    body = (FIXTURES / "squarespace-order.create.json").read_bytes()
    env = {"SQUARESPACE_WEBHOOK_SECRET": "b4c1e1f0d3a2c5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0"}
    signed = {"Squarespace-Signature": "a1e0a3ac1a2b764628e5de5558726aa721c6225ff81b5b54c34cb99bc6df58be"}
    authenticate(source, body=body, headers=signed, query={}, env=env)
    for forged_body, headers in ((body + b" ", signed), (body, {})):
        with pytest.raises(AuthenticationFailed):
            authenticate(source, body=forged_body, headers=headers, query={}, env=env)


@pytest.mark.parametrize(
    ("env", "headers", "url"),
    [
        ({"RELAY_PUBLIC_URL": "https://hooks.example.com/"}, {}, "https://hooks.example.com"),
        # Behind a proxy that names the scheme and host it was called with, no setting needed.
        (
            {"RELAY_TRUSTED_PROXIES": "1"},
            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com"},
            "https://hooks.example.com",
        ),
        ({}, {"Host": "hooks.example.com"}, "http://hooks.example.com"),
    ],
)
def test_hubspot_hook_verifies_the_url_it_was_called_at(tmp_path, env, headers, url):
    """Through the app: the URL signed is the one the sender called, query as sent; another URL is refused."""
    from relay.web import create_app

    app = create_app(make_settings(tmp_path, **env))
    try:
        client = app.test_client()
        secret = SECRETS["HUBSPOT_WEBHOOK_SECRET"]
        body = (FIXTURES.parent.parent / "mappings/examples/hubspot/workflow-webhook-contact.json").read_bytes()
        target = "/hooks/hubspot?portal=27145807&b=%7E"
        signed = hubspot(secret, body, time.time(), url=url + target)
        sent = {**headers, **signed, "Content-Type": "application/json"}
        answer = client.post(target, data=body, headers=sent)
        assert answer.status_code == 202, answer.get_json()
        forged = hubspot(secret, body, time.time(), url="https://elsewhere.example.com" + target)
        answer = client.post(target, data=body, headers={**headers, **forged, "Content-Type": "application/json"})
        assert answer.status_code == 401 and answer.get_json()["detail"] == "signature does not match"
    finally:
        app.extensions["relay"]["store"].close()


HEADER_TOKEN = """version: 1
source: landing
auth: {scheme: token, secret: "${LANDING_WEBHOOK_TOKEN}", header: Authorization, prefix: "Bearer "}
rules:
  - name: lead
    match:
      email: {path: email, transform: email}
"""


def test_a_token_source_may_name_the_header_its_tool_can_set(tmp_path):
    """Gravity Forms' feeds and Fillout's advanced webhooks let their owner set headers such as
    `Authorization: Bearer <token>` and nothing in the URL: a token source may name that header and its
    prefix. The token is then found there too; it is never stored, whatever the header's name."""
    from relay.web import create_app

    (tmp_path / "landing.yaml").write_text(HEADER_TOKEN)
    source = load_sources(tmp_path)["landing"]
    env = {"LANDING_WEBHOOK_TOKEN": "form-tool-token-7c"}
    for headers, query in [
        ({"Authorization": "Bearer form-tool-token-7c"}, {}),
        ({"authorization": "bearer  form-tool-token-7c "}, {}),
        ({}, {"token": "form-tool-token-7c"}),
        ({"X-Relay-Token": "form-tool-token-7c"}, {}),
    ]:
        authenticate(source, body=b"", headers=headers, query=query, env=env)
    for headers, reason in [
        ({"Authorization": "Basic form-tool-token-7c"}, "or Authorization: Bearer <token>"),
        ({"Authorization": "Bearer other"}, "wrong token"),
        ({}, "missing token"),
    ]:
        with pytest.raises(AuthenticationFailed, match=reason):
            authenticate(source, body=b"", headers=headers, query={}, env=env)
    (tmp_path / "landing.yaml").write_text(HEADER_TOKEN.replace("Authorization", "X-Form-Key").replace("Bearer ", ""))
    app = create_app(make_settings(tmp_path, RELAY_MAPPINGS_DIR=str(tmp_path), **env))
    try:
        client = app.test_client()
        answer = client.post(
            "/hooks/landing", json={"email": "a@example.com"}, headers={"X-Form-Key": env["LANDING_WEBHOOK_TOKEN"]}
        )
        assert answer.status_code == 202
        stored = app.extensions["relay"]["store"].get(answer.get_json()["id"])
        assert "x-form-key" not in {name.lower() for name in stored.headers}
        assert env["LANDING_WEBHOOK_TOKEN"] not in repr(stored)
    finally:
        app.extensions["relay"]["store"].close()


@pytest.mark.parametrize(
    "name",
    [
        "tilda",
        "jotform",
        "google_forms",
        "elementor",
        "contact_form_7",
        "fillout",
        "gravity_forms",
        "insales",
        "unbounce",
        "paperform",
        "gumroad",
    ],
)
def test_token_sources(name):
    """Token sources take ?token= or X-Relay-Token; a wrong or missing token fails; unset fails closed."""
    token = SECRETS[f"{name.upper()}_WEBHOOK_TOKEN"]
    env = {f"{name.upper()}_WEBHOOK_TOKEN": token}
    source = SOURCES[name]
    authenticate(source, body=b"", headers={}, query={"token": token}, env=env)
    authenticate(source, body=b"", headers={"X-Relay-Token": token}, query={}, env=env)
    for query, headers in (({"token": token + "x"}, {}), ({}, {})):
        with pytest.raises(AuthenticationFailed):
            authenticate(source, body=b"", headers=headers, query=query, env=env)
    with pytest.raises(AuthenticationFailed, match=f"{name.upper()}_WEBHOOK_TOKEN"):
        authenticate(source, body=b"", headers={}, query={"token": token}, env={})


def test_gravity_forms_sends_its_token_in_the_header_its_feed_adds(tmp_path):
    """The Webhooks Add-On cannot sign or change the URL's query per entry, but its feed adds request headers:
    `Authorization: Bearer <token>` is taken, and never stored."""
    from relay.web import create_app

    token = SECRETS["GRAVITY_FORMS_WEBHOOK_TOKEN"]
    body = (MAPPINGS / "examples" / "gravity_forms" / "all-fields.json").read_bytes()
    app = create_app(make_settings(tmp_path))
    try:
        client = app.test_client()
        answer = client.post(
            "/hooks/gravity_forms",
            data=body,
            content_type="application/json",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 202, answer.get_json()
        stored = app.extensions["relay"]["store"].get(answer.get_json()["id"])
        assert token not in repr(stored) and "authorization" not in {name.lower() for name in stored.headers}
        wrong = client.post(
            "/hooks/gravity_forms", data=body, content_type="application/json", headers={"Authorization": "Bearer x"}
        )
        assert wrong.status_code == 401
    finally:
        app.extensions["relay"]["store"].close()


def _ecwid(event_id: str, created: float, secret: str = SECRETS["ECWID_WEBHOOK_SECRET"], **data: object) -> tuple:
    body = json.dumps(
        {
            "eventId": event_id,
            "eventCreated": int(created),
            "storeId": 1003,
            "entityId": 7,
            "eventType": "order.created",
            "data": {"orderId": "XJ12H", **data},
        }
    ).encode()
    signature = b64(secret, f"{int(created)}.{event_id}".encode())
    return body, {"X-Ecwid-Webhook-Signature": signature, "Content-Type": "application/json; charset=UTF-8"}


def test_ecwid_signs_the_events_time_and_id_not_the_body():
    """Ecwid's signature is base64 HMAC-SHA256 of "<eventCreated>.<eventId>" from the body: a genuine one
    passes whatever the rest of the body says; another id, an old event, no header, a body that is not a
    JSON object or lacks the id are refused."""
    source = SOURCES["ecwid"]
    env = {"ECWID_WEBHOOK_SECRET": SECRETS["ECWID_WEBHOOK_SECRET"]}
    now = time.time()
    body, headers = _ecwid("80aece08-40e8-4145-8764-6c2f0d38678", now)
    authenticate(source, body=body, headers=headers, query={}, env=env, now=now)
    refused = {
        "another id": (body.replace(b"80aece08", b"80aece09"), headers, now),
        "another secret": (*_ecwid("e1", now, secret="not-it"), now),
        "older than 26 hours": (*_ecwid("e2", now - 93601), now),
        "no header": (body, {}, now),
        "not JSON": (b"eventId=e1", headers, now),
        "not an object": (b"[1, 2]", headers, now),
        "nested past the parse limit": (b"[" * 100_000 + b"]" * 100_000, headers, now),
        "no id": (body.replace(b'"eventId"', b'"eventID"'), headers, now),
    }
    for why, (forged, forged_headers, at) in refused.items():
        with pytest.raises(AuthenticationFailed):
            authenticate(source, body=forged, headers=forged_headers, query={}, env=env, now=at)
            pytest.fail(why)


def test_an_ecwid_signature_is_taken_once_whatever_body_comes_with_it(tmp_path):
    """The body is not signed, so a captured signature could carry another body: relay de-duplicates by the
    signed event id, so the second request, with another order in its body, is answered duplicate and not
    stored; the same id signed again after 26 hours is refused outright (above)."""
    from relay.web import create_app

    app = create_app(make_settings(tmp_path))
    client = app.test_client()
    body, headers = _ecwid("7d1c2b3a-0000-4000-8000-000000000001", time.time())
    first = client.post("/hooks/ecwid", data=body, headers=headers)
    assert first.status_code == 202, first.get_json()
    other_order = body.replace(b'"XJ12H"', b'"ZZ999"')
    second = client.post("/hooks/ecwid", data=other_order, headers=headers)
    assert (second.status_code, second.get_json()["status"]) == (200, "duplicate")
    assert second.get_json()["id"] == first.get_json()["id"]
    app.extensions["relay"]["store"].close()


@pytest.mark.parametrize(
    ("auth", "dedup", "problem"),
    [
        ('signed: "{timestamp}.{field:eventId}", timestamp_body_field: eventCreated', "paths: [eventId]", "{body}"),
        ('signed: "{field:eventId}", tolerance: 60', "paths: [eventId]", "{body}"),
        (
            'signed: "{timestamp}.{field:eventId}", timestamp_body_field: eventCreated, tolerance: 60',
            "paths: [id]",
            "de-duplicate by a signed field",
        ),
    ],
    ids=["no-tolerance", "no-time", "no-dedup"],
)
def test_a_signature_over_fields_must_bind_a_time_and_an_id_taken_once(tmp_path, auth, dedup, problem):
    (tmp_path / "fields.yaml").write_text(
        "version: 1\nsource: fields\n"
        f'auth: {{scheme: hmac, header: X-Sig, {auth}, secret: "${{S}}"}}\n'
        f"dedup: {{{dedup}}}\n"
        "rules:\n  - name: any\n    ignore: signatures only\n"
    )
    source, problems = load_source_file(tmp_path / "fields.yaml")
    assert source is None and any(problem in line for line in problems), problems
