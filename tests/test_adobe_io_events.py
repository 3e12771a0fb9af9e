"""Adobe I/O Events (Adobe Commerce): RSA-SHA256 signatures by published keys, the recipient, the challenge.

A key pair made here stands for Adobe's; its public half is served as a .pem by a real HTTP server on
loopback, where the mapping's `keys_url` setting points, as static.adobeioevents.com serves Adobe's.
"""

from __future__ import annotations

import base64
import json
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from relay.auth import authenticate
from relay.errors import AuthenticationFailed, KeysUnavailable
from relay.mapping.loader import load_sources
from relay.web import create_app

from .conftest import MAPPINGS, LoopbackFake, drain, hand_driven, make_settings, quick_retry_settings

SOURCE = load_sources(MAPPINGS)["adobe_commerce"]
CLIENT_ID = "531f2f763b2f4c34b03001d8bf2bd4df"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_PATH = "/prod/keys/pub-key-voy5XEbWmT.pem"
BODY = (MAPPINGS / "examples" / "adobe_commerce" / "customer-save.json").read_bytes()


class KeyServer(LoopbackFake):
    """Serves the public key at KEY_PATH (404 elsewhere) and counts the requests."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        pem = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                served.requests.append(self.path)
                status, body = (200, pem) if self.path == KEY_PATH else (404, b"Not Found")
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.serve(Handler)


@pytest.fixture
def keys():  # type: ignore[no-untyped-def]
    server = KeyServer()
    yield server
    server.stop()


def sign(body: bytes, key: rsa.RSAPrivateKey = KEY) -> str:
    return base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()


def headers_for(body: bytes, **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "x-adobe-event-id": json.loads(body)["event_id"],
        "x-adobe-digital-signature-1": sign(body),
        "x-adobe-public-key1-path": KEY_PATH,
        **extra,
    }


def check(body: bytes, headers: dict[str, str], keys: KeyServer, client_id: str = CLIENT_ID) -> None:
    env = {"ADOBE_COMMERCE_CLIENT_ID": client_id, "ADOBE_IO_EVENTS_KEYS_URL": keys.url}
    authenticate(SOURCE, body=body, headers=headers, query={}, env=env)


def test_a_signed_event_for_this_registration_passes_and_the_key_is_fetched_once(keys):
    check(BODY, headers_for(BODY), keys)
    check(BODY, headers_for(BODY), keys)
    assert keys.requests == [KEY_PATH]


def test_either_signature_may_verify_during_adobes_key_rotation(keys):
    """Adobe sends two signatures by two keys; one that verifies is enough."""
    headers = headers_for(
        BODY,
        **{"x-adobe-digital-signature-1": sign(BODY, OTHER_KEY)},
        **{"x-adobe-digital-signature-2": sign(BODY), "x-adobe-public-key2-path": KEY_PATH},
    )
    check(BODY, headers, keys)


def test_a_new_key_not_yet_published_does_not_hide_a_signature_that_verifies(keys):
    """During a rotation the first signature's key may not be published yet (404): the second still counts."""
    headers = headers_for(
        BODY,
        **{"x-adobe-public-key1-path": "/prod/keys/pub-key-next.pem"},
        **{"x-adobe-digital-signature-2": sign(BODY), "x-adobe-public-key2-path": KEY_PATH},
    )
    check(BODY, headers, keys)


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ("body", "signature does not match"),
        ("other key", "signature does not match"),
        ("recipient", "another recipient"),
        ("no signature", "missing signature"),
        ("not base64", "signature does not match"),
        ("climbing path", "is not the path of a published key"),
        ("not a pem", "is not the path of a published key"),
        ("unknown key", "no public key is published"),
    ],
)
def test_what_adobe_did_not_sign_for_this_registration_is_refused(keys, change, detail):
    body, headers, client_id = BODY, headers_for(BODY), CLIENT_ID
    if change == "body":
        body = BODY.replace(b"Maria.Garcia", b"Mallory")
    elif change == "other key":
        headers["x-adobe-digital-signature-1"] = sign(BODY, OTHER_KEY)
    elif change == "recipient":
        client_id = "another-registration"
    elif change == "no signature":
        del headers["x-adobe-digital-signature-1"]
    elif change == "not base64":
        headers["x-adobe-digital-signature-1"] = "not base64!"
    elif change == "climbing path":
        headers["x-adobe-public-key1-path"] = "/prod/../../etc/keys.pem"
    elif change == "not a pem":
        headers["x-adobe-public-key1-path"] = "/prod/keys/pub-key.txt"
    else:
        headers["x-adobe-public-key1-path"] = "/prod/keys/pub-key-unknown.pem"
    with pytest.raises(AuthenticationFailed, match=detail):
        check(body, headers, keys, client_id)
    assert all(path.endswith(".pem") and "/.." not in path for path in keys.requests)


