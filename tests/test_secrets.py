"""Secrets never leave: not in logs, Sentry events, error bodies, stored rows or preview output."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
import sentry_sdk
from sentry_sdk.transport import Transport
from sqlalchemy import text

from relay.web import create_app

from .conftest import SECRETS, captured_log_lines, make_settings, relay_command


class CapturingTransport(Transport):
    """A Sentry transport that keeps envelopes in memory instead of sending them."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict] = []

    def capture_envelope(self, envelope) -> None:  # type: ignore[no-untyped-def]
        for item in envelope.items:
            if item.type == "event":
                self.events.append(item.payload.json)


def _exercise(client) -> None:  # type: ignore[no-untyped-def]
    """Requests of every kind, each carrying secrets somewhere."""
    tilda = SECRETS["TILDA_WEBHOOK_TOKEN"]
    form = "application/x-www-form-urlencoded"
    client.post(f"/hooks/tilda?token={tilda}", data=b"Email=ivan%40example.com&Phone=%2B79123456789", content_type=form)
    client.post(f"/hooks/tilda?token={tilda}x", data=b"Email=a%40b.co", content_type=form)
    client.post(f"/hooks/tilda?token={tilda}", data=b"{broken", content_type="application/json")
    client.post(
        "/hooks/elementor",
        data=b"Email=a%40b.co",
        content_type=form,
        headers={"X-Relay-Token": SECRETS["ELEMENTOR_WEBHOOK_TOKEN"]},
    )
    body = b'{"email": "a@example.com"}'
    sig = base64.b64encode(hmac.new(SECRETS["SHOPIFY_WEBHOOK_SECRET"].encode(), body, hashlib.sha256).digest())
    client.post(
        "/hooks/shopify",
        data=body,
        content_type="application/json",
        headers={
            "X-Shopify-Hmac-Sha256": sig.decode(),
            "X-Shopify-Topic": "orders/create",
            "Authorization": "Bearer " + SECRETS["RELAY_UPSTREAM_TOKEN"],
        },
    )
    wufoo = SECRETS["WUFOO_WEBHOOK_TOKEN"]
    client.post(
        "/hooks/wufoo", data=f"Field3=w%40example.com&HandshakeKey={wufoo}&EntryId=7".encode(), content_type=form
    )
    client.post("/hooks/wufoo", data=f"Field3=w%40example.com&HandshakeKey={wufoo}x".encode(), content_type=form)
    client.post(
        "/hooks/wufoo",
        data=json.dumps({"HandshakeKey": wufoo, "Field3": "j@example.com"}),
        content_type="application/json",
    )
    client.get("/admin/api/deliveries", headers={"Authorization": "Bearer " + SECRETS["RELAY_ADMIN_TOKEN"]})
    client.get("/admin/api/deliveries", headers={"Authorization": "Bearer wrong"})


def _leaks(text_blob: str) -> list[str]:
    return [name for name, secret in SECRETS.items() if secret in text_blob]


def test_logs_bodies_and_rows_hold_no_secret(tmp_path):
    """Every log line, response body and stored row of a busy session is free of secrets."""
    with captured_log_lines() as records:
        app = create_app(make_settings(tmp_path, RELAY_LOG_LEVEL="debug"))
        client = app.test_client()
        bodies = []
        original = client.open

        def recording_open(*args, **kwargs):  # type: ignore[no-untyped-def]
            response = original(*args, **kwargs)
            bodies.append(response.get_data(as_text=True))
            return response

        client.open = recording_open  # type: ignore[method-assign]
        _exercise(client)
        store = app.extensions["relay"]["store"]
        with store.engine.connect() as connection:
            rows = [
                repr(tuple(row))
                for table in ("deliveries", "attempts", "dedup_keys")
                for row in connection.execute(text(f"SELECT * FROM {table}"))  # noqa: S608 - fixed names
            ]
        store.close()
    assert records, "the session logged something"
    assert _leaks("\n".join(records)) == []
    assert _leaks("\n".join(bodies)) == []
    assert _leaks("\n".join(rows)) == []
    assert "ivan@example.com" not in "\n".join(records)  # contacts are masked at info level


