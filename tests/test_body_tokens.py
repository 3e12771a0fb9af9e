"""A token sent in the body (Wufoo's and Formstack's HandshakeKey): found, compared, and never kept.

The real app with its real SQLite store; the fixtures are Wufoo's and Formstack's (reconstructed) requests
from `mappings/examples`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import parse_qsl, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from relay.auth import authenticate
from relay.bodies import parse_body, read_field
from relay.errors import AuthenticationFailed, ConfigError, UnsupportedContentType
from relay.mapping.expressions import search
from relay.mapping.loader import load_sources
from relay.web import create_app

from .conftest import MAPPINGS, SECRETS, make_settings

FORM = "application/x-www-form-urlencoded"
KEY = SECRETS["WUFOO_WEBHOOK_TOKEN"]
WUFOO_ENTRY = (MAPPINGS / "examples" / "wufoo" / "new-entry.txt").read_bytes()
FORMSTACK_FORM = (MAPPINGS / "examples" / "formstack" / "form-submission-urlencoded.txt").read_bytes()


def _with_key(body: bytes, key: str) -> bytes:
    """The fixture with the key the webhook was given in place of the documentation's placeholder."""
    start = body.index(b"HandshakeKey=")
    end = body.find(b"&", start)
    return body[:start] + b"HandshakeKey=" + quote_plus(key).encode() + (body[end:] if end >= 0 else b"")


def _rows(app) -> str:  # type: ignore[no-untyped-def]
    store = app.extensions["relay"]["store"]
    with store.engine.connect() as connection:
        return "\n".join(
            repr(tuple(row))
            for table in ("deliveries", "dedup_keys")
            for row in connection.execute(text(f"SELECT * FROM {table}"))  # noqa: S608 - fixed names
        )


@pytest.fixture
def app(tmp_path):  # type: ignore[no-untyped-def]
    app = create_app(make_settings(tmp_path))
    yield app
    app.extensions["relay"]["store"].close()


def test_a_wufoo_entry_is_taken_with_its_handshake_key_and_kept_without_it(app):
    """The right key in the body: 202, and neither the stored body, the admin API nor the translation holds
    the key or the field; the same entry sent again is a duplicate."""
    client = app.test_client()
    body = _with_key(WUFOO_ENTRY, KEY)
    answer = client.post("/hooks/wufoo", data=body, content_type=FORM)
    assert answer.status_code == 202, answer.get_json()
    delivery_id = answer.get_json()["id"]
    stored = app.extensions["relay"]["store"].get(delivery_id)
    assert b"HandshakeKey" not in stored.body and KEY.encode() not in stored.body
    assert stored.headers["Content-Length"] == str(len(stored.body)) != str(len(body))
    # Every other pair is kept byte for byte, in its order.
    assert stored.body.split(b"&") == [pair for pair in body.split(b"&") if not pair.startswith(b"HandshakeKey=")]
    assert KEY not in _rows(app)
    admin = {"Authorization": "Bearer " + SECRETS["RELAY_ADMIN_TOKEN"]}
    shown = client.get(f"/admin/api/deliveries/{delivery_id}", headers=admin)
    assert shown.status_code == 200 and KEY not in shown.get_data(as_text=True)
    again = client.post("/hooks/wufoo", data=body, content_type=FORM)
    assert again.status_code == 200 and again.get_json() == {"status": "duplicate", "id": delivery_id}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (_with_key(WUFOO_ENTRY, KEY + "x"), "wrong token"),
        (WUFOO_ENTRY.replace(b"&HandshakeKey=", b"&Other="), "or the body field HandshakeKey"),
        (_with_key(WUFOO_ENTRY, ""), "or the body field HandshakeKey"),
        (WUFOO_ENTRY + b"&HandshakeKey=" + KEY.encode(), "missing token"),  # twice: a list, no token
        (b"HandshakeKey[a]=" + KEY.encode(), "missing token"),  # nested: not the field
    ],
)
def test_a_wrong_or_missing_handshake_key_is_401_and_nothing_is_kept(app, body, detail):
    answer = app.test_client().post("/hooks/wufoo", data=body, content_type=FORM)
    assert answer.status_code == 401
    assert detail in answer.get_json()["detail"]
    assert _rows(app) == ""


