"""Shared fixtures: real app, real SQLite (and PostgreSQL when it answers), loopback only."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import event

from relay.sandbox import Sandbox, SandboxServer, default_config
from relay.settings import Settings
from relay.store import Store
from relay.testing import free_port
from relay.web import create_app
from relay.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "mappings"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

SECRETS = {
    "TILDA_WEBHOOK_TOKEN": "tilda-test-token-9c1f",
    "JOTFORM_WEBHOOK_TOKEN": "jotform-test-token-77aa",
    "GOOGLE_FORMS_WEBHOOK_TOKEN": "gforms-test-token-3b2e",
    "ELEMENTOR_WEBHOOK_TOKEN": "elementor-test-token-5d4c",
    "CONTACT_FORM_7_WEBHOOK_TOKEN": "cf7-test-token-8e8f",
    "FILLOUT_WEBHOOK_TOKEN": "fillout-test-token-9a9b",
    "GRAVITY_FORMS_WEBHOOK_TOKEN": "gravity-test-token-1f1f",
    "SHOPIFY_WEBHOOK_SECRET": "shpss_test_secret_0f9e8d",
    "WOOCOMMERCE_WEBHOOK_SECRET": "wc-test-secret-a1b2",
    "STRIPE_WEBHOOK_SECRET": "whsec_test_secret_c3d4",
    "TYPEFORM_WEBHOOK_SECRET": "typeform-test-secret-e5f6",
    "TALLY_WEBHOOK_SECRET": "tally-test-secret-0a0b",
    "WEBFLOW_WEBHOOK_SECRET": "webflow-test-secret-1c1d",
    "PADDLE_WEBHOOK_SECRET": "pdl_ntfset_test_secret_4e4f",
    "HUBSPOT_WEBHOOK_SECRET": "hubspot-test-secret-6a6b",
    "FORMSTACK_WEBHOOK_SECRET": "formstack-test-secret-7c7d",
    "WUFOO_WEBHOOK_TOKEN": "wufoo-test-key-8e8e",
    "UNBOUNCE_WEBHOOK_TOKEN": "unbounce-test-token-2c2d",
    "PAPERFORM_WEBHOOK_TOKEN": "paperform-test-token-3e3f",
    "GUMROAD_WEBHOOK_TOKEN": "gumroad-test-token-4a4b",
    "FRAMER_WEBHOOK_SECRET": "framer-test-secret-of-32-characters-5c5d",
    "INSALES_WEBHOOK_TOKEN": "insales-test-token-5b5c",
    "BIGCOMMERCE_WEBHOOK_TOKEN": "bigcommerce-test-token-6d6e",
    "BIGCOMMERCE_API_TOKEN": "bigcommerce-api-test-token-7f70",
    "SQUARESPACE_WEBHOOK_SECRET": "5a5b5c5d5e5f60616263646566676869",
    "SQUARESPACE_API_KEY": "squarespace-api-test-key-8a8b",
    "ECWID_WEBHOOK_SECRET": "ecwid-client-secret-test-9c9d",
    "ECWID_API_TOKEN": "secret_ecwid-api-test-token-0e0f",
    "PADDLE_API_KEY": "pdl_live_apikey_test_1a1b",
    "LEMON_SQUEEZY_WEBHOOK_SECRET": "lemon-test-secret-4c4d",
    "CALENDLY_WEBHOOK_SECRET": "calendly-signing-key-test-5e5f",
    "RELAY_ADMIN_TOKEN": "admin-test-token-2e2f",
    "RELAY_UPSTREAM_TOKEN": "upstream-test-token-3a3b",
}


def live_processes() -> Iterator[tuple[int, list[str], list[bytes]]]:
    """(pid, the fields of /proc/<pid>/stat after the command name, argv) of every process not yet reaped.

    In the fields, [1] is the parent's pid and [2] the process group.
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if fields[0] != "Z":
            yield int(entry), fields, argv


def delivery_workers(parent: int) -> set[int]:
    """Pids of the `python -m relay worker` processes whose parent is `parent` (`relay run`)."""
    return {
        pid
        for pid, fields, argv in live_processes()
        if int(fields[1]) == parent and argv[1:4] == [b"-m", b"relay", b"worker"]
    }


_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: object) -> None:  # pragma: no cover - guard
    if isinstance(address, tuple) and address:
        host = str(address[0])
        if host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("127."):
            raise RuntimeError(f"tests may only reach loopback, not {host}")
    return _real_connect(self, address)  # type: ignore[arg-type]