def test_a_key_server_that_does_not_answer_is_503_with_retry_after_and_nothing_kept(tmp_path, keys):
    url = keys.url
    keys.stop()
    app = create_app(make_settings(tmp_path, ADOBE_COMMERCE_CLIENT_ID=CLIENT_ID, ADOBE_IO_EVENTS_KEYS_URL=url))
    client = app.test_client()
    response = client.post("/hooks/adobe_commerce", data=BODY, headers=headers_for(BODY))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "60"
    assert response.get_json()["error"] == KeysUnavailable.code
    assert app.extensions["relay"]["store"].list_deliveries(limit=5) == []
    app.extensions["relay"]["store"].close()


def test_the_hook_answers_adobes_challenge_and_takes_a_signed_event(tmp_path, keys):
    app = create_app(make_settings(tmp_path, ADOBE_COMMERCE_CLIENT_ID=CLIENT_ID, ADOBE_IO_EVENTS_KEYS_URL=keys.url))
    client = app.test_client()
    challenge = client.get("/hooks/adobe_commerce?challenge=8ec8d794-e0ab-42df-9017-e3dada8e84f7")
    assert (challenge.status_code, challenge.get_json()) == (200, {"challenge": "8ec8d794-e0ab-42df-9017-e3dada8e84f7"})
    assert client.get("/hooks/adobe_commerce").status_code == 405
    assert client.get("/hooks/tilda?challenge=x").status_code == 405  # only a source that names one
    accepted = client.post("/hooks/adobe_commerce", data=BODY, headers=headers_for(BODY))
    assert accepted.status_code == 202, accepted.get_json()
    again = client.post("/hooks/adobe_commerce", data=BODY, headers=headers_for(BODY, **{"x-adobe-retry-count": "1"}))
    assert again.get_json()["status"] == "duplicate"
    forged = client.post("/hooks/adobe_commerce", data=BODY.replace(b"Maria", b"Eve"), headers=headers_for(BODY))
    assert forged.status_code == 401
    stored: Any = app.extensions["relay"]["store"].list_deliveries(limit=5)
    assert len(stored) == 1
    app.extensions["relay"]["store"].close()


def test_a_paid_order_saved_again_and_again_is_counted_once(tmp_path, keys, sandbox):
    """Adobe Commerce saves an order at every change: the first save that finds it paid (processing) counts it
    with its total; its next save (complete) and one of an order still pending payment count nothing."""
    settings = quick_retry_settings(
        tmp_path, sandbox, ADOBE_COMMERCE_CLIENT_ID=CLIENT_ID, ADOBE_IO_EVENTS_KEYS_URL=keys.url
    )
    order = json.loads((MAPPINGS / "examples" / "adobe_commerce" / "order-save.json").read_bytes())

    def saved(event_id: str, state: str, entity_id: str = "1057") -> bytes:
        order["event_id"] = order["id"] = event_id
        order["data"]["value"].update(state=state, status=state, entity_id=entity_id)
        return json.dumps(order).encode()

    for client, store, worker in hand_driven(settings):
        outcomes = []
        for body in (saved("e-1", "processing"), saved("e-2", "complete"), saved("e-3", "pending_payment", "1058")):
            answer = client.post("/hooks/adobe_commerce", data=body, headers=headers_for(body))
            assert answer.status_code == 202, answer.get_json()
            outcomes.append(drain(store, worker, answer.get_json()["id"]))
        assert outcomes == ["delivered"] * 3
    [profile] = sandbox.sandbox.profiles.values()
    assert (profile.fields["orders_count"], profile.fields["revenue"]) == (1, 129.9)
    assert {"order_paid", "order_complete", "order_pending_payment"} <= set(profile.fields["tags"])