def test_the_token_in_the_url_still_counts_and_the_field_is_still_taken_out(app):
    """A wrong key in the body does not matter when ?token= is right; whatever it holds, it is not kept."""
    client = app.test_client()
    answer = client.post(f"/hooks/wufoo?token={KEY}", data=_with_key(WUFOO_ENTRY, "stale-key"), content_type=FORM)
    assert answer.status_code == 202
    assert b"stale-key" not in app.extensions["relay"]["store"].get(answer.get_json()["id"]).body


def test_bodies_relay_cannot_cut_a_field_from_are_refused_before_anything_is_kept(app):
    client = app.test_client()
    boundary = "b0undary"
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="HandshakeKey"\r\n\r\n{KEY}\r\n--{boundary}--\r\n'
    ).encode()
    answer = client.post("/hooks/wufoo", data=multipart, content_type=f"multipart/form-data; boundary={boundary}")
    assert answer.status_code == 415 and "JSON or form-encoded" in answer.get_json()["detail"]
    answer = client.post("/hooks/wufoo", data=b"{broken", content_type="application/json")
    assert answer.status_code == 400
    answer = client.post("/hooks/wufoo", data=WUFOO_ENTRY, content_type=FORM, headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 415
    assert _rows(app) == ""


BODY_FIELD_JSON = """version: 1
source: landing
auth: {scheme: token, secret: "${LANDING_WEBHOOK_TOKEN}", body_field: api_key}
rules:
  - name: lead
    match:
      email: {path: email, transform: email}
"""


def test_a_json_body_is_kept_without_the_key_and_reads_the_same(tmp_path):
    (tmp_path / "landing.yaml").write_text(BODY_FIELD_JSON)
    app = create_app(make_settings(tmp_path, RELAY_MAPPINGS_DIR=str(tmp_path), LANDING_WEBHOOK_TOKEN="landing-k-1"))
    try:
        sent = {"email": "a@example.com", "api_key": "landing-k-1", "n": 12345678901234567890123, "name": "Ольга"}
        answer = app.test_client().post("/hooks/landing", data=json.dumps(sent), content_type="application/json")
        assert answer.status_code == 202
        kept = app.extensions["relay"]["store"].get(answer.get_json()["id"]).body
        assert json.loads(kept) == {key: value for key, value in sent.items() if key != "api_key"}
        assert b"landing-k-1" not in kept
    finally:
        app.extensions["relay"]["store"].close()


def test_body_field_is_only_for_token_sources(tmp_path):
    (tmp_path / "landing.yaml").write_text(BODY_FIELD_JSON.replace("scheme: token", "scheme: hmac, header: X-Sig"))
    with pytest.raises(ConfigError, match=r"landing.yaml:3 auth.body_field: .*use it with scheme: token"):
        load_sources(tmp_path)


def test_authenticate_reads_the_body_token_only_where_the_mapping_names_a_field():
    sources = load_sources(MAPPINGS)
    env = {"WUFOO_WEBHOOK_TOKEN": KEY, "TILDA_WEBHOOK_TOKEN": KEY}
    authenticate(sources["wufoo"], body=b"", headers={}, query={}, env=env, body_token=KEY)
    with pytest.raises(AuthenticationFailed, match="missing token"):
        authenticate(sources["tilda"], body=b"", headers={}, query={}, env=env, body_token=KEY)
    with pytest.raises(AuthenticationFailed, match="missing token"):
        authenticate(sources["wufoo"], body=b"", headers={}, query={}, env=env, body_token=[KEY])
    with pytest.raises(AuthenticationFailed, match="WUFOO_WEBHOOK_TOKEN"):
        authenticate(sources["wufoo"], body=b"", headers={}, query={}, env={}, body_token=KEY)


def test_a_formstack_submission_is_verified_by_its_hex_signature(app):
    client = app.test_client()
    digest = hmac.new(SECRETS["FORMSTACK_WEBHOOK_SECRET"].encode(), FORMSTACK_FORM, hashlib.sha256).hexdigest()
    signed = {"X-FS-Signature": "sha256=" + digest}
    answer = client.post("/hooks/formstack", data=FORMSTACK_FORM, content_type=FORM, headers=signed)
    assert answer.status_code == 202, answer.get_json()
    forged = client.post(
        "/hooks/formstack",
        data=FORMSTACK_FORM.replace(b"john.smith", b"eve"),
        content_type=FORM,
        headers=signed,
    )
    assert forged.status_code == 401


_keys = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=8)
_names = st.sampled_from(["HandshakeKey", "HandshakeKey[]", "HandshakeKey[x]", "Handshake Key", "Email", "a", ""])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(_names, _keys), _keys), min_size=1, max_size=8), st.booleans())
def test_a_form_without_the_field_parses_as_the_form_without_it(pairs, plus):
    """Whatever the pairs (escapes, `+` or `%20`, brackets, empty keys), what is kept parses to what the
    whole form parsed to, less the field and nothing else."""
    quote = quote_plus if plus else (lambda value: quote_plus(value).replace("+", "%20"))
    body = "&".join(f"{quote(key)}={quote(value)}" for key, value in pairs).encode()
    try:
        whole = parse_body(body, FORM)
    except Exception:  # noqa: BLE001 - an empty form and such are refused either way
        return
    value, rest = read_field(body, FORM, "HandshakeKey")
    assert value == whole.get("HandshakeKey") if isinstance(whole, dict) else value is None
    expected = {key: item for key, item in whole.items() if key != "HandshakeKey"}
    if rest.strip(b"&"):
        assert parse_body(rest, FORM) == expected
    else:
        assert expected == {}
    assert all(
        key != "HandshakeKey" and not key.startswith("HandshakeKey[")
        for key, _ in parse_qsl(rest.decode(), keep_blank_values=True)
    )


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(max_size=6) | st.just("HandshakeKey"), _json_values, max_size=6),
    st.sampled_from(["utf-8", "latin-1", "utf-16"]),
)
def test_a_json_object_without_the_field_parses_as_the_object_without_it(data, charset):
    """Written again in the body's own charset, the object reads as it did, less the field."""
    body = json.dumps(data, ensure_ascii=charset == "latin-1").encode(charset)
    content_type = f"application/json; charset={charset}"
    whole = parse_body(body, content_type)
    value, rest = read_field(body, content_type, "HandshakeKey")
    assert value == whole.get("HandshakeKey")
    assert parse_body(rest, content_type) == {key: item for key, item in whole.items() if key != "HandshakeKey"}


def test_xml_is_refused_and_a_body_without_the_field_is_kept_as_sent():
    with pytest.raises(UnsupportedContentType):
        read_field(b"<a><HandshakeKey>k</HandshakeKey></a>", "application/xml", "HandshakeKey")
    assert read_field(b"Email=a%40b.co", FORM, "HandshakeKey") == (None, b"Email=a%40b.co")
    assert read_field(b"[1, 2]", "application/json", "HandshakeKey") == (None, b"[1, 2]")


def test_get_reads_a_key_the_payload_names():
    entry = {"Field3": "a@b.co", "FieldStructure": {"Fields": [{"Type": "email", "ID": "Field3"}]}}
    assert search("get(@, FieldStructure.Fields[?Type=='email'] | [0].ID)", entry) == "a@b.co"
    assert search("get(@, FieldStructure.Fields[?Type=='phone'] | [0].ID)", entry) is None
    assert search("get(missing, 'Field3')", entry) is None
    assert search("get(@, 'Field9')", entry) is None