# Sources that tests define in mapping folders of their own; their metrics share the process's registry.
TEST_ONLY_SOURCES = ("landing", "shopify_eu", "shop")

BUILT_IN_SOURCES = (
    "tilda",
    "typeform",
    "tally",
    "jotform",
    "google_forms",
    "webflow",
    "elementor",
    "shopify",
    "woocommerce",
    "stripe",
    "paddle",
    "hubspot",
    "contact_form_7",
    "fillout",
    "wufoo",
    "formstack",
    "gravity_forms",
    "insales",
    "bigcommerce",
    "squarespace",
    "ecwid",
    "adobe_commerce",
    "lemon_squeezy",
    "calendly",
    "unbounce",
    "paperform",
    "gumroad",
    "framer",
)


@contextmanager
def captured_log_lines(style: str = "json") -> Iterator[list[str]]:
    """Every record logged meanwhile, formatted as relay formats it."""
    import logging

    from relay.logs import LineFormatter

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    handler.setFormatter(LineFormatter(style))
    logging.getLogger().addHandler(handler)
    try:
        yield lines
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.fixture(autouse=True, scope="session")
def _no_secret_in_any_log_line() -> Iterator[None]:
    """Everything the whole suite logs, formatted as relay formats it, must hold none of the test secrets."""
    with captured_log_lines() as lines:
        yield
    text = "\n".join(lines)
    leaked = [name for name, secret in SECRETS.items() if secret in text]
    assert leaked == [], f"secrets found in the suite's log lines: {leaked}"


@pytest.fixture(autouse=True, scope="session")
def _guard_network() -> Iterator[None]:
    socket.socket.connect = _loopback_only  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]