def test_sentry_events_are_scrubbed_and_4xx_not_reported(tmp_path):
    """An unexpected error reaches Sentry without secrets; rejected requests send nothing."""
    transport = CapturingTransport()
    app = create_app(make_settings(tmp_path, SENTRY_DSN="https://public@sentry.invalid/1"), sentry_transport=transport)
    try:
        client = app.test_client()
        tilda = SECRETS["TILDA_WEBHOOK_TOKEN"]
        client.post(f"/hooks/tilda?token={tilda}x", data=b"a=1", content_type="application/x-www-form-urlencoded")
        client.post(f"/hooks/tilda?token={tilda}", data=b"{", content_type="application/json")
        sentry_sdk.flush()
        assert transport.events == []
        store = app.extensions["relay"]["store"]
        store.close()
        from sqlalchemy import create_engine

        store.engine = create_engine(f"sqlite:///{tmp_path}/missing-dir/x.db")  # the store breaks
        response = client.post(
            f"/hooks/tilda?token={tilda}",
            data=b"Email=a%40b.co",
            content_type="application/x-www-form-urlencoded",
            headers={"X-Relay-Token": tilda, "Authorization": "Bearer " + SECRETS["RELAY_ADMIN_TOKEN"]},
        )
        assert response.status_code == 500 and response.get_json()["error"] == "internal"
        sentry_sdk.flush()
        assert len(transport.events) == 1
        event = json.dumps(transport.events[0])
        assert _leaks(event) == []
        assert "Email=a%40b.co" not in event  # no request body
        assert '"vars"' not in event  # no local variables
    finally:
        sentry_sdk.init()  # off again for the other tests


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            'connection to server at "10.0.3.17", port 5432 failed',
            'connection to server at "10.0.3.17", port 5432 failed',
        ),
        ("lead +7 912 345-67-89 from 192.168.1.20", "lead +7 *** from 192.168.1.20"),
        ("phone 912.345.6789", "phone 912***"),
        ("ivan@example.com", "i***@example.com"),
    ],
)
def test_contacts_are_masked_but_addresses_kept(text, shown):
    """Phones and e-mails are masked in log text; a dotted IPv4 address (a database host in an error) is not."""
    from relay.logs import mask_contact

    assert mask_contact(text) == shown


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (
            "https://api.example.com/api/v1.1/profiles/update",
            "'https://api.example.com/api/v1.1/profiles/update': is the API's base address, without the method: "
            "https://api.example.com/api/v1.1",
        ),
        (
            "https://api.example.com/api/v1.1?token=tok-in-query",
            "'https://api.example.com/api/v1.1?***': must not carry a query string or fragment; the token goes in "
            "RELAY_UPSTREAM_TOKEN",
        ),
        ("api.example.com/api/v1.1", "'api.example.com/api/v1.1': must start with http:// or https:// and name a host"),
    ],
)
def test_the_upstream_url_is_the_apis_base_and_its_secrets_are_never_printed(url, problem):
    """A method's URL pasted as the base sent every call to `.../profiles/update/profiles/import` (404,
    every delivery failed); a query string split every call's URL; and a token in it was printed with the
    error. A password in the URL is masked where the settings are shown."""
    from relay.errors import ConfigError
    from relay.settings import Settings

    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"RELAY_UPSTREAM_URL": url})
    assert str(raised.value.problems[0]) == "RELAY_UPSTREAM_URL=" + problem
    assert "tok-in-query" not in str(raised.value)
    settings = Settings.from_env({"RELAY_UPSTREAM_URL": "https://relay:pw-in-url@api.example.com/api/v1.1/"})
    assert settings.upstream_url == "https://relay:pw-in-url@api.example.com/api/v1.1"
    assert settings.describe()["RELAY_UPSTREAM_URL"] == "https://relay:***@api.example.com/api/v1.1"


def test_a_wrong_sentry_dsn_is_refused_at_start_without_printing_it():
    """A DSN that is no DSN failed every process's start with a traceback; it is a wrong setting, named,
    and, being a secret, not printed."""
    from relay.errors import ConfigError
    from relay.settings import Settings

    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"SENTRY_DSN": "sentry-key-in-the-wrong-place"})
    assert raised.value.problems == ["SENTRY_DSN=***: is not a Sentry DSN (Unsupported scheme '')"]


def test_a_database_url_is_shown_without_its_password_wherever_it_is_written():
    """libpq takes a password in the query too (`?password=`): the store's URL was shown with it at start
    and in "the store at ... failed"; now the password and the query are masked, the rest as written."""
    from relay.settings import Settings

    shown = Settings.from_env({"RELAY_DATABASE_URL": "postgresql://relay@db/relay?password=pw-in-query"}).describe()
    assert shown["RELAY_DATABASE_URL"] == "postgresql://relay@db/relay?***"
    default = Settings.from_env({}).describe()
    assert default["RELAY_DATABASE_URL"] == "sqlite:///var/relay.db"
    done = relay_command(
        "deliveries", env={"PATH": "/usr/bin:/bin", "RELAY_DATABASE_URL": "postgresql://u:pw-in-url@127.0.0.1:1/x"}
    )
    assert done.returncode == 1 and "the store at postgresql://u:***@127.0.0.1:1/x failed" in done.stderr
    assert "pw-in-url" not in done.stderr


def test_requests_gunicorn_cannot_parse_get_json_and_their_tokens_stay_out_of_the_log(tmp_path):
    """A request line gunicorn cannot parse (here a sender that puts a query value on the wire unencoded)
    never reaches the app: gunicorn answered it with an HTML page and wrote the line whole into its log,
    the hook's token with it. Its answers are JSON now, like every error of relay's, and token values
    are redacted."""
    import socket

    from relay.testing import RelayProcess

    token = SECRETS["TILDA_WEBHOOK_TOKEN"]
    env = {"RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}", "TILDA_WEBHOOK_TOKEN": token}
    log = tmp_path / "relay.log"
    relay = RelayProcess(env, log=log).start(timeout=60)

    def exchange(request: bytes) -> tuple[int, str, dict[str, str]]:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        content_type = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-type:"))
        return int(head.split()[1]), content_type.split(b":", 1)[1].strip().decode(), json.loads(body)

    try:
        pasted = exchange(f"POST /hooks/tilda?token={token}&name=Ivan\tPetrov HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
        too_long = exchange(f"POST /hooks/tilda?token={token}&x={'a' * 5000} HTTP/1.1\r\n\r\n".encode())
        big_headers = exchange(b"POST /hooks/tilda HTTP/1.1\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n")
    finally:
        relay.stop()
    assert pasted == (
        400,
        "application/json",
        {
            "error": "bad_request",
            "detail": "Invalid Request Line 'Invalid HTTP request line: "
            "'POST /hooks/tilda?token=***&name=Ivan\\tPetrov HTTP/1.1''",
        },
    )
    assert too_long[:2] == (414, "application/json") and too_long[2]["error"] == "uri_too_long"
    assert big_headers[:2] == (431, "application/json") and big_headers[2]["error"] == "headers_too_large"
    written = log.read_text(errors="replace")
    assert "Invalid HTTP request line: 'POST /hooks/tilda?token=***&name=Ivan\\tPetrov HTTP/1.1'" in written
    assert token not in written
