"""The sandbox upstream follows the contract: auth, databases, matching, types, operators, subscriptions."""

from __future__ import annotations

import httpx
import pytest

from relay.sandbox import Sandbox, SandboxServer, default_config


@pytest.fixture
def api():  # type: ignore[no-untyped-def]
    server = SandboxServer(Sandbox(default_config(["tok"]))).start()
    with httpx.Client(base_url=server.api_url, timeout=5) as client:
        yield client, server
    server.stop()


def call(client: httpx.Client, method: str, **body: object) -> httpx.Response:
    return client.post(f"/{method}", json={"token": "tok", "db_id": 1, **body})


def test_auth_and_database_answers(api):
    """No token 401, unknown token 403, unknown database 404, non-POST 405."""
    client, _server = api
    assert client.post("/profiles/update", json={"db_id": 1, "data": {}}).status_code == 401
    assert client.post("/profiles/update", json={"token": "x", "db_id": 1, "data": {}}).json()["error"] == 403
    assert call(client, "profiles/import", db_id=9, email="a@b.co", data={}).status_code == 404
    assert client.get("/profiles/update").status_code == 405


def test_import_creates_update_matches_and_operators_apply(api):
    """import creates, update needs a match, and incr/add/delete work as documented."""
    client, _server = api
    assert call(client, "profiles/update", email="a@b.co", data={"_fname": "A"}).status_code == 404
    created = call(
        client,
        "profiles/import",
        email="a@b.co",
        data={
            "email": "a@b.co",
            "orders_count": {"action": "incr", "value": 2},
            "tags": {"action": "add", "value": ["x", "y"]},
        },
    )
    assert created.json()["error"] == 0 and len(created.json()["profile_id"]) == 24
    again = call(
        client,
        "profiles/update",
        email="A@B.co",
        data={"orders_count": {"action": "incr", "value": 1}, "tags": {"action": "delete", "value": ["x"]}},
    )
    assert again.json()["profile_id"] == created.json()["profile_id"]
    got = call(client, "profiles/get", email="a@b.co").json()["data"]
    assert got["orders_count"] == 3 and got["tags"] == ["y"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"matching": "phone", "data": {}}, "phone is required"),
        ({"email": "a@b.co", "data": {"nope": 1}}, "unknown field nope"),
        ({"email": "a@b.co", "data": {"_bdate": "02.04.1990"}}, "wrong type of field _bdate"),
        ({"email": "a@b.co", "data": {"_fname": {"action": "incr", "value": 1}}}, "incr does not apply"),
        ({"email": "a@b.co", "data": {"email": {"action": "unset"}}}, "email cannot be unset"),
        ({"email": "a@b.co", "add_to_segments": [77], "data": {}}, "unknown segment"),
        (
            {"email": "a@b.co", "data": {"subscriptions": [{"resource_id": 5, "channel": "email", "email": "a@b.co"}]}},
            "invalid subscription",
        ),
    ],
)
def test_refusals_are_400_and_write_nothing(api, body, fragment):
    """Each contract breach is a 400 naming the problem, and no profile is created."""
    client, server = api
    response = call(client, "profiles/import", **body)
    assert response.status_code == 400 and fragment in response.json()["error_text"]
    assert server.sandbox.profiles == {}


def test_skip_invalid_subscriptions_and_xml(api):
    """Invalid subscriptions are dropped when asked; XML requests get XML answers."""
    client, _server = api
    ok = call(
        client,
        "profiles/import",
        email="a@b.co",
        skip_invalid_subscriptions=True,
        data={
            "email": "a@b.co",
            "subscriptions": [
                {"resource_id": 5, "channel": "email", "email": "a@b.co"},
                {"resource_id": 1, "channel": "email", "email": "a@b.co"},
            ],
        },
    )
    assert ok.json()["error"] == 0
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><xml><token>tok</token><db_id>1</db_id><email>a@b.co</email>'
        '<data><phones array="true">+79123456789</phones></data></xml>'
    )
    answer = client.post(
        "/profiles/update", content=xml, headers={"Content-Type": "application/xml", "Accept": "application/xml"}
    )
    assert answer.status_code == 200 and answer.text.startswith("<?xml") and "<error>0</error>" in answer.text


def test_faults_and_token_never_logged(api):
    """Injected faults come in order; the request log never holds the token."""
    client, server = api
    client.post(server.base_url + "/_fake/faults", json=[{"status": 503}, {"status": 429, "retry_after": 3}])
    assert call(client, "profiles/import", email="a@b.co", data={}).status_code == 503
    limited = call(client, "profiles/import", email="a@b.co", data={})
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    assert call(client, "profiles/import", email="a@b.co", data={}).status_code == 200
    log = client.get(server.base_url + "/_fake/requests").text
    assert "tok" not in log.replace("token", "")
