"""POST /hooks/<source>: answers for every kind of request, never a 500 for bad input."""

from __future__ import annotations

import gzip
import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import StoreUnavailable
from relay.ids import random_hex
from relay.inbound import InboundRequest

from .conftest import BUILT_IN_SOURCES, MAPPINGS, SECRETS, make_settings
from .test_signatures import shopify as shopify_headers
from .test_signatures import stripe as stripe_headers
from .test_signatures import webflow as webflow_headers

TILDA = "/hooks/tilda?token=" + SECRETS["TILDA_WEBHOOK_TOKEN"]
FORM = "application/x-www-form-urlencoded"


def shopify_signed(body: bytes) -> dict[str, str]:
    """The header Shopify signs `body` with, under the tests' secret."""
    return shopify_headers(SECRETS["SHOPIFY_WEBHOOK_SECRET"], body, time.time())


def test_accepts_and_stores_before_answering(client, app):
    """A token-authenticated Tilda form is stored and answered 202 with its id."""
    response = client.post(TILDA, data=b"Email=a%40example.com&tranid=1%3A1", content_type=FORM)
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "accepted"
    stored = app.extensions["relay"]["store"].get(body["id"])
    assert stored is not None and stored.body == b"Email=a%40example.com&tranid=1%3A1"
    assert stored.status == "held"  # no upstream configured: kept, not lost


def test_duplicate_is_answered_200_with_the_first_id(client):
    """A repeat of the same tranid within the window is a duplicate."""
    first = client.post(TILDA, data=b"Email=a%40example.com&tranid=1%3A2", content_type=FORM).get_json()
    again = client.post(TILDA, data=b"Email=a%40example.com&tranid=1%3A2&x=1", content_type=FORM)
    assert again.status_code == 200
    assert again.get_json() == {"status": "duplicate", "id": first["id"]}


@pytest.mark.parametrize(
    ("path", "body", "content_type", "headers"),
    [
        (TILDA, b"test=test", FORM, {}),
        ("/hooks/woocommerce", b"webhook_id=4", FORM, {}),
    ],
)
def test_pings_are_answered_and_not_stored(client, app, path, body, content_type, headers):
    """Tilda's test=test and WooCommerce's unsigned webhook_id=N get exactly 200."""
    response = client.post(path, data=body, content_type=content_type, headers=headers)
    assert response.status_code == 200
    assert response.get_json() == {"status": "ping"}
    assert app.extensions["relay"]["store"].counts() == {}


def test_shopify_test_notification_is_a_ping(client, app):
    """X-Shopify-Test: true on a genuine request is a ping."""
    body = b'{"id":1,"email":"a@example.com"}'
    response = client.post(
        "/hooks/shopify",
        data=body,
        content_type="application/json",
        headers={
            **shopify_signed(body),
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Test": "true",
        },
    )
    assert response.get_json() == {"status": "ping"}


def test_shopify_signed_order_is_accepted_and_forged_refused(client):
    """A genuine Shopify HMAC is accepted; one byte changed is refused with 401."""
    body = b'{"id":1,"email":"a@example.com"}'
    headers = {"X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": "w-1"}
    ok = client.post(
        "/hooks/shopify",
        data=body,
        content_type="application/json",
        headers={**headers, **shopify_signed(body)},
    )
    assert ok.status_code == 202
    forged = client.post(
        "/hooks/shopify",
        data=body.replace(b"1", b"2"),
        content_type="application/json",
        headers={**headers, **shopify_signed(body)},
    )
    assert forged.status_code == 401
    assert forged.get_json()["error"] == "authentication_failed"


def test_ignored_event(client):
    """A Stripe event no rule forwards is answered 200 ignored."""
    body = json.dumps({"id": "evt_1", "type": "customer.created", "data": {"object": {}}}).encode()
    signed = stripe_headers(SECRETS["STRIPE_WEBHOOK_SECRET"], body, time.time())
    response = client.post("/hooks/stripe", data=body, content_type="application/json", headers=signed)
    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"


def test_unset_secret_fails_closed(tmp_path):
    """A source whose token is unset refuses with 401 naming the variable."""
    from relay.web import create_app

    app = create_app(make_settings(tmp_path, TILDA_WEBHOOK_TOKEN=""))
    response = app.test_client().post("/hooks/tilda?token=x", data=b"Email=a%40b.c", content_type=FORM)
    assert response.status_code == 401
    assert "TILDA_WEBHOOK_TOKEN" in response.get_json()["detail"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b'{"a":', "application/json", 400, "unparsable"),
        (b"", "application/json", 400, "unparsable"),
        (b"\xff\xfe\x00", "application/json", 400, "unparsable"),
        (b"[" * 5000 + b"]" * 5000, "application/json", 400, "unparsable"),
        (b"a=%ff%fe", FORM, 400, "unparsable"),
        (b"", FORM, 400, "unparsable"),
        (b" \r\n", None, 400, "unparsable"),
        (b"<a><b></a>", "application/xml", 400, "unparsable"),
        (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>', "application/xml", 400, "unparsable"),
        (b"--x\r\nbroken", "multipart/form-data", 400, "unparsable"),
        (b"\x89PNG", "image/png", 415, "unsupported_content_type"),
    ],
)
def test_bad_bodies_get_a_clear_4xx(client, body, content_type, status, code):
    """Every kind of broken body is a JSON 4xx with a code, never a 500 or HTML."""
    response = client.post(TILDA, data=body, content_type=content_type)
    assert response.status_code == status
    assert response.is_json
    assert response.get_json()["error"] == code


def test_compressed_bodies_are_refused_by_name(client, app):
    """A body sent with a Content-Encoding is refused with 415 naming it (it used to read as broken JSON)."""
    body = gzip.compress(b'{"Email": "z@example.com"}')
    response = client.post(TILDA, data=body, content_type="application/json", headers={"Content-Encoding": "gzip"})
    assert response.status_code == 415
    assert response.get_json() == {
        "error": "unsupported_content_type",
        "detail": "Content-Encoding 'gzip' is not supported; send the body uncompressed",
    }
    assert app.extensions["relay"]["store"].counts() == {}
    plain = client.post(
        TILDA, data=b"Email=z%40example.com", content_type=FORM, headers={"Content-Encoding": "identity"}
    )
    assert plain.status_code == 202


