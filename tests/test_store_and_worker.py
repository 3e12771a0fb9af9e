"""The store contract on SQLite and PostgreSQL, and the worker against a real loopback upstream."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from relay.inbound import InboundRequest
from relay.store import Store
from relay.worker import Worker

from .conftest import SECRETS, make_settings, postgres_url, require_postgres


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'contract.db'}")
    else:
        require_postgres()
        s = Store(postgres_url())  # type: ignore[arg-type]
    yield s
    s.close()


def _request(body: bytes) -> InboundRequest:
    return InboundRequest(source="tilda", body=body, content_type="application/x-www-form-urlencoded")


def test_accept_dedup_claim_and_fencing(store):
    """Accept commits, a repeat is a duplicate, a claim is fenced by its token."""
    key = f"tilda:p:{uuid.uuid4()}"
    first = store.accept(_request(b"Email=a%40example.com"), dedup_key=key, status="queued", dedup_window=60)
    again = store.accept(_request(b"Email=a%40example.com"), dedup_key=key, status="queued", dedup_window=60)
    assert not first.duplicate and again.duplicate and again.id == first.id
    claimed = [(d, t) for d, t in store.claim(owner="a", limit=100, lease_seconds=30) if d.id == first.id]
    assert claimed, "the due delivery is claimed"
    _delivery, token = claimed[0]
    # The lease runs out; another worker claims it again with a new token.
    reclaimed = [
        (d, t) for d, t in store.claim(owner="b", limit=100, lease_seconds=30, now=time.time() + 31) if d.id == first.id
    ]
    assert reclaimed
    assert store.finish(first.id, token, status="delivered") is False  # the stale worker cannot settle it
    assert store.finish(first.id, reclaimed[0][1], status="failed", reason="rejected", detail="no") is True
    assert store.get(first.id).status == "failed"
    assert store.replay(first.id) is True and store.get(first.id).status == "queued"


def test_dedup_window_expires(store):
    """After the window, the same key is a new delivery."""
    key = f"tilda:p:{uuid.uuid4()}"
    first = store.accept(_request(b"x=1"), dedup_key=key, status="held", dedup_window=10, now=1000.0)
    later = store.accept(_request(b"x=1"), dedup_key=key, status="held", dedup_window=10, now=1011.0)
    assert not later.duplicate and later.id != first.id


class FakeUpstream:
    """A loopback HTTP server speaking the upstream's envelope, with scripted faults."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.faults: list[int] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body})
                status = fake.faults.pop(0) if fake.faults else 200
                if status >= 500:
                    payload = b"<html>bad gateway</html>"
                elif body.get("token") != SECRETS["RELAY_UPSTREAM_TOKEN"]:
                    status, payload = 403, b'{"error": 403, "error_text": "Access denied"}'
                elif status == 400:
                    payload = b'{"error": 400, "error_text": "Incorrect request"}'
                else:
                    payload = b'{"error": 0, "error_text": "Successful operation", "profile_id": "' + b"a" * 24 + b'"}'
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1.1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():  # type: ignore[no-untyped-def]
    fake = FakeUpstream()
    yield fake
    fake.close()


def _drain(worker: Worker, store: Store, delivery_id: str) -> str:
    for _ in range(20):
        claimed = store.claim(owner=worker.owner, limit=1, lease_seconds=30, now=time.time() + 10_000)
        if not claimed:
            break
        status = worker.process(*claimed[0])
        if status != "retrying":
            return status
    return store.get(delivery_id).status


def test_worker_delivers_retries_and_keeps_failures(tmp_path, upstream):
    """A 5xx is retried, success is recorded with every attempt, and a 400 is kept as failed/rejected."""
    settings = make_settings(tmp_path, RELAY_UPSTREAM_URL=upstream.url)
    store = Store(settings.database_url)
    worker = Worker(settings, store=store)
    accepted = store.accept(
        _request(b"Email=Ivan%40Example.com&Phone=8+912+345-67-89"), dedup_key="k1", status="queued", dedup_window=60
    )
    upstream.faults = [503]
    assert _drain(worker, store, accepted.id) == "delivered"
    delivered = store.get(accepted.id)
    assert delivered.profile_id == "a" * 24
    assert [a["outcome"] for a in store.attempts_of(accepted.id)] == ["transient", "delivered"]
    sent = upstream.requests[-1]
    assert sent["path"] == "/api/v1.1/profiles/import"
    assert sent["body"]["data"]["phones"] == ["+79123456789"]
    stored_text = json.dumps(store.attempts_of(accepted.id)) + json.dumps(delivered.calls)
    assert SECRETS["RELAY_UPSTREAM_TOKEN"] not in stored_text

    refused = store.accept(_request(b"Email=b%40example.com"), dedup_key="k2", status="queued", dedup_window=60)
    upstream.faults = [400]
    assert _drain(worker, store, refused.id) == "failed"
    assert store.get(refused.id).reason == "rejected"

    broken = store.accept(_request(b"Name=nobody"), dedup_key="k3", status="queued", dedup_window=60)
    assert _drain(worker, store, broken.id) == "failed"
    assert store.get(broken.id).reason == "mapping"
    worker.stop()
    store.close()


def test_admin_api_lists_shows_and_replays(tmp_path):
    """The admin API needs the token, lists and shows deliveries, and replays failed ones."""
    from relay.web import create_app

    app = create_app(make_settings(tmp_path))
    client = app.test_client()
    response = client.post(
        "/hooks/tilda?token=" + SECRETS["TILDA_WEBHOOK_TOKEN"],
        data=b"Email=a%40example.com",
        content_type="application/x-www-form-urlencoded",
    )
    delivery_id = response.get_json()["id"]
    assert client.get("/admin/api/deliveries").status_code == 401
    auth = {"Authorization": "Bearer " + SECRETS["RELAY_ADMIN_TOKEN"]}
    listed = client.get("/admin/api/deliveries?status=held", headers=auth).get_json()
    assert [d["id"] for d in listed["deliveries"]] == [delivery_id]
    shown = client.get(f"/admin/api/deliveries/{delivery_id}", headers=auth).get_json()
    assert shown["request"]["body"] == "Email=a%40example.com"
    assert client.post(f"/admin/api/deliveries/{delivery_id}/replay", headers=auth).status_code == 202
    disabled = create_app(make_settings(tmp_path / "x", RELAY_ADMIN_TOKEN="")).test_client()
    assert disabled.get("/admin/api/deliveries", headers=auth).status_code == 403