def relay_command(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m relay <args>` as a user runs it: its own process, from the project folder, with only `env`."""
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def post_signed(
    client: Any,
    source: str,
    payload: Any,
    *,
    secret: str,
    header: str,
    headers: dict[str, str],
    hex_digest: bool = False,
) -> Any:
    """Post `payload` as JSON to /hooks/<source>, signed as shops sign a body: HMAC-SHA256 with `secret`, in
    base64 (Shopify, WooCommerce) or hex (Lemon Squeezy) in `header`, beside the provider's other `headers`."""
    body = json.dumps(payload).encode()
    digest = hmac.new(secret.encode(), body, hashlib.sha256)
    signature = digest.hexdigest() if hex_digest else base64.b64encode(digest.digest()).decode()
    return client.post(
        f"/hooks/{source}", data=body, content_type="application/json", headers={**headers, header: signature}
    )


def post_shopify(client: Any, topic: str, payload: Any) -> str:
    """Post a Shopify webhook signed as Shopify signs it, with its topic and a webhook id of its body; the
    stored delivery's id (the webhook must be taken)."""
    answer = post_signed(
        client,
        "shopify",
        payload,
        secret=SECRETS["SHOPIFY_WEBHOOK_SECRET"],
        header="X-Shopify-Hmac-Sha256",
        headers={"X-Shopify-Topic": topic, "X-Shopify-Webhook-Id": body_digest(payload)[:20]},
    )
    assert answer.status_code == 202, answer.get_json()
    return str(answer.get_json()["id"])


def body_digest(payload: Any) -> str:
    """The SHA-256 of `payload` as post_signed sends it: a delivery id a provider would give that body."""
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def quick_retry_settings(tmp_path: Path, sandbox: SandboxServer, **env: str) -> Settings:
    """Settings for a worker driven by hand against the sandbox: short timeouts, retries due at once."""
    return make_settings(
        tmp_path,
        RELAY_UPSTREAM_URL=sandbox.api_url,
        RELAY_UPSTREAM_TIMEOUT="0.5",
        RELAY_RETRY_SCHEDULE="0.05,0.1,0.2",
        **env,
    )


def hand_driven(settings: Settings) -> Iterator[tuple[Any, Store, Worker]]:
    """The app's test client and a worker on one store, the worker driven by hand (`drain`); for a fixture
    to `yield from`."""
    app = create_app(settings)
    store = app.extensions["relay"]["store"]
    worker = Worker(settings, store=store)
    yield app.test_client(), store, worker
    worker.stop()
    store.close()


def make_settings(tmp_path: Path, **env: str) -> Settings:
    base = {
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
        "RELAY_MAPPINGS_DIR": str(MAPPINGS),
        "RELAY_LOG_LEVEL": "warning",
        **SECRETS,
    }
    base.update(env)
    return Settings.from_env({k: v for k, v in base.items() if v is not None})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def app(settings: Settings):  # type: ignore[no-untyped-def]
    application = create_app(settings)
    yield application
    application.extensions["relay"]["store"].close()


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


# Where scripts/test looks when RELAY_TEST_DATABASE_URL is unset: a local server with the `test` database.
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test?connect_timeout=3"


def postgres_url() -> str:
    return os.environ.get("RELAY_TEST_DATABASE_URL") or LOCAL_POSTGRES


def postgres_available() -> tuple[bool, str]:
    url = postgres_url()
    try:
        store = Store(url)
        store.ping()
        store.close()
    except Exception as exc:  # noqa: BLE001
        where = "RELAY_TEST_DATABASE_URL" if os.environ.get("RELAY_TEST_DATABASE_URL") else LOCAL_POSTGRES
        return False, (
            f"PostgreSQL at {where} does not answer ({type(exc).__name__}); "
            "point RELAY_TEST_DATABASE_URL at a server, or run .ci/run, which starts one"
        )
    return True, ""


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema in the test database, dropped afterwards, as a store URL."""
    import uuid

    from sqlalchemy import create_engine, text

    require_postgres()
    base = postgres_url()
    schema = f"relay_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    yield f"{base}{separator}options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def require_postgres() -> None:
    ok, why = postgres_available()
    if not ok:
        if os.environ.get("RELAY_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required here: {why}")
        pytest.skip(why)


class TcpProxy:
    """A TCP forwarder on loopback between relay and PostgreSQL, to take the database away for real."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.open: list[socket.socket] = []
        self.listener: socket.socket | None = None

    @classmethod
    def in_front_of(cls, database_url: str) -> tuple[TcpProxy, str]:
        """A proxy (not listening yet) to the database at `database_url`, and the URL that goes through it."""
        from sqlalchemy.engine import make_url

        database = make_url(database_url)
        proxy = cls((database.host or "127.0.0.1", database.port or 5432))
        return proxy, database.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)

    def start(self) -> TcpProxy:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        assert self.listener is not None
        for sock in [self.listener, *self.open]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def serve_on_loopback(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """A real HTTP server for `handler` on a free loopback port, serving from a thread of its own."""

    class Quiet(handler):  # type: ignore[misc,valid-type]
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class LoopbackFake:
    """A fake of a provider's API, served by a real HTTP server on loopback: `serve` starts it, `url` is its
    address (with `path` after the port), `stop` ends it."""

    server: ThreadingHTTPServer
    url: str

    def serve(self, handler: type[BaseHTTPRequestHandler], path: str = "") -> None:
        self.server = serve_on_loopback(handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """The upstream's stand-in, served on loopback, taking the test upstream token."""
    server = SandboxServer(Sandbox(default_config([SECRETS["RELAY_UPSTREAM_TOKEN"]]))).start()
    yield server
    server.stop()


def drain_accepted(store: Store, worker: Worker, response: Any, *, status_code: int) -> str:
    """The webhook's answer is `accepted` with `status_code` (a provider that takes 200 alone must get it); its
    delivery is processed until it settles: its status."""
    assert response.status_code == status_code, response.get_json()
    assert response.get_json()["status"] == "accepted"
    return drain(store, worker, response.get_json()["id"])


def drain(store: Store, worker: Worker, delivery_id: str, *, rounds: int = 10) -> str:
    """Process the delivery, jumping the clock past each retry time, until it settles; its status."""
    for _ in range(rounds):
        claimed = store.claim(owner=worker.owner, limit=1, lease_seconds=30, now=time.time() + 3600)
        if not claimed or worker.process(*claimed[0]) != "retrying":
            break
    delivery = store.get(delivery_id)
    assert delivery is not None
    return delivery.status


T = TypeVar("T")


def counting_steps(store: Store, action: Callable[[], T], by_checkout: list[int] | None = None) -> tuple[T, int]:
    """Run `action` and count the steps of SQLite's virtual machine it takes: the same count for the
    same rows and query plans, however fast or busy the machine is. `by_checkout` gets the count of each
    use of a pooled connection (a transaction of the store's) in turn."""
    each: list[int] = [] if by_checkout is None else by_checkout

    def step() -> int:  # called every 100 steps
        each[-1] += 100
        return 0  # go on

    def on_checkout(dbapi: Any, *_: Any) -> None:
        each.append(0)
        dbapi.set_progress_handler(step, 100)

    store.engine.pool.dispose()  # every connection of `action` is a checkout
    event.listen(store.engine, "checkout", on_checkout)
    try:
        return action(), sum(each)
    finally:
        event.remove(store.engine, "checkout", on_checkout)