@pytest.mark.parametrize(
    ("body", "content_type", "detail"),
    [
        (b'{"Email": "a@b.c", "total": NaN}', "application/json", "invalid JSON: NaN is not a JSON number"),
        (b'{"total": Infinity}', "application/json", "invalid JSON: Infinity is not a JSON number"),
        (b"[-Infinity]", "application/json", "invalid JSON: -Infinity is not a JSON number"),
        (b'{"total": 1e999}', "application/json", "invalid JSON: 1e999 is too large for a number"),
        (
            b'{"n": ' + b"7" * 5000 + b"}",
            "application/json",
            "invalid JSON: a number has more than 4300 digits",
        ),
        (
            b'--b\r\nContent-Disposition: form-data; name="Email"\r\n\r\na@b.c\r\n'
            b"--b\r\nContent-Disposition: form-data; na",
            "multipart/form-data; boundary=b",
            "multipart body ends before its closing boundary '--b--'; it was cut short",
        ),
        (
            b'--b\r\nContent-Disposition: form-data; name="Email"\r\n\r\na@b.c\r\n'
            b"--b\r\nContent-Type: text/plain\r\n\r\na part without its header\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
            "multipart body: Missing Content-Disposition header",
        ),
    ],
)
def test_bodies_that_are_not_quite_valid_are_refused_in_relays_words(client, app, body, content_type, detail):
    """NaN, Infinity, 1e999, a number too long for Python, a cut or broken multipart body: 400, nothing stored.

    Each used to be accepted (a NaN then reached the upstream as invalid JSON, a cut multipart
    body relayed only the parts that arrived, a part without its header made werkzeug answer an empty
    form) or answered in Python's own wording.
    """
    response = client.post(TILDA, data=body, content_type=content_type)
    assert response.status_code == 400
    assert response.get_json() == {"error": "unparsable", "detail": detail}
    assert app.extensions["relay"]["store"].counts() == {}
    whole = b'--b\r\nContent-Disposition: form-data; name="Email"\r\n\r\na@b.c\r\n--b--\r\nan epilogue'
    assert client.post(TILDA, data=whole, content_type="multipart/form-data; boundary=b").status_code == 202


def test_body_over_the_limit_is_413(tmp_path):
    """A body one byte over RELAY_MAX_BODY_BYTES gets 413."""
    from relay.web import create_app

    app = create_app(make_settings(tmp_path, RELAY_MAX_BODY_BYTES="100"))
    client = app.test_client()
    assert client.post(TILDA, data=b"a=" + b"x" * 98, content_type=FORM).status_code == 202
    assert client.post(TILDA, data=b"a=" + b"x" * 99, content_type=FORM).status_code == 413


def test_unknown_source_and_wrong_method(client):
    """Unknown sources answer 404 and GET on a hook 405, both in JSON."""
    unknown = client.post("/hooks/nope", data=b"{}", content_type="application/json")
    assert unknown.status_code == 404 and unknown.get_json()["error"] == "unknown_source"
    assert client.get("/hooks/tilda").status_code == 405


def test_hook_url_with_a_trailing_slash(client, app):
    """A hook URL pasted with a trailing slash reaches its source (stored under its own name); two do not."""
    response = client.post(
        TILDA.replace("/hooks/tilda", "/hooks/tilda/"),
        data=b'{"Email": "s@example.com"}',
        content_type="application/json",
    )
    assert response.status_code == 202, response.get_json()
    assert app.extensions["relay"]["store"].get(response.get_json()["id"]).source == "tilda"
    twice = client.post("/hooks/tilda//", data=b"{}", content_type="application/json")
    assert twice.status_code == 404 and twice.get_json()["error"] == "unknown_source"


