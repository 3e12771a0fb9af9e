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
from relay.mapping.loader import load_sources

from .conftest import FIXTURES, MAPPINGS, SECRETS

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


@pytest.mark.parametrize("name", ["tilda", "jotform", "google_forms", "elementor"])
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