def test_parses_every_content_type(client, app):
    """JSON, bracketed form keys, multipart and XML bodies are all accepted and kept verbatim."""
    store = app.extensions["relay"]["store"]
    cases = [
        (b'{"Email": "j@example.com", "tranid": "9:1"}', "application/json"),
        (b"fields%5Bemail%5D%5Bvalue%5D=j%40example.com&tranid=9%3A2", FORM),
        (
            b'--b\r\nContent-Disposition: form-data; name="Email"\r\n\r\nj@example.com\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),
        (b"<xml><Email>j@example.com</Email><tranid>9:3</tranid></xml>", "application/xml"),
    ]
    for body, content_type in cases:
        response = client.post(TILDA, data=body, content_type=content_type)
        assert response.status_code == 202, (content_type, response.get_json())
        assert store.get(response.get_json()["id"]).body == body


def test_token_never_stored_and_header_token_works(client, app):
    """X-Relay-Token authenticates, and neither it nor the query token is stored."""
    token = SECRETS["TILDA_WEBHOOK_TOKEN"]
    response = client.post(
        "/hooks/tilda", data=b"Email=z%40example.com", content_type=FORM, headers={"X-Relay-Token": token}
    )
    assert response.status_code == 202
    stored = app.extensions["relay"]["store"].get(response.get_json()["id"])
    assert token not in json.dumps(stored.headers)


def test_health_and_readiness(client):
    """/healthz is 200; /readyz reports mappings and the held upstream."""
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["mappings"] == len(BUILT_IN_SOURCES)


def test_readiness_fails_while_the_store_does_not_answer(tmp_path):
    """/readyz is 503 naming the store when it cannot be reached; /healthz stays 200 (the process serves)."""
    from sqlalchemy import create_engine

    from relay.web import create_app

    app = create_app(make_settings(tmp_path))
    store = app.extensions["relay"]["store"]
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    store.engine.dispose()
    store.engine = create_engine(f"sqlite:///{tmp_path}/missing-dir/relay.db")  # the database is gone
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["status"] == "unavailable" and "store" in ready.get_json()["problems"]
    assert client.get("/healthz").status_code == 200
    store.close()


def test_a_store_that_takes_no_write_is_not_ready_until_one_goes_through(tmp_path):
    """A full SQLite database (SQLite's own SQLITE_FULL, from `max_page_count` on the writer's connection)
    still answers reads: webhooks got 503 while /readyz said 200. Now /readyz is 503 with SQLite's words
    until a write goes through, and /metrics shows the free space where the file is."""
    from relay.web import create_app

    app = create_app(make_settings(tmp_path))
    store = app.extensions["relay"]["store"]
    client = app.test_client()
    try:
        assert client.post(TILDA, data=b"Email=a%40example.com&tranid=1", content_type=FORM).status_code == 202
        writer = store._writer.connection  # the group writer's own connection, made by that first write
        pages = writer.execute("PRAGMA page_count").fetchone()[0]
        writer.execute(f"PRAGMA max_page_count={pages}")
        big = b"Email=b%40example.com&tranid=2&notes=" + b"x" * 50_000
        refused = client.post(TILDA, data=big, content_type=FORM)
        assert refused.status_code == 503 and refused.get_json()["error"] == "store_unavailable"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "was refused: database or disk is full" in ready.get_json()["problems"]["store"]
        assert client.get("/healthz").status_code == 200
        free = [
            line
            for line in client.get("/metrics").get_data(as_text=True).splitlines()
            if line.startswith("relay_store_disk_free_bytes ")
        ]
        assert len(free) == 1 and float(free[0].split()[1]) > 0
        writer.execute("PRAGMA max_page_count=1073741823")
        assert client.post(TILDA, data=big, content_type=FORM).status_code == 202
        assert client.get("/readyz").status_code == 200
    finally:
        store.close()


def test_a_store_whose_disk_cannot_hold_the_largest_webhook_is_not_ready_in_every_process(tmp_path):
    """A refused write is known only to the process it met (one gunicorn worker said 503, the other 200). The
    free space is seen alike by all: a disk with less room than the largest webhook the settings take (twice,
    and a MiB) makes /readyz 503 before a write is refused. A 1 EiB limit stands in for a full disk here."""
    from relay.web import create_app

    app = create_app(make_settings(tmp_path, RELAY_MAX_BODY_BYTES=str(2**60)))
    try:
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 503
        assert "MiB a webhook of RELAY_MAX_BODY_BYTES may need" in ready.get_json()["problems"]["store"]
    finally:
        app.extensions["relay"]["store"].close()


def test_a_postgresql_that_turned_read_only_is_not_ready_in_a_process_that_never_met_a_refused_write(tmp_path, pg_url):
    """A process that made its tables while the server took writes went on answering /readyz 200 once the
    server became a standby (its pool reconnecting to the same host): only a process whose own write had been
    refused said so. /readyz now asks the server, so every process says it. A role of its own, turned read-only
    while relay runs, stands in for the failover without touching any other test's database."""
    from sqlalchemy import create_engine, make_url, text

    from relay.web import create_app

    role = "relay_ro_" + random_hex(6)
    admin = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    schema = pg_url.rsplit("search_path%3D", 1)[1]
    with admin.begin() as connection:
        connection.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        connection.execute(text(f'GRANT ALL ON SCHEMA "{schema}" TO "{role}"'))
    as_role = make_url(pg_url).set(username=role, password=None).render_as_string(hide_password=False)
    probe = create_engine(as_role.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        probe.connect().close()
    except Exception:  # noqa: BLE001 - any refusal: the server wants a password for a new role
        with admin.begin() as connection:
            connection.execute(text(f'DROP OWNED BY "{role}"'))
            connection.execute(text(f'DROP ROLE "{role}"'))
        pytest.skip("this PostgreSQL lets no new role log in without a password (CI's and scripts/test's trust it)")
    finally:
        probe.dispose()
    app = create_app(make_settings(tmp_path, RELAY_DATABASE_URL=as_role))
    store = app.extensions["relay"]["store"]
    client = app.test_client()
    try:
        assert client.post(TILDA, data=b"Email=a%40example.com&tranid=1", content_type=FORM).status_code == 202
        assert client.get("/readyz").status_code == 200
        with admin.begin() as connection:
            connection.execute(text(f'ALTER ROLE "{role}" SET default_transaction_read_only = on'))
        store.engine.dispose()  # the pool reconnects, as it does to a host that a failover made a standby
        ready = client.get("/readyz")
        assert ready.status_code == 503 and store.refused_writes() is None
        assert ready.get_json()["problems"]["store"] == (
            "it takes no writes: transaction_read_only is on (a standby, or default_transaction_read_only)"
        )
        refused = client.post(TILDA, data=b"Email=b%40example.com&tranid=2", content_type=FORM)
        assert refused.status_code == 503 and refused.headers["Retry-After"]
    finally:
        store.close()
        with admin.begin() as connection:
            connection.execute(text(f'DROP OWNED BY "{role}"'))
            connection.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()


def test_a_read_only_postgresql_is_a_503_and_not_ready_never_a_500(tmp_path, pg_url):
    """A PostgreSQL that takes no writes (a standby after a failover) raises SQLSTATE 25006, an InternalError
    that was not counted as the store being away: relay did not start (a traceback) and a webhook was a 500.
    Now relay starts and waits, webhooks get 503 with Retry-After, and /readyz names the SQLSTATE."""
    from relay.store import Store
    from relay.web import create_app

    Store(pg_url).close()  # the tables, made while the database still took writes
    read_only = pg_url + "%20-cdefault_transaction_read_only%3Don"
    app = create_app(make_settings(tmp_path, RELAY_DATABASE_URL=read_only))
    client = app.test_client()
    try:
        answer = client.post(TILDA, data=b"Email=a%40example.com&tranid=1", content_type=FORM)
        assert answer.status_code == 503 and answer.headers["Retry-After"]
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.get_json()["problems"]["store"] == "does not answer: ReadOnlySqlTransaction (SQLSTATE 25006)"
        assert "relay_store_disk_free_bytes" not in client.get("/metrics").get_data(as_text=True)
    finally:
        app.extensions["relay"]["store"].close()
    store = Store(read_only, wait_for_database=True)
    try:
        assert store.refused_writes() is None
        with pytest.raises(StoreUnavailable):
            store.accept(InboundRequest("tilda", b"a=1"), dedup_key="k", status="queued", dedup_window=60)
        assert store.refused_writes().endswith("was refused: ReadOnlySqlTransaction (SQLSTATE 25006)")
    finally:
        store.close()


def test_form_and_multipart_bounds(client):
    """More than 1,000 form fields or multipart parts is a 400, not a slow parse."""
    many = "&".join(f"f{i}=1" for i in range(1001)).encode()
    assert client.post(TILDA, data=many, content_type=FORM).status_code == 400
    parts = b"".join(b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n1\r\n' % i for i in range(1001))
    response = client.post(TILDA, data=parts + b"--b--\r\n", content_type="multipart/form-data; boundary=b")
    assert response.status_code == 400 and response.get_json()["error"] == "unparsable"


def test_admin_api_sends_no_cors_headers(client):
    """Neither a preflight nor a request to the admin API gets CORS headers."""
    preflight = client.options(
        "/admin/api/deliveries", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    listed = client.get("/admin/api/deliveries", headers={"Origin": "https://evil.example"})
    for response in (preflight, listed):
        assert not any(h.lower().startswith("access-control-") for h in response.headers.keys())
    assert listed.status_code == 401


LANDING = """version: 1
source: landing
description: the sign-up form of a landing page, posted by the page's script from the visitor's browser
auth: {scheme: token, secret: "${LANDING_WEBHOOK_TOKEN}"}
ip: {client: true}
cors: {origins: [https://www.example.com, "https://Promo.Example.com:8443"]}
rules:
  - name: signup
    match:
      email: {path: email, transform: email}
"""


def test_a_page_whose_origin_the_mapping_names_may_post_from_the_browser(tmp_path):
    """A landing page's script posts JSON with X-Relay-Token: the browser first sends a CORS preflight, and
    without the allowance it never sent the webhook at all (Flask's automatic OPTIONS answered without it).
    The origins the mapping names get the allowance on the preflight and on every answer, errors included;
    any other origin, and every source that names none, get none."""
    from relay.web import create_app

    folder = tmp_path / "mappings"
    folder.mkdir()
    (folder / "landing.yaml").write_text(LANDING)
    (folder / "tilda.yaml").write_text((MAPPINGS / "tilda.yaml").read_text())
    app = create_app(make_settings(tmp_path, RELAY_MAPPINGS_DIR=str(folder), LANDING_WEBHOOK_TOKEN="landing-tok-1"))
    client = app.test_client()
    store = app.extensions["relay"]["store"]
    try:
        asks = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-relay-token"}
        for origin in ("https://www.example.com", "https://promo.example.com:8443"):
            preflight = client.options("/hooks/landing", headers={"Origin": origin, **asks})
            assert preflight.status_code == 204 and preflight.data == b""
            assert preflight.headers["Access-Control-Allow-Origin"] == origin
            assert preflight.headers["Access-Control-Allow-Methods"] == "POST"
            assert "x-relay-token" in preflight.headers["Access-Control-Allow-Headers"].lower()
            assert "Origin" in preflight.headers["Vary"]
        assert store.counts() == {}  # a preflight is not a webhook
        sent = {"Origin": "https://www.example.com", "X-Relay-Token": "landing-tok-1"}
        accepted = client.post("/hooks/landing", json={"email": "page@example.com"}, headers=sent)
        assert accepted.status_code == 202
        assert accepted.headers["Access-Control-Allow-Origin"] == "https://www.example.com"
        assert "X-Request-ID" in accepted.headers["Access-Control-Expose-Headers"]
        refused = client.post(
            "/hooks/landing", json={"email": "page@example.com"}, headers={**sent, "X-Relay-Token": "x"}
        )
        assert refused.status_code == 401
        assert refused.headers["Access-Control-Allow-Origin"] == "https://www.example.com"
        for path, origin in [("/hooks/landing", "https://evil.example"), ("/hooks/tilda", "https://www.example.com")]:
            for answer in (
                client.options(path, headers={"Origin": origin, **asks}),
                client.post(path, json={"email": "x@example.com"}, headers={**sent, "Origin": origin}),
            ):
                assert not any(h.lower().startswith("access-control-") for h in answer.headers.keys()), path
    finally:
        store.close()


def test_store_outage_is_503_with_retry_after_then_heals(tmp_path, pg_url):
    """The database goes away under a running app: the sender gets 503 and Retry-After (a 500 before),
    the operator a line a webhook, one traceback and one Sentry event an outage, and a metric; when it is
    back, webhooks are accepted again."""
    import sentry_sdk

    from relay.web import create_app

    from .conftest import TcpProxy, captured_log_lines
    from .test_secrets import CapturingTransport

    proxy, through = TcpProxy.in_front_of(pg_url)
    proxy.start()
    transport = CapturingTransport()
    settings = make_settings(tmp_path, RELAY_DATABASE_URL=through, SENTRY_DSN="https://public@sentry.invalid/1")
    app = create_app(settings, sentry_transport=transport)
    client = app.test_client()
    try:
        assert client.post(TILDA, data=b"Email=up%40example.com", content_type=FORM).status_code == 202
        counted = 'relay_webhooks_received_total{outcome="store_unavailable",source="tilda"} '
        before = client.get("/metrics").get_data(as_text=True)
        refused_before = float(before.split(counted, 1)[1].split()[0]) if counted in before else 0.0
        proxy.stop()
        with captured_log_lines() as lines:
            answers = [client.post(TILDA, data=b"Email=down%40example.com", content_type=FORM) for _ in range(3)]
        for down in answers:
            assert down.status_code == 503 and down.headers["Retry-After"] == "5"
            assert down.get_json()["error"] == "store_unavailable"
        outage = [json.loads(line) for line in lines if '"event": "store unavailable"' in line]
        assert [line["level"] for line in outage] == ["error"] * 3
        assert ["exception" in line for line in outage] == [True, False, False]
        sentry_sdk.flush()
        assert len(transport.events) == 1
        scraped = client.get("/metrics")  # still served: the counters matter most now
        assert scraped.status_code == 200
        text = scraped.get_data(as_text=True)
        assert "relay_store_up 0.0" in text and "relay_queue_depth" not in text
        assert float(text.split(counted, 1)[1].split()[0]) == refused_before + 3
        proxy.start()
        again = client.post(TILDA, data=b"Email=down%40example.com", content_type=FORM)
        assert again.status_code == 202, again.get_json()
        assert "relay_store_up 1.0" in client.get("/metrics").get_data(as_text=True)
    finally:
        sentry_sdk.init()  # off again for the other tests
        proxy.stop()
        app.extensions["relay"]["store"].close()


def test_a_sqlite_store_that_cannot_grow_is_503_and_the_same_webhooks_are_taken_later(tmp_path):
    """A full disk, played by a file-size limit on this process: SQLite cannot write the webhook, and the
    sender gets 503 with Retry-After (it sends again) rather than a 500 or a 202 for a row that is not there.
    Nothing half-written stays behind: once the store can grow again, the very same webhooks are accepted
    as new (not answered `duplicate` from a key kept without its delivery) and the file is sound."""
    resource = pytest.importorskip("resource")
    import signal
    import sqlite3

    from relay.web import create_app

    if getattr(signal, "SIGXFSZ", None) is None or signal.getsignal(signal.SIGXFSZ) != signal.SIG_IGN:
        pytest.skip("needs SIGXFSZ ignored (as CPython does) so that writes past the limit fail with EFBIG")
    path = tmp_path / "full.db"
    app = create_app(make_settings(tmp_path, RELAY_DATABASE_URL=f"sqlite:///{path}"))
    client = app.test_client()
    bodies = [f"Email=full{n}%40example.com&Name={'x' * 1500}".encode() for n in range(20)]
    assert client.post(TILDA, data=bodies[0], content_type=FORM).status_code == 202
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (Path(f"{path}-wal").stat().st_size, hard))
    try:
        answers = [client.post(TILDA, data=body, content_type=FORM) for body in bodies[1:]]
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    try:
        refused = [answer for answer in answers if answer.status_code != 202]
        assert refused, "the limit should have stopped some write"
        for answer in refused:
            assert answer.status_code == 503, answer.get_json()
            assert answer.get_json()["error"] == "store_unavailable" and answer.headers["Retry-After"] == "5"
        again = [client.post(TILDA, data=body, content_type=FORM) for body in bodies[1:]]
        statuses = [
            (first.status_code, later.get_json()["status"]) for first, later in zip(answers, again, strict=True)
        ]
        assert all(later == ("duplicate" if first == 202 else "accepted") for first, later in statuses), statuses
        assert app.extensions["relay"]["store"].counts() == {"held": len(bodies)}
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        app.extensions["relay"]["store"].close()


def test_a_sqlite_store_locked_by_another_program_is_503_within_the_busy_timeout(tmp_path):
    """Another program holds SQLite's write lock (an operator's shell in a transaction, a VACUUM): each
    webhook waiting meanwhile gets 503 once the 10-second busy timeout has passed, in this process and in
    another gunicorn worker alike. The writes queued behind the first used to wait it out again one by one,
    each also retried alone, and the other process's writes waited for this one's file lock first: answers
    came after 20, 40 and more seconds, long after any provider stopped waiting. Once the lock is let go,
    webhooks are accepted again."""
    import sqlite3
    import threading

    from relay.inbound import InboundRequest
    from relay.store import Store
    from relay.web import create_app

    path = tmp_path / "locked.db"
    app = create_app(make_settings(tmp_path, RELAY_DATABASE_URL=f"sqlite:///{path}"))
    assert app.test_client().post(TILDA, data=b"Email=first%40example.com", content_type=FORM).status_code == 202
    other_worker = Store(f"sqlite:///{path}")  # its own file-lock descriptor, as another process has
    other_program = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other_program.execute("BEGIN IMMEDIATE")
    answers: list[tuple[int, str | None, float]] = []
    other_worker_errors: list[tuple[str, float]] = []

    def post(n: int) -> None:
        started = time.monotonic()
        answer = app.test_client().post(TILDA, data=f"Email=w{n}%40example.com".encode(), content_type=FORM)
        answers.append((answer.status_code, answer.headers.get("Retry-After"), time.monotonic() - started))

    def accept_in_the_other_worker(n: int) -> None:
        started = time.monotonic()
        try:
            held = InboundRequest("tilda", b"Email=o%40example.com", FORM)
            other_worker.accept(held, dedup_key=f"o{n}", status="held", dedup_window=60)
        except Exception as exc:  # noqa: BLE001 - what it raised is checked below
            other_worker_errors.append((type(exc).__name__, time.monotonic() - started))

    try:
        senders = [threading.Thread(target=post, args=(n,)) for n in range(4)]
        senders += [threading.Thread(target=accept_in_the_other_worker, args=(n,)) for n in range(2)]
        for sender in senders:
            sender.start()
            time.sleep(0.2)
        for sender in senders:
            sender.join(timeout=60)
        assert [(status, retry_after) for status, retry_after, _ in answers] == [(503, "5")] * 4
        assert [name for name, _ in other_worker_errors] == ["StoreUnavailable"] * 2
        waits = [waited for *_, waited in answers] + [waited for _, waited in other_worker_errors]
        assert max(waits) < 14, waits  # the busy timeout is 10 s
    finally:
        other_program.execute("ROLLBACK")
        other_program.close()
    try:
        again = app.test_client().post(TILDA, data=b"Email=w1%40example.com", content_type=FORM)
        assert again.status_code == 202, again.get_json()
        assert not other_worker.accept(
            InboundRequest("tilda", b"Email=o%40example.com", FORM), dedup_key="o-after", status="held", dedup_window=60
        ).duplicate
    finally:
        other_worker.close()
        app.extensions["relay"]["store"].close()


def _raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str]]:
    """Send `request` as is, stop sending (as a sender that disconnects does), and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_body_cut_off_or_unframed_under_gunicorn_is_400_and_not_kept(tmp_path):
    """Under gunicorn a sender that disconnects in the middle of its body must not leave half a webhook,
    and one that sends a body without saying how long it is must not be told that it was accepted.

    gunicorn handed over the bytes that arrived when a body was shorter than its Content-Length: half a
    form, with its phone number cut short, was accepted (202), stored and forwarded. A chunked body cut off
    or with a broken chunk size raised gunicorn's own error from the read: a 500 and a Sentry event.
    """
    from relay.store import Store
    from relay.testing import RelayProcess

    database = f"sqlite:///{tmp_path / 'relay.db'}"
    env = {"RELAY_DATABASE_URL": database, "TILDA_WEBHOOK_TOKEN": SECRETS["TILDA_WEBHOOK_TOKEN"]}
    relay = RelayProcess(env, log=tmp_path / "relay.log").start(timeout=60)
    head = f"POST {TILDA} HTTP/1.1\r\nHost: relay\r\nContent-Type: {FORM}\r\n".encode()
    form = b"Email=cut%40example.com&Phone=8912"  # "8 (912) 345-67-89", cut after four digits
    try:
        cut = [
            head + b"Content-Length: 45\r\n\r\n" + form,
            head + b"Transfer-Encoding: chunked\r\n\r\n2d\r\n" + form,  # its last chunk never comes
            head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + form + b"\r\n0\r\n\r\n",
        ]
        answers = [_raw_exchange(relay.port, request) for request in cut]
        assert [status for status, _ in answers] == [400, 400, 400]
        assert {body["error"] for _, body in answers} == {"incomplete_body"}
        assert answers[0][1]["detail"] == (
            "the body ended after 34 of the 45 bytes its Content-Length announced; nothing was kept"
        )
        # No Content-Length at all: gunicorn reads an empty body; relay answered 202 for a lead it never had.
        unframed = head + b"Connection: close\r\n\r\n" + form
        assert _raw_exchange(relay.port, unframed) == (400, {"error": "unparsable", "detail": "empty form body"})
        whole = form + b"345-67-89"
        chunked = head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(whole) + whole + b"\r\n0\r\n\r\n"
        assert _raw_exchange(relay.port, chunked)[0] == 202
        metrics = httpx.get(relay.url + "/metrics", timeout=5).text
        assert 'relay_webhooks_received_total{outcome="incomplete_body",source="tilda"} 3.0' in metrics
    finally:
        relay.stop()
    store = Store(database)
    try:
        [delivery] = store.list_deliveries()
        assert delivery.body == whole
    finally:
        store.close()
    assert "Traceback" not in (tmp_path / "relay.log").read_text(errors="replace")


def test_half_a_character_in_a_webhook_is_taken_and_delivered(tmp_path):
    """A JSON webhook with an emoji cut in half (`\\ud83d` alone) in its de-duplication id was a 500, and
    its provider's every retry with it; in a field it was accepted, then failed every try to send it."""
    from relay.sandbox import Sandbox, SandboxServer, default_config
    from relay.store import Store
    from relay.web import create_app
    from relay.worker import Worker

    sandbox = SandboxServer(Sandbox(default_config([SECRETS["RELAY_UPSTREAM_TOKEN"]]))).start()
    settings = make_settings(tmp_path, RELAY_UPSTREAM_URL=sandbox.api_url)
    app = create_app(settings)
    client = app.test_client()
    body = b'{"Email": "half@example.com", "Name": "Ivan \\ud83d", "tranid": "1:\\ud83d"}'
    try:
        first = client.post(TILDA, data=body, content_type="application/json")
        assert first.status_code == 202, first.get_json()
        again = client.post(TILDA, data=body, content_type="application/json")
        assert (again.status_code, again.get_json()["status"]) == (200, "duplicate")
        store = Store(settings.database_url)
        worker = Worker(settings, store=store)
        try:
            [(delivery, token)] = store.claim(owner="t", limit=5, lease_seconds=30)
            assert worker.process(delivery, token) == "delivered"
        finally:
            worker.stop()
            store.close()
        [profile] = sandbox.sandbox.profiles.values()
        assert (profile.fields["_fname"], profile.fields["_lname"]) == ("Ivan", "\ufffd")
    finally:
        app.extensions["relay"]["store"].close()
        sandbox.stop()


def test_outside_text_that_a_column_cannot_hold_is_never_a_500_on_postgres(tmp_path, pg_url):
    """On PostgreSQL, which holds text to its column's length and refuses NUL, each of these was a 500 for an
    authenticated webhook (and for every retry of it): a Content-Type over 255 characters, a forged
    X-Forwarded-For hop of 300, a de-duplication id with NUL in it."""
    from relay.web import create_app

    app = create_app(make_settings(tmp_path, RELAY_DATABASE_URL=pg_url, RELAY_TRUSTED_PROXIES="2"))
    client = app.test_client()
    try:
        long_type = client.post(TILDA, data=b"Email=a%40example.com", content_type=FORM + "; x=" + "y" * 300)
        assert long_type.status_code == 415
        assert long_type.get_json()["detail"] == "a Content-Type of 337 characters; relay takes at most 255"
        forged = client.post(
            TILDA, data=b"Email=b%40example.com", content_type=FORM, headers={"X-Forwarded-For": "x" * 300}
        )
        assert forged.status_code == 202, forged.get_json()
        body = b'{"Email": "c@example.com", "tranid": "1:\\u0000"}'
        first = client.post(TILDA, data=body, content_type="application/json")
        assert first.status_code == 202, first.get_json()
        assert client.post(TILDA, data=body, content_type="application/json").get_json()["status"] == "duplicate"
        store = app.extensions["relay"]["store"]
        assert store.get(forged.get_json()["id"]).client_ip is None
    finally:
        app.extensions["relay"]["store"].close()


def test_a_multipart_part_without_a_name_is_left_out_and_the_rest_taken(client, app):
    """A part whose Content-Disposition has no name (`nam^="x"`) gave werkzeug a field named None, and the
    whole webhook a 500; no mapping can refer to it, and the named parts are the lead."""
    body = (
        b'--b\r\nContent-Disposition: form-data; nam^="Email"\r\n\r\nlost@example.com\r\n'
        b'--b\r\nContent-Disposition: form-data; name="Email"\r\n\r\nkept@example.com\r\n--b--\r\n'
    )
    answer = client.post(TILDA, data=body, content_type="multipart/form-data; boundary=b")
    assert answer.status_code == 202, answer.get_json()
    [delivery] = app.extensions["relay"]["store"].list_deliveries()
    assert delivery.body == body


def test_an_apps_script_post_of_json_labelled_a_form_is_accepted_and_translates(client, app):
    """Google Forms reach relay through an Apps Script; `UrlFetchApp.fetch(url, {method: "post", payload:
    JSON.stringify(e.namedValues)})` labels the JSON form-urlencoded. Its webhooks were accepted, then every
    one failed its mapping (no e-mail in a form of one field named by the whole text)."""
    from relay.mapping.translate import TranslateContext
    from relay.pipeline import translate_request

    body = json.dumps({"namedValues": {"Электронная почта": ["anna@example.ru"], "Имя": ["Анна"]}}).encode()
    hook = "/hooks/google_forms?token=" + SECRETS["GOOGLE_FORMS_WEBHOOK_TOKEN"]
    response = client.post(hook, data=body, content_type=FORM)
    assert response.status_code == 202, response.get_json()
    stored = app.extensions["relay"]["store"].get(response.get_json()["id"])
    source = app.extensions["relay"]["sources"]["google_forms"]
    [call] = translate_request(source, stored.inbound(), TranslateContext()).calls
    assert call.body["email"] == "anna@example.ru"


def test_providers_that_take_only_200_as_success_get_200_for_an_accepted_webhook(client, app):
    """Elementor posts during the visitor's submit and showed the visitor an error for relay's 202 (its
    webhook action throws on anything but 200), as Contact Form 7's webhook plugin may; Webflow counted the 202
    as a failure, sent the webhook again and may deactivate it. Their mappings say `accepted_status: 200`;
    every other source answers 202."""
    elementor = client.post(
        "/hooks/elementor?token=" + SECRETS["ELEMENTOR_WEBHOOK_TOKEN"],
        data=b"form%5Bid%5D=f1&fields%5Bemail%5D%5Bvalue%5D=e%40example.com&fields%5Bemail%5D%5Btype%5D=email",
        content_type=FORM,
    )
    assert (elementor.status_code, elementor.get_json()["status"]) == (200, "accepted")
    body = json.dumps({"triggerType": "form_submission", "payload": {"id": "w1", "data": {"email": "w@example.com"}}})
    signed = webflow_headers(SECRETS["WEBFLOW_WEBHOOK_SECRET"], body.encode(), time.time())
    webflow = client.post("/hooks/webflow", data=body, content_type="application/json", headers=signed)
    assert (webflow.status_code, webflow.get_json()["status"]) == (200, "accepted")
    store = app.extensions["relay"]["store"]
    assert store.get(elementor.get_json()["id"]) is not None and store.get(webflow.get_json()["id"]) is not None
    tilda = client.post(TILDA, data=b"Email=t%40example.com", content_type=FORM)
    assert (tilda.status_code, tilda.get_json()["status"]) == (202, "accepted")
    sources = app.extensions["relay"]["sources"]
    cf7 = client.post(
        "/hooks/contact_form_7?token=" + SECRETS["CONTACT_FORM_7_WEBHOOK_TOKEN"],
        data=json.dumps({"your-email": "c@example.com"}),
        content_type="application/json; charset=UTF-8",
    )
    assert (cf7.status_code, cf7.get_json()["status"]) == (200, "accepted")
    accepting_200 = {name for name, source in sources.items() if source.accepted_status == 200}
    assert accepting_200 == {"elementor", "webflow", "contact_form_7", "lemon_squeezy", "unbounce", "gumroad"}


def test_rails_xml_says_what_its_text_cannot():
    """Rails' `to_xml` (InSales' XML webhooks) marks nil, booleans, integers and arrays; each is read as Rails
    reads it back, so a value means the same whether the provider sent the webhook as XML or as JSON. Text
    that does not fit its mark stays text, and decimals keep their digits."""
    from relay.bodies import parse_body

    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><order>'
        b'<id type="integer">123456789012345678901234</id><number type="integer">-7</number>'
        b'<odd type="integer">12a</odd><total-price type="decimal">2290.10</total-price>'
        b'<client><subscribe type="boolean">false</subscribe><vip type="boolean">TRUE</vip>'
        b'<maybe type="boolean">yes</maybe><middlename nil="true"/><nick nil="true">Vanya</nick>'
        b"<email>a@example.com</email></client>"
        b'<order-lines type="array"><order-line><id type="integer">1</id></order-line></order-lines>'
        b'<fields-values type="array"/><discounts type="array"></discounts>'
        b"<plain></plain></order>"
    )
    assert parse_body(body, "application/xml") == {
        "id": 123456789012345678901234,
        "number": -7,
        "odd": "12a",
        "total-price": "2290.10",
        "client": {
            "subscribe": False,
            "vip": True,
            "maybe": "yes",
            "middlename": None,
            "nick": "Vanya",
            "email": "a@example.com",
        },
        "order-lines": [{"id": 1}],
        "fields-values": [],
        "discounts": [],
        "plain": "",
    }


_rails_keys = st.from_regex(r"[a-z]{1,6}(_[a-z]{1,6}){0,2}", fullmatch=True)
_rails_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**29), max_value=10**29),  # relay reads at most 30 digits as a number
    # Text as Rails writes it; leaves are read stripped (pretty-printed XML), so none starts or ends with a space.
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), max_size=12),
)
_rails_values = st.recursive(
    _rails_scalars,
    lambda inner: st.one_of(
        st.lists(st.one_of(_rails_scalars, st.dictionaries(_rails_keys, inner, min_size=1, max_size=3)), max_size=3),
        st.dictionaries(_rails_keys, inner, min_size=1, max_size=4),
    ),
    max_leaves=12,
)


def _rails_xml(name: str, value: object) -> str:
    """`value` as Rails' `to_xml` writes it: dashed tags, typed leaves, nil, and arrays of singular items."""
    from xml.sax.saxutils import escape

    tag = name.replace("_", "-")
    if value is None:
        return f'<{tag} nil="true"/>'
    if isinstance(value, bool):
        return f'<{tag} type="boolean">{"true" if value else "false"}</{tag}>'
    if isinstance(value, int):
        return f'<{tag} type="integer">{value}</{tag}>'
    if isinstance(value, list):
        if not value:
            return f'<{tag} type="array"/>'
        return f'<{tag} type="array">{"".join(_rails_xml(name + "_item", item) for item in value)}</{tag}>'
    if isinstance(value, dict):
        return f"<{tag}>{''.join(_rails_xml(key, item) for key, item in value.items())}</{tag}>"
    return f"<{tag}>{escape(str(value))}</{tag}>"


def _dashed(value: object) -> object:
    if isinstance(value, dict):
        return {key.replace("_", "-"): _dashed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_dashed(item) for item in value]
    return value


@settings(max_examples=200, deadline=None)
@given(document=st.dictionaries(_rails_keys, _rails_values, min_size=1, max_size=5))
def test_rails_xml_reads_as_its_json_twin(document):
    """Whatever Rails writes as XML (InSales' default) reads as the same data sent as JSON, the tags' dashes
    apart: objects, typed leaves, nil, empty and one-item arrays included."""
    from relay.bodies import parse_body

    xml = '<?xml version="1.0" encoding="UTF-8"?>' + _rails_xml("order", document)
    assert parse_body(xml.encode(), "application/xml") == _dashed(document)


def test_an_insales_order_is_delivered_alike_from_json_and_from_its_default_xml(tmp_path):
    """InSales sends XML unless its webhook was registered as JSON, and names its topic only in the address it
    was registered with (`&topic=orders/create`): an order is counted once, at the first hook that says it is
    paid (a new order paid on delivery is not; its later update after the paid one is not counted again), a
    deletion is ignored, a product list is ignored, and the same body sent again is a duplicate (no delivery id
    is sent; the body's hash is the key). The topic is kept with the request for the worker as X-Relay-Event, a
    header no sender can set."""
    from relay.sandbox import Sandbox, SandboxServer, default_config
    from relay.store import Store
    from relay.web import create_app
    from relay.worker import Worker

    hook = "/hooks/insales?token=" + SECRETS["INSALES_WEBHOOK_TOKEN"]
    examples = MAPPINGS / "examples" / "insales"
    sandbox = SandboxServer(Sandbox(default_config([SECRETS["RELAY_UPSTREAM_TOKEN"]]))).start()
    settings = make_settings(tmp_path, RELAY_UPSTREAM_URL=sandbox.api_url)
    app = create_app(settings)
    client = app.test_client()
    try:
        order = (examples / "orders-create.json").read_bytes()
        deleted = client.post(hook + "&topic=orders/destroy", data=order, content_type="application/json")
        assert deleted.get_json() == {"status": "ignored", "reason": "a deleted order changes nobody's profile"}
        as_json = client.post(hook + "&topic=orders/create", data=order, content_type="application/json")
        # The same body at the orders/update address is another event, not a repeat, and is not counted again.
        same_body = client.post(hook + "&topic=orders/update", data=order, content_type="application/json")
        assert same_body.status_code == 202 and same_body.get_json()["id"] != as_json.get_json()["id"]
        xml = (examples / "orders-update-phone-only.xml").read_bytes()
        as_xml = client.post(hook + "&topic=orders/update", data=xml, content_type="application/xml; charset=utf-8")
        assert (as_json.status_code, as_xml.status_code) == (202, 202), (as_json.get_json(), as_xml.get_json())
        # A sender's own X-Relay-Event, with no topic in the URL, names nothing (it would count an update).
        customer = client.post(
            hook,
            data=(examples / "client-create.json").read_bytes(),
            content_type="application/json",
            headers={"x-relay-event": "orders/create"},
        )
        assert customer.status_code == 202, customer.get_json()
        again = client.post(hook + "&topic=orders/update", data=xml, content_type="application/xml; charset=utf-8")
        assert (again.status_code, again.get_json()) == (200, {"status": "duplicate", "id": as_xml.get_json()["id"]})
        shipped = xml.replace(b"<fulfillment-status>accepted<", b"<fulfillment-status>delivered<")
        delivered = client.post(hook + "&topic=orders/update", data=shipped, content_type="application/xml")
        assert delivered.status_code == 202, delivered.get_json()
        products = client.post(hook, data=b'[{"id": 1, "title": "Mug"}]', content_type="application/json")
        # No topic in its URL, and no rule's shape: the same words as the worker and `preview` give.
        assert (products.status_code, products.get_json()) == (
            200,
            {"status": "ignored", "reason": "no rule matches this payload"},
        )
        unsigned = client.post("/hooks/insales", data=xml, content_type="application/xml")
        assert unsigned.status_code == 401
        store = Store(settings.database_url)
        worker = Worker(settings, store=store)
        try:
            kept = [
                {name.lower(): value for name, value in store.get(answer.get_json()["id"]).headers.items()}
                for answer in (as_json, as_xml, customer)
            ]
            assert [headers.get("x-relay-event") for headers in kept] == ["orders/create", "orders/update", None]
            claimed = store.claim(owner="t", limit=4, lease_seconds=30)
            assert [worker.process(delivery, token) for delivery, token in claimed] == ["delivered"] * 4
            (later,) = store.claim(owner="t", limit=5, lease_seconds=30)  # after the paid update: in order
            assert worker.process(*later) == "delivered"
        finally:
            worker.stop()
            store.close()
        profiles = {
            profile.fields.get("email") or profile.fields["phones"][0]: profile
            for profile in sandbox.sandbox.profiles.values()
        }
        assert set(profiles) == {"ivan.petrov@example.com", "+79167654321", "olga.kuznetsova@example.com"}
        buyer, phone_only = profiles["ivan.petrov@example.com"], profiles["+79167654321"]
        assert (buyer.fields["_bdate"], [s["status"] for s in buyer.subscriptions]) == ("1990-03-14", ["subscribed"])
        assert "orders_count" not in buyer.fields and "revenue" not in buyer.fields  # paid on delivery, not yet
        assert (phone_only.fields["orders_count"], phone_only.fields["revenue"]) == (1, 3480)
        assert "order_delivered" in phone_only.fields["tags"]
        # <subscribe type="boolean">false</subscribe> subscribes nobody.
        assert (phone_only.fields["_fname"], phone_only.subscriptions) == ("Мария", [])
        assert "payment_paid" in phone_only.fields["tags"]
    finally:
        app.extensions["relay"]["store"].close()
        sandbox.stop()


@pytest.mark.parametrize(
    ("topic", "kept"),
    [
        (" orders/create ", "orders/create"),
        ("orders/create\x00", None),  # PostgreSQL's text refuses NUL: it would have made the row a 500
        ("a\nlevel=error", None),
        ("t" * 201, None),
        ("", None),
    ],
)
def test_the_event_a_hook_url_names_is_kept_only_as_printable_text(topic, kept):
    """`event: {query: topic}` keeps the URL's topic as X-Relay-Event when it is printable text of a topic's
    length; anything else names no event. A sender's own X-Relay-Event is dropped whatever its case."""
    from relay.inbound import keepable_headers, with_url_event
    from relay.mapping.loader import load_sources

    insales = load_sources(MAPPINGS)["insales"]
    headers = with_url_event(insales, {"Content-Type": "application/json", "x-RELAY-event": "x"}, {"topic": topic})
    assert headers == {"Content-Type": "application/json", **({"X-Relay-Event": kept} if kept else {})}
    tilda = load_sources(MAPPINGS)["tilda"]
    assert with_url_event(tilda, {"X-Relay-Event": "x"}, {"topic": "orders/create"}) == {}
    # Every source's stored headers lack it: a replay after its mapping took `event: {query: ...}` reads them.
    assert keepable_headers({"X-Relay-Event": "orders/create", "User-Agent": "u"}) == {"User-Agent": "u"}
