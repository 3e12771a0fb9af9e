"""The durable store: deliveries (the outbox) and their attempts, on SQLite or PostgreSQL.

A delivery row is the raw request as received plus its state. Workers claim
rows by setting `status='delivering'`, a lease expiry and a fresh claim
token; every later write by that worker names the token, so a worker that lost
its lease can never overwrite the result of the one that claimed the row again.

PostgreSQL claims with `FOR UPDATE SKIP LOCKED`; SQLite runs every
transaction as `BEGIN IMMEDIATE` in WAL mode, so a claim is one short write.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    inspect,
    null,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import InterfaceError, InternalError, OperationalError

from relay.errors import KEPT_BY_RULE, StoreUnavailable
from relay.ids import random_hex
from relay.inbound import InboundRequest
from relay.mapping.model import ONCE_KEY_LENGTH
from relay.store_writes import (
    BUSY_TIMEOUT_SECONDS,
    DELIVERY_COLUMNS,
    Executor,
    GroupWriter,
    SQLAlchemyExecutor,
    accept_webhook,
    claim_due,
    keep_keys,
    record_try,
    settle,
    take_once,
)

__all__ = [
    "CONTENT_TYPE_LENGTH",
    "DELIVERY_ID",
    "FAILURE_REASONS",
    "REPLAYABLE",
    "SETTLED",
    "STATUSES",
    "Attempt",
    "Delivery",
    "Problem",
    "Store",
    "contact_key",
    "status_and_reason",
]

STATUSES = ("queued", "delivering", "delivered", "retrying", "held", "failed")
REPLAYABLE = ("failed", "held")
REPLAY_BATCH = 200  # deliveries a replay transaction: SQLite's write lock for 18 ms at most
DUE = ("queued", "retrying")
SETTLED = ("delivered", "failed")  # for good: only a replay takes a failed one again
PROBLEM_STATUSES = ("failed", "retrying")  # deliveries whose detail says what went wrong
FAILURE_REASONS = ("mapping", "rejected", "exhausted")  # a filter's `failed/rejected`, as `overview` prints it
PROBLEMS_SHOWN = 10
T = TypeVar("T")
# The size SQLite cuts its WAL file back to once a checkpoint has emptied it. A read that lasts (a backup
# with VACUUM INTO, a long export) holds checkpoints back, and the WAL grows with every webhook meanwhile:
# 20,000 webhooks of 3 KB made it 670 MB. Without a limit the file stays that size until relay stops.
WAL_SIZE_LIMIT = 64 * 1024 * 1024
# The WAL's size, in pages, at which a commit checkpoints by itself (SQLite's default is 1,000): the
# group writer's thread checkpoints meanwhile (relay.store_writes.Checkpointer), off the commits' path.
WAL_AUTOCHECKPOINT_PAGES = 10_000
CONTENT_TYPE_LENGTH = 255  # the ingress refuses a longer Content-Type (the worker parses the body by it)
PROFILE_ID_LENGTH = 64  # the upstream's ids are 24 hex digits; a longer one is not kept (see _profile_id)
# How long /readyz says a refused write when no later write came to say otherwise (a full disk that nobody
# wrote to since may have been freed); providers send again within minutes.
WRITE_REFUSAL_SHOWN_SECONDS = 120

metadata = MetaData()

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("source", String(64), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(32)),
    Column("detail", Text),
    Column("body", LargeBinary, nullable=False),
    Column("content_type", String(CONTENT_TYPE_LENGTH)),
    Column("headers", Text, nullable=False, default="{}"),
    Column("client_ip", String(64)),
    Column("dedup_key", String(300), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("calls_done", Integer, nullable=False, default=0),
    Column("cycle_started_at", Float, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", String(128)),
    Column("claim_token", String(64)),
    Column("lease_expires_at", Float),
    Column("calls", Text),
    Column("profile_id", String(PROFILE_ID_LENGTH)),
    Column("updated_at", Float, nullable=False),
    # 1 once the contacts the delivery names are in delivery_contacts (added after the table was: NULL in
    # older rows).
    Column("contacts_indexed", Integer),
    Index("ix_deliveries_due", "status", "next_attempt_at"),
    # Ids begin with the arrival time, so time ranges are found through the primary key (see _filters),
    # and one source's deliveries come out newest first from this index, a page at a time.
    Index("ix_deliveries_source_id", "source", "id"),
)
# The deliveries a search for a person reads one by one, found without a scan: those without keys, which the
# worker has not translated yet (queued, held; the housekeeping keys those waiting for minutes) or an older
# relay settled.
Index(
    "ix_deliveries_unindexed",
    deliveries.c.id,
    sqlite_where=deliveries.c.contacts_indexed.is_(None),
    postgresql_where=deliveries.c.contacts_indexed.is_(None),
)
# What a Delivery holds: every column but the bookkeeping above.
_DELIVERY_FIELDS = tuple(deliveries.c[name] for name in DELIVERY_COLUMNS)
# Replaced by ix_deliveries_source_id: listing one source sorted all its deliveries for every page.
_DROPPED_INDEXES = ("ix_deliveries_source_received",)

# The e-mail addresses and phone numbers each delivery names, in its calls or, when it has none, its
# payload (relay.contacts.contact_keys), by a digest of each (contact_key): a person's deliveries are found
# through the key instead of by reading every delivery's calls (0.5 s at 100,000 deliveries), and the table
# holds no address in clear.
delivery_contacts = Table(
    "delivery_contacts",
    metadata,
    Column("contact", String(32), primary_key=True),
    Column("delivery_id", String(32), ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_delivery_contacts_delivery", "delivery_id"),
    sqlite_with_rowid=False,
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery_id", String(32), ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("call_index", Integer, nullable=False),
    Column("method", String(64)),
    Column("request", Text),
    Column("http_status", Integer),
    Column("response", Text),
    Column("outcome", String(32), nullable=False),
    Column("error", Text),
    Index("ix_attempts_delivery", "delivery_id", "id"),
)

dedup_keys = Table(
    "dedup_keys",
    metadata,
    Column("key", String(300), primary_key=True),
    Column("delivery_id", String(32), nullable=False),
    Column("expires_at", Float, nullable=False),
    sqlite_with_rowid=False,  # one B-tree (the key) instead of a table plus its key index
)


# The keys a rule's `once` took (`order 5 paid`), by source: a later delivery of the same order passes the
# rule over. They outlive the deliveries that took them (RELAY_KEEP_DELIVERED), since an order's hooks may
# come months apart, and go after ONCE_KEEP_SECONDS (or RELAY_KEEP_DELIVERED, if longer); one row an order.
once_keys = Table(
    "once_keys",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("key", String(ONCE_KEY_LENGTH), primary_key=True),
    Column("delivery_id", String(32), nullable=False),
    Column("taken_at", Float, nullable=False),
    Index("ix_once_keys_taken", "taken_at"),
    Index("ix_once_keys_delivery", "delivery_id"),
)
ONCE_KEEP_SECONDS = 400 * 24 * 3600
# The newest delivery of each `latest_by` key of a delayed event (relay.mapping.delays): a waiting delivery
# whose key another one holds now is passed over. The key is a digest: no payload text is kept here. Kept
# as once keys are (ONCE_KEEP_SECONDS, or RELAY_KEEP_DELIVERED if longer): a step of a checkout that failed
# for want of an upstream, replayed after its delivered steps were purged, is still passed over; one row a
# checkout. `ordered_at` is the holder's `ordered_by` value (None: ordered by arrival); added after the table was.
latest_keys = Table(
    "latest_keys",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("delivery_id", String(32), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("ordered_at", Float, nullable=True),
    Index("ix_latest_keys_received", "received_at"),
)

# Whose turn it is at each housekeeping task (the purge, the keying): with several worker processes, on one
# machine or many, one takes a round and the others pass it over, rather than each purging and keying the
# same rows. `due_at` is when the next round may start: the end of the last one plus the task's interval,
# or, while a round runs, the end of its hold (HOUSEKEEPING_HOLD), after which another process takes over
# from one killed in the middle. `done_at`: when the last round that did not fail ended (for /metrics: a
# purge that fails every hour lets the disk fill). Not copied by copy-store: a new store's first round comes
# at once.
housekeeping_turns = Table(
    "housekeeping_turns",
    metadata,
    Column("task", String(32), primary_key=True),
    Column("due_at", Float, nullable=False),
    Column("taken_by", String(128), nullable=False),
    Column("done_at", Float),
)
_TAKE_NEW_TURN = text(
    "INSERT INTO housekeeping_turns (task, due_at, taken_by) VALUES (:task, :due_at, :owner) "
    "ON CONFLICT (task) DO NOTHING"
)
_NOT_COPIED = (housekeeping_turns,)


def _attempt_row(delivery_id: str, attempt: Attempt) -> dict[str, Any]:
    return {
        "delivery_id": delivery_id,
        "started_at": attempt.started_at,
        "duration_ms": attempt.duration_ms,
        "call_index": attempt.call_index,
        "method": attempt.method,
        "request": json.dumps(attempt.request, ensure_ascii=False) if attempt.request is not None else None,
        "http_status": attempt.http_status,
        "response": (attempt.response or "")[:2000],
        "outcome": attempt.outcome,
        "error": attempt.error[:2000] if attempt.error else None,
    }


@dataclass(frozen=True)
class Attempt:
    """One try of one call, and the progress it made (calls_done, profile_id) when it succeeded."""

    started_at: float
    duration_ms: float
    call_index: int
    method: str | None
    request: dict[str, Any] | None
    http_status: int | None
    response: str | None
    outcome: str
    error: str | None = None
    calls_done: int | None = None
    profile_id: str | None = None


@dataclass(frozen=True)
class Delivery:
    """One delivery as stored."""

    id: str
    source: str
    received_at: float
    status: str
    reason: str | None
    detail: str | None
    body: bytes
    content_type: str | None
    headers: dict[str, str]
    client_ip: str | None
    dedup_key: str
    attempts: int
    calls_done: int
    cycle_started_at: float
    next_attempt_at: float
    lease_owner: str | None
    claim_token: str | None
    lease_expires_at: float | None
    calls: list[dict[str, Any]] | None
    profile_id: str | None
    updated_at: float

    @classmethod
    def from_row(cls, row: Any) -> Delivery:
        return cls._from(dict(row._mapping))

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> Delivery:
        """From a row in DELIVERY_COLUMNS order."""
        return cls._from(dict(zip(DELIVERY_COLUMNS, values, strict=True)))

    @classmethod
    def _from(cls, values: dict[str, Any]) -> Delivery:
        values["headers"] = json.loads(values["headers"] or "{}")
        values["calls"] = json.loads(values["calls"]) if values["calls"] else None
        values["body"] = bytes(values["body"])
        return cls(**values)

    def inbound(self) -> InboundRequest:
        return InboundRequest(
            source=self.source,
            body=self.body,
            content_type=self.content_type,
            headers=self.headers,
            client_ip=self.client_ip,
        )


@dataclass(frozen=True)
class Problem:
    """Failed or retrying deliveries that share a source, status, reason and detail (see `Store.problems`)."""

    source: str
    status: str
    reason: str | None
    detail: str | None
    count: int
    newest_id: str


@dataclass(frozen=True)
class Accepted:
    id: str
    duplicate: bool


_SCHEMA_LOCK = 0x72656C6179  # "relay": the advisory lock that serialises schema creation


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


log = logging.getLogger("relay.store")
# What a database that is down, unreachable, locked, full or read-only raises: SQLAlchemy's errors, and the
# driver's own from the group writer's raw connection. A PostgreSQL that takes no writes (a standby after a
# failover, `default_transaction_read_only`) raises an InternalError (SQLSTATE 25006): a 503 that providers
# send again, not a 500, and at start a wait for the store rather than a crash.
_UNAVAILABLE = (
    OperationalError,
    InterfaceError,
    InternalError,
    sqlite3.OperationalError,
    sqlite3.InterfaceError,
    sqlite3.InternalError,
)


@contextmanager
def _database_away(what: str) -> Iterator[None]:
    """Turn what a database that is down, unreachable or locked raises into StoreUnavailable."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"the store {what} ({type(exc).__name__})") from exc


def _driver_error(exc: StoreUnavailable) -> BaseException | None:
    """The driver's own error behind a StoreUnavailable (SQLAlchemy wraps it as `orig`)."""
    cause = exc.__cause__
    return getattr(cause, "orig", None) or cause


def refusal(exc: StoreUnavailable) -> str:
    """What refused a write, for /readyz, which answers anyone: SQLite's own words ("database or disk is
    full", "database is locked"), PostgreSQL's SQLSTATE (53100: disk full), never a message that could
    name a host or a user."""
    original = _driver_error(exc)
    if isinstance(original, sqlite3.Error):
        return str(original)[:120] or type(original).__name__
    sqlstate = getattr(original, "sqlstate", None)
    name = type(original).__name__ if original is not None else "unknown"
    return f"{name} (SQLSTATE {sqlstate})" if sqlstate else name


def _database_said_no(exc: StoreUnavailable) -> bool:
    """The database answered the write with an error of its own (SQLite: full, read-only, locked; PostgreSQL:
    any SQLSTATE), rather than not answering at all (a refused connection)."""
    original = _driver_error(exc)
    return isinstance(original, sqlite3.Error) or getattr(original, "sqlstate", None) is not None


def _profile_id(value: str | None) -> str | None:
    """The upstream's profile id as the delivery keeps it: one longer than the column (an upstream other than
    Altcraft) is left out rather than fail the write that records a call the upstream took; the attempt's
    answer still has it whole."""
    return value if value is None or len(value) <= PROFILE_ID_LENGTH else None


DELIVERY_ID = re.compile(r"[0-9a-f]{32}")  # what new_id makes


def contact_key(value: str) -> str:
    """The key delivery_contacts holds for a contact (an e-mail address as the `email` transform writes it, a
    phone in E.164)."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def new_id(now: float | None = None) -> str:
    # Time-ordered, so ids sort by arrival: 12 hex of the arrival's milliseconds + 20 random.
    return f"{_millis(time.time() if now is None else now)}{random_hex(10)}"


def _millis(moment: float, *, plus: int = 0) -> str:
    return f"{max(0, int(moment * 1000) + plus):012x}"


def _source_counts(source: str | None, since: float | None, until: float | None, *, sqlite: bool) -> Any:
    """The overview's counts in one statement (one snapshot): each source's deliveries that are not
    delivered, by status and reason, through the status index; and each source's total and newest id, from
    the (source, id) index alone. Delivered is the difference. Delivered deliveries are most of the table
    and each row carries its body: counting them from the table read all of it (5 s for 100,000
    Shopify-sized deliveries with a cold cache)."""

    others = [status for status in STATUSES if status != "delivered"]
    not_delivered = (
        select(deliveries.c.source, deliveries.c.status, deliveries.c.reason, func.count(), null())
        .where(deliveries.c.status.in_(others), *_id_range(deliveries.c.id, since, until))
        .group_by(deliveries.c.source, deliveries.c.status, deliveries.c.reason)
    )
    # Without a source, a time range on the id itself takes SQLite to the primary key, and from there to
    # every row; with one, it walks that source's part of the (source, id) index, as PostgreSQL does.
    every_id = _unindexed(deliveries.c.id) if sqlite and source is None else deliveries.c.id
    every = select(deliveries.c.source, null(), null(), func.count(), func.max(deliveries.c.id))
    every = every.where(*_id_range(every_id, since, until)).group_by(deliveries.c.source)
    if source is not None:
        not_delivered = not_delivered.where(_unindexed(deliveries.c.source) == source)
        every = every.where(deliveries.c.source == source)
    return union_all(not_delivered, every)


def _id_range(id_: Any, since: float | None, until: float | None) -> list[Any]:
    """Conditions on a delivery id (or an expression of it) for arrivals in [since, until), to the
    millisecond: ids begin with the arrival's milliseconds."""
    bounds = [id_ >= _millis(since)] if since is not None else []
    return bounds + ([id_ < _millis(until, plus=1)] if until is not None else [])


def _unindexed(column: Any) -> Any:
    """The column's value as an expression, which no index serves: it keeps the planner off that column's
    index where another one finds the rows (SQLite's planner has no statistics, and PostgreSQL's expects
    matches spread evenly)."""
    return column.concat("")


def _page_ids(conditions: Sequence[Any], limit: int) -> Any:
    """The newest `limit` ids that meet the conditions."""
    return select(deliveries.c.id).where(and_(True, *conditions)).order_by(deliveries.c.id.desc()).limit(limit)


def status_and_reason(status: str, reason: str | None) -> str:
    """`failed/mapping`, or `held` when there is no reason: how a replay's dry run names what it counts."""
    return f"{status}/{reason}" if reason else status


def _replayable(*conditions: Any) -> tuple[Any, ...]:
    """What a replay takes now, of the deliveries that match `conditions`: its count (a dry run) and the
    replay itself read the same."""
    return (deliveries.c.status.in_(REPLAYABLE), *conditions)


def _create_tables(connection: Connection) -> None:
    """Create what is missing, columns and indexes of tables made by an earlier version included, and drop
    the indexes this version no longer uses."""
    metadata.create_all(connection)
    found = inspect(connection)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in found.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:  # a later version's column is nullable: no value to make up
                kind = column.type.compile(connection.dialect)
                connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
        for index in table.indexes:
            index.create(connection, checkfirst=True)
    for name in _DROPPED_INDEXES:
        connection.execute(text(f"DROP INDEX IF EXISTS {name}"))


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_SECONDS * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # Writes take the write lock up front (no upgrade deadlocks); reads stay concurrent.
        write = connection.get_execution_options().get("relay_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _utc_second(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class Store:
    """Deliveries and attempts behind one small interface, for SQLite and PostgreSQL."""

    def __init__(self, url: str, *, wait_for_database: bool = False) -> None:
        """Open the store and make its tables.

        With `wait_for_database` (web nodes, workers), a database that is away at start-up does not stop
        the process from starting: /readyz says not ready, webhooks get 503, and the first use after it
        is back makes the tables. Without it (the command line), that raises at once.

        Raises:
            StoreUnavailable: the database does not answer (without `wait_for_database`).
        """
        parsed = make_url(url)
        if parsed.drivername == "postgresql" or parsed.drivername == "postgres":
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.dialect = parsed.get_backend_name()
        self._lock_path: str | None = None
        self.database_file: str | None = None  # a SQLite file's path (not :memory:, not PostgreSQL)
        # (when, why) this process's last hot write was refused, while no later one went through.
        self.write_refused: tuple[float, str] | None = None
        self._thread_lock = threading.Lock()
        self._lock_pid = 0
        self._lock_fd = -1
        self._lock_closer: weakref.finalize[Any, Any] | None = None
        if self.dialect == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
                self._lock_path = database + ".lock"
                self.database_file = database
            connect_args = {"timeout": BUSY_TIMEOUT_SECONDS, "check_same_thread": False}
            self.engine = create_engine(parsed, connect_args=connect_args)
            _sqlite_setup(self.engine)
            self._writer: GroupWriter | None = GroupWriter(self)
        else:
            self.engine = create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=10)
            self._writer = None  # row locks: PostgreSQL takes concurrent inserts as they come
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        try:
            self.ensure_schema()
        except StoreUnavailable as exc:
            if not wait_for_database:
                raise
            log.warning("store unavailable at start; waiting for it", extra={"error": exc.reason[:200]})

    @property
    def on_disk(self) -> bool:
        """A SQLite file, whose WAL a thread checkpoints."""
        return self.database_file is not None

    def ensure_schema(self) -> None:
        """Create the tables unless that is done.

        Raises:
            StoreUnavailable: the database does not answer.
        """
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                with _database_away("does not answer"):
                    self._create_schema()
                self._schema_ready = True

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        self.ensure_schema()
        with _database_away("does not answer"), self.engine.connect() as connection:
            yield connection

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """A write transaction. On SQLite, writers queue on a file lock first: they then wake
        the moment the lock is free, instead of sleeping in SQLite's busy handler."""
        self.ensure_schema()
        with _database_away("did not take the write"), self._write_lock(), self.engine.connect() as connection:
            connection = connection.execution_options(relay_write=True)
            with connection.begin():
                yield connection

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        if self._lock_path is None:
            yield
            return
        with self._thread_lock:
            if self._lock_pid != os.getpid():  # a forked child opens its own
                # A bare descriptor, closed by close() or when the store is collected.
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                self._lock_pid = os.getpid()
                self._lock_closer = weakref.finalize(self, _close_fd, self._lock_fd)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _create_schema(self) -> None:
        """Create the tables once, even when several processes start together.

        Gunicorn boots its workers at the same moment, and nodes may too: without a lock two of
        them both see no table and the second CREATE fails, killing that worker.
        """
        if self.dialect == "postgresql":
            with self.engine.begin() as connection:
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
                _create_tables(connection)
            return
        with self._write_lock(), self.engine.begin() as connection:
            _create_tables(connection)

    # -- moving to another store (relay copy-store) ------------------------
    def table_rows(self, batch: int) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """Every row of every table, `batch` rows at a time, by table name: tables in the order their keys
        need (deliveries before their attempts), all read in one transaction, so the rows agree."""
        with self._read() as connection, connection.begin():
            for table in metadata.sorted_tables:
                if table in _NOT_COPIED:
                    continue
                ordered = select(table).order_by(*table.primary_key.columns)
                for part in connection.execution_options(yield_per=batch).execute(ordered).partitions(batch):
                    yield table.name, [dict(row._mapping) for row in part]

    def add_rows(self, table_name: str, rows: list[dict[str, Any]]) -> None:
        """Insert rows another store gave (`table_rows`), in one transaction."""
        with self._tx() as tx:
            tx.execute(metadata.tables[table_name].insert(), rows)

    def rows_added(self) -> None:
        """After `add_rows`: PostgreSQL's sequence of attempt ids goes on from the ids copied in (SQLite's
        goes on from the largest by itself)."""
        if self.dialect == "postgresql":
            with self._tx() as tx:
                tx.execute(
                    text(
                        "SELECT setval(pg_get_serial_sequence('attempts', 'id'), COALESCE(MAX(id), 1), "
                        "MAX(id) IS NOT NULL) FROM attempts"
                    )
                )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.engine.dispose()
        if self._lock_closer is not None:
            self._lock_closer()  # runs once, whether here or at collection

    def ping(self) -> None:
        """Raise (StoreUnavailable) when the store does not answer or has no tables yet and cannot make them."""
        with self._read() as connection:
            connection.execute(select(1)).scalar_one()

    def read_only(self) -> str | None:
        """Why the server takes no writes from anyone, when it says so: a PostgreSQL standby (a failover left
        relay's host a replica) or `default_transaction_read_only`. Every process sees it, where a refused
        write is known only to the process it met. None on SQLite, and while writes are taken.

        Raises:
            StoreUnavailable: the store does not answer.
        """
        if self.dialect != "postgresql":
            return None
        with self._read() as connection:
            setting = connection.execute(text("SELECT current_setting('transaction_read_only')")).scalar_one()
        if setting != "on":
            return None
        return "it takes no writes: transaction_read_only is on (a standby, or default_transaction_read_only)"

    # -- ingress ----------------------------------------------------------
    def accept(
        self,
        request: InboundRequest,
        *,
        dedup_key: str,
        status: str,
        dedup_window: float,
        wait: float = 0.0,
        latest: str | None = None,
        latest_order: float | None = None,
        now: float | None = None,
    ) -> Accepted:
        """Store a webhook (committed before returning), or name the one it repeats. The worker takes it
        `wait` seconds from now (a mapping's `delay`), its retry budget counted from then; with `latest`, its
        delay's key, it supersedes the deliveries that waited with that key: all of them, or with
        `latest_order` (its `ordered_by` value) those of a lower one, and any without one.

        Raises:
            StoreUnavailable: the database did not answer or refused the write.
        """
        now = time.time() if now is None else now
        row = {
            "id": new_id(now),
            "source": request.source,
            "now": now,
            "status": status,
            "body": request.body,
            "content_type": request.content_type,
            "headers": json.dumps(request.headers, ensure_ascii=False),
            "client_ip": request.client_ip,
            "key": dedup_key,
            "expires": now + dedup_window,
            "due": now + wait,
            "latest": latest,
            "ordered": latest_order,
            # What `relay deliveries` says of a delivery that is queued and not taken: why, and until when.
            "detail": f"waits {wait:g} s (the mapping's delay for its event), due {_utc_second(now + wait)}"
            if wait
            else None,
        }
        delivery_id, duplicate = self._write(functools.partial(accept_webhook, row=row))
        return Accepted(delivery_id, duplicate)

    def _write(self, job: Callable[[Executor], T]) -> T:
        """Run one of the hot writes in a transaction of its own, or in the writer's group (SQLite).

        Raises:
            StoreUnavailable: the database did not answer or refused the write (down, locked, full).
        """
        try:
            if self._writer is None:
                with self._tx() as tx:  # which makes the schema and turns database errors into StoreUnavailable
                    result = job(SQLAlchemyExecutor(tx))
            else:
                self.ensure_schema()
                with _database_away("did not take the write"):  # the group writer's own driver errors
                    result = self._writer.run(job)
        except StoreUnavailable as exc:
            if _database_said_no(exc):  # one that does not answer, /readyz finds by itself
                self.write_refused = (time.monotonic(), refusal(exc))
            raise
        self.write_refused = None
        return result

    def refused_writes(self, within: float = WRITE_REFUSAL_SHOWN_SECONDS) -> str | None:
        """Why this process's last write was refused, when it was the last one and `within` seconds ago: a
        store that answers reads may still take no webhook (its disk full), which /readyz must say."""
        refused = self.write_refused
        if refused is None:
            return None
        age = time.monotonic() - refused[0]
        return f"the last write, {age:.0f} s ago, was refused: {refused[1]}" if age <= within else None

    def file_bytes(self) -> int | None:
        """The SQLite store's size on disk, its WAL and shared-memory files included; None when not a file."""
        if self.database_file is None:
            return None
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(self.database_file + suffix).st_size
            except OSError:
                continue  # not made yet, or checkpointed away
        return total

    def disk_free_bytes(self) -> int | None:
        """Free space for the SQLite file's folder (what an unprivileged process may use); None when the store
        is not a file here (PostgreSQL, :memory:) or the folder cannot be read."""
        if self.database_file is None:
            return None
        try:
            found = os.statvfs(Path(self.database_file).parent)
        except OSError:
            return None
        return found.f_bavail * found.f_frsize

    # -- reading ----------------------------------------------------------
    def get(self, delivery_id: str) -> Delivery | None:
        with self._read() as connection:
            row = connection.execute(select(*_DELIVERY_FIELDS).where(deliveries.c.id == delivery_id)).first()
        return Delivery.from_row(row) if row is not None else None

    def attempts_of(self, delivery_id: str) -> list[dict[str, Any]]:
        with self._read() as connection:
            rows = connection.execute(
                select(attempts).where(attempts.c.delivery_id == delivery_id).order_by(attempts.c.id)
            ).all()
        found = []
        for row in rows:
            item = dict(row._mapping)
            item["request"] = json.loads(item["request"]) if item["request"] else None
            found.append(item)
        return found

    def _filters(
        self,
        *,
        status: str | None = None,
        source: str | None = None,
        since: float | None = None,
        until: float | None = None,
        by_id: bool = False,
    ) -> list[Any]:
        # `by_id`: no index but one of ids serves these conditions (a person's deliveries, found through the
        # keys or through the index of deliveries without keys, see list_deliveries).
        # Which index finds a page of deliveries depends on the status asked for. Delivered ones are most of
        # the table: walking the primary key (or one source's index) newest first finds a page at once,
        # where the status index would have every delivered row read and sorted. The other statuses are
        # few: their index finds them all, where walking one source's deliveries would read every one of
        # them when none has that status.
        conditions: list[Any] = []
        statuses = status.split(",") if status else []
        rare = bool(statuses) and "delivered" not in statuses and not by_id
        if statuses:
            by_status = deliveries.c.status if rare else _unindexed(deliveries.c.status)
            plain = [name for name in statuses if "/" not in name]
            chosen = [by_status.in_(plain)] if plain else []
            for name, _, reason in (name.partition("/") for name in statuses if "/" in name):
                chosen.append(and_(by_status == name, deliveries.c.reason == reason))  # `failed/rejected`
            conditions.append(or_(*chosen) if len(chosen) > 1 else chosen[0])
        if source:
            conditions.append((_unindexed(deliveries.c.source) if rare or by_id else deliveries.c.source) == source)
        # The id bounds are implied by the time bounds (ids start with the arrival's milliseconds) and let
        # the primary key find the range.
        conditions += _id_range(deliveries.c.id, since, until)
        if since is not None:
            conditions.append(deliveries.c.received_at >= since)
        if until is not None:
            conditions.append(deliveries.c.received_at < until)
        return conditions

    def list_deliveries(
        self,
        *,
        limit: int = 50,
        before: str | None = None,
        replayable: bool = False,
        naming: tuple[str, str] | None = None,
        **filters: Any,
    ) -> list[Delivery]:
        """Newest first; `replayable`: only those a replay with these filters would take.

        `naming` (a contact's key and the text its calls hold, relay/contacts.py): only those whose calls
        name the contact by delivery_contacts, and those that index does not cover (no calls, or stored
        before it was) whose calls' text contains it (any case), or that have no calls; relay/contacts.py
        reads each one's values.
        """
        conditions = self._filters(**filters, by_id=naming is not None)
        if replayable:
            conditions = list(_replayable(*conditions))
        if before:
            conditions.append(deliveries.c.id < before)
        with self._read() as connection:
            # The page's ids first, then its rows: sorting whole rows would carry every body along (5,000
            # failed Shopify orders of 30 KB: 119 ms for a page of 50, where the ids alone sort in a few).
            if naming is None:
                page: Any = _page_ids(conditions, limit).scalar_subquery()
            else:
                # Two pages, each found through its own index, merged: one OR of both had SQLite read every
                # delivery (20,200 steps against 200 at 2,000 deliveries, tests/test_contacts.py).
                key, needle = naming
                calls = deliveries.c.calls
                indexed = select(delivery_contacts.c.delivery_id).where(delivery_contacts.c.contact == key)
                unindexed = (
                    deliveries.c.contacts_indexed.is_(None),
                    or_(calls.icontains(needle, autoescape=True), calls.is_(None), calls == "[]"),
                )
                ids = connection.execute(_page_ids([*conditions, deliveries.c.id.in_(indexed)], limit)).scalars()
                more = connection.execute(_page_ids([*conditions, *unindexed], limit)).scalars()
                page = sorted({*ids, *more}, reverse=True)[:limit]
            query = select(*_DELIVERY_FIELDS).where(deliveries.c.id.in_(page)).order_by(deliveries.c.id.desc())
            return [Delivery.from_row(row) for row in connection.execute(query)]

    # -- contact keys the housekeeping gives: older relays', long waits ------
    def unkeyed(self, *, waiting_before: float, after: str = "", limit: int = 200) -> list[Delivery]:
        """Deliveries without contact keys that a search would otherwise read, oldest first from after `after`,
        through the index of deliveries without keys: settled ones (an older relay settled them, before it
        kept keys) and those that wait untranslated since before `waiting_before`, counted from their receipt
        or replay (held while no upstream is set, or waiting for a call, a provider's API, a mapping's delay)."""
        query = (
            select(*_DELIVERY_FIELDS)
            .where(
                deliveries.c.contacts_indexed.is_(None),
                deliveries.c.id > after,
                # Not the status index: it holds every delivered one.
                or_(_unindexed(deliveries.c.status).in_(SETTLED), deliveries.c.cycle_started_at < waiting_before),
            )
            .order_by(deliveries.c.id)
            .limit(limit)
        )
        with self._read() as connection:
            return [Delivery.from_row(row) for row in connection.execute(query)]

    def keep_contact_keys(self, found: Mapping[str, tuple[float, Iterable[str]]]) -> int:
        """Keep the contact keys of deliveries read by `unkeyed`, by id: (its `updated_at` as read, its
        keys). One changed since (replayed, forgotten) is left as it is now. Returns how many were kept. One
        transaction, on SQLite through the group writer's cursor (SQLAlchemy's statements held the write lock
        100 ms for 200 deliveries)."""
        rows = [(delivery_id, updated_at, tuple(keys)) for delivery_id, (updated_at, keys) in found.items()]
        return self._write(functools.partial(keep_keys, found=rows))

    # -- the housekeeping's turns, among worker processes --------------------
    def take_turn(self, task: str, owner: str, *, hold: float, now: float | None = None) -> bool:
        """Take the turn at a housekeeping task for at most `hold` seconds, unless its round is not due yet
        (another process ran it less than its interval ago, or runs it now). True if `owner` took it."""
        now = time.time() if now is None else now
        with self._tx() as tx:
            if tx.execute(_TAKE_NEW_TURN, {"task": task, "due_at": now + hold, "owner": owner}).rowcount:
                return True  # the task's first round in this store
            taken = tx.execute(
                update(housekeeping_turns)
                .where(housekeeping_turns.c.task == task, housekeeping_turns.c.due_at <= now)
                .values(due_at=now + hold, taken_by=owner)
            )
            return bool(taken.rowcount)

    def end_turn(self, task: str, owner: str, *, every: float, done: bool, now: float | None = None) -> None:
        """`owner`'s round is over, `done` if it did not fail: the next is due `every` seconds from now. A turn
        another process took meanwhile (this one held it past its hold) is left to that one."""
        now = time.time() if now is None else now
        ended = {"due_at": now + every, **({"done_at": now} if done else {})}
        with self._tx() as tx:
            tx.execute(
                update(housekeeping_turns)
                .where(housekeeping_turns.c.task == task, housekeeping_turns.c.taken_by == owner)
                .values(**ended)
            )

    def drop_turn(self, task: str) -> None:
        """Forget a housekeeping task the worker no longer runs (the purge, once RELAY_KEEP_DELIVERED is 0),
        so that neither /metrics nor the overview goes on showing its last round as if it were overdue."""
        with self._tx() as tx:
            tx.execute(delete(housekeeping_turns).where(housekeeping_turns.c.task == task))

    def housekeeping_done(self) -> dict[str, float]:
        """When each housekeeping task's last round that did not fail ended, by task (those that have had one)."""
        query = select(housekeeping_turns.c.task, housekeeping_turns.c.done_at).where(
            housekeeping_turns.c.done_at.is_not(None)
        )
        with self._read() as connection:
            return {task: done_at for task, done_at in connection.execute(query)}

    def delete_deliveries(self, delivery_ids: Sequence[str]) -> tuple[set[str], set[str]]:
        """Delete these deliveries with their attempts, except those a worker holds now (`delivering`):
        (the ids deleted, the ids left for that)."""
        with self._tx() as tx:
            # Locked (PostgreSQL) so that no worker claims one between the two deletes; SQLite's write
            # transaction holds every writer off already.
            found = tx.execute(
                select(deliveries.c.id, deliveries.c.status).where(deliveries.c.id.in_(delivery_ids)).with_for_update()
            ).all()
            deleted = {delivery_id for delivery_id, status in found if status != "delivering"}
            if deleted:
                tx.execute(delete(attempts).where(attempts.c.delivery_id.in_(deleted)))
                tx.execute(delete(delivery_contacts).where(delivery_contacts.c.delivery_id.in_(deleted)))
                tx.execute(delete(deliveries).where(deliveries.c.id.in_(deleted)))
        return deleted, {delivery_id for delivery_id, _ in found} - deleted

    def counts(self) -> dict[str, int]:
        with self._read() as connection:
            rows = connection.execute(select(deliveries.c.status, func.count()).group_by(deliveries.c.status)).all()
        return {status: count for status, count in rows}

    def kept_count(self) -> int:
        """Failed deliveries a mapping rule with `keep` holds back on purpose (their detail says so): the
        failed ones nobody has to look into are the others. Read through the status index, as `problems`."""
        query = select(func.count()).where(
            deliveries.c.status == "failed",
            deliveries.c.reason == "mapping",
            deliveries.c.detail.startswith(KEPT_BY_RULE, autoescape=True),
        )
        with self._read() as connection:
            return int(connection.execute(query).scalar_one())

    def counts_by_source(
        self, *, source: str | None = None, since: float | None = None, until: float | None = None
    ) -> tuple[list[tuple[str, str, str | None, int]], dict[str, float]]:
        """(source, status, reason, count) of the deliveries that arrived in [since, until) (to the
        millisecond), and each source's newest arrival among them (see `_source_counts`)."""
        with self._read() as connection:
            found = connection.execute(_source_counts(source, since, until, sqlite=self.dialect == "sqlite")).all()
        rows = [(name, status, reason, int(count)) for name, status, reason, count, _ in found if status is not None]
        totals = {name: int(count) for name, status, _, count, _ in found if status is None}
        for name, _status, _reason, count in rows:
            totals[name] -= count
        rows += [(name, "delivered", None, count) for name, count in totals.items() if count > 0]
        # Ids begin with the arrival's milliseconds.
        newest = {name: int(last[:12], 16) / 1000 for name, status, _, _, last in found if status is None}
        return rows, newest

    def problems(
        self,
        *,
        source: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = PROBLEMS_SHOWN,
    ) -> list[Problem]:
        """What went wrong, most common first: failed and retrying deliveries grouped by source, status,
        reason and detail (the last error), with a count and the newest of each group's ids.

        The grouping is done by the database, through the status index: these deliveries are few, except
        in an outage, when they are the retrying ones and their details repeat (`HTTP 503...`).
        """
        conditions = self._filters(status=",".join(PROBLEM_STATUSES), source=source, since=since, until=until)
        columns = (deliveries.c.source, deliveries.c.status, deliveries.c.reason, deliveries.c.detail)
        count, newest = func.count(), func.max(deliveries.c.id)
        query = (
            select(*columns, count, newest)
            .where(*conditions)
            .group_by(*columns)
            .order_by(count.desc(), newest.desc())
            .limit(limit)
        )
        with self._read() as connection:
            return [Problem(*row) for row in connection.execute(query)]

    def last_received(self, sources: Iterable[str]) -> dict[str, float]:
        """When each of `sources` last had a webhook stored; a source with none in the store is left out.

        Read at every /metrics scrape, so it must not grow with the table: ids begin with the arrival's
        milliseconds, so a source's newest delivery is the first entry of its (source, id) index read
        backwards, one seek a source.
        """
        newest = (
            select(deliveries.c.received_at)
            .where(deliveries.c.source == bindparam("source"))
            .order_by(deliveries.c.id.desc())
            .limit(1)
        )
        found: dict[str, float] = {}
        with self._read() as connection:
            for source in sources:
                at = connection.execute(newest, {"source": source}).scalar()
                if at is not None:
                    found[source] = float(at)
        return found

    def oldest_due(self, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        with self._read() as connection:
            return connection.execute(
                select(func.min(deliveries.c.next_attempt_at)).where(
                    deliveries.c.status.in_(DUE), deliveries.c.next_attempt_at <= now
                )
            ).scalar()

    # -- the worker's side ------------------------------------------------
    def latest_holder(self, source: str, key: str) -> str | None:
        """The delivery that holds a delayed event's `latest_by` key: the newest with it by `ordered_by`, or
        the last received."""
        with self._read() as connection:
            return connection.execute(
                select(latest_keys.c.delivery_id).where(latest_keys.c.source == source, latest_keys.c.key == key)
            ).scalar()

    def once_taken_by(self, source: str, delivery_id: str, key: str) -> str | None:
        """Which other delivery took a rule's `once` key of this source, in words (`delivery 0190...`); None
        when none did (or this one did). Looked up, not taken: see take_once."""
        with self._read() as connection:
            holder = connection.execute(
                select(once_keys.c.delivery_id).where(once_keys.c.source == source, once_keys.c.key == key)
            ).scalar()
        return None if holder in (None, delivery_id) else f"delivery {holder}"

    def take_once(self, source: str, key: str, delivery_id: str, now: float | None = None) -> str:
        """Take a rule's `once` key for a delivery; the delivery that holds it (this one, unless another
        took it first). Two workers taking one key at once: one of them gets it."""
        row = {"source": source, "key": key, "id": delivery_id, "now": time.time() if now is None else now}
        return self._write(functools.partial(take_once, row=row))

    def release_once(self, delivery_id: str) -> int:
        """Give back the once keys of a delivery that failed before the upstream took any of its calls, so that
        a later hook of the same order uses the rule (and a replay of this one, should it come first); how
        many. A delivery that failed after some of its calls went keeps its keys: those calls counted."""
        with self._tx() as tx:
            failed_before_any_call = (
                select(deliveries.c.id)
                .where(deliveries.c.id == delivery_id, deliveries.c.status == "failed", deliveries.c.calls_done == 0)
                .exists()
            )
            return int(
                tx.execute(
                    delete(once_keys).where(once_keys.c.delivery_id == delivery_id, failed_before_any_call)
                ).rowcount
            )

    def claim(
        self, *, owner: str, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[tuple[Delivery, str]]:
        """Claim up to `limit` due deliveries (or ones whose lease ran out), under one new token."""
        now = time.time() if now is None else now
        token = secrets.token_hex(16)
        claim = {
            "owner": owner,
            "token": token,
            "now": now,
            "expires": now + lease_seconds,
            "limit": limit,
        }
        rows = self._write(functools.partial(claim_due, claim=claim, lock_rows=self.dialect == "postgresql"))
        return [(Delivery.from_values(row), token) for row in rows]

    def record_attempt(self, delivery_id: str, token: str, attempt: Attempt) -> bool:
        """Store one try and the progress it made, while the claim holds (False once it is lost)."""
        progress = {
            "id": delivery_id,
            "token": token,
            "now": time.time(),
            "calls_done": attempt.calls_done,
            "profile_id": _profile_id(attempt.profile_id),
        }
        return self._write(functools.partial(record_try, progress=progress, attempt=_attempt_row(delivery_id, attempt)))

    def finish(
        self,
        delivery_id: str,
        token: str,
        *,
        status: str,
        reason: str | None = None,
        detail: str | None = None,
        next_attempt_at: float | None = None,
        calls: Sequence[dict[str, Any]] | None = None,
        contacts: Iterable[str] | None = None,
        attempt: Attempt | None = None,
    ) -> bool:
        """Settle a claimed delivery, with its last try, in one transaction.

        `contacts`: the keys (contact_key) of every contact the delivery names (its calls', or its payload's
        when it has none); without them a search for a person reads the delivery. A no-op returning False when
        the claim was lost: the worker that holds it now decides.
        """
        indexed = contacts is not None
        params = {
            "id": delivery_id,
            "token": token,
            "status": status,
            "reason": reason,
            "detail": (detail or None) and detail[:4000],
            "now": time.time(),
            "next": next_attempt_at,
            "calls": json.dumps(list(calls), ensure_ascii=False) if calls is not None else None,
            "tried": 1 if attempt is not None else 0,
            "calls_done": attempt.calls_done if attempt is not None else None,
            "profile_id": _profile_id(attempt.profile_id) if attempt is not None else None,
            "indexed": 1 if indexed else None,
        }
        row = _attempt_row(delivery_id, attempt) if attempt is not None else None
        return self._write(functools.partial(settle, outcome=params, attempt=row, contacts=tuple(contacts or ())))

    def scrub(self, delivery_id: str, token: str) -> bool:
        """Blank a claimed delivery's request (body, headers, client address) and drop its contact keys: an
        erasure request, done, keeps no more of the person than its id. False when the claim was lost."""
        with self._tx() as tx:
            result = tx.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id, deliveries.c.claim_token == token)
                .values(body=b"", headers="{}", client_ip=None)
            )
            if result.rowcount:
                # The keys its payload gave it while it waited (the housekeeping's): it names no one now.
                tx.execute(delete(delivery_contacts).where(delivery_contacts.c.delivery_id == delivery_id))
        return bool(result.rowcount)

    def release(self, delivery_id: str, token: str) -> bool:
        """Give a claimed delivery back untouched, due now (a worker that is stopping)."""
        now = time.time()
        with self._tx() as tx:
            result = tx.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id, deliveries.c.claim_token == token)
                .values(
                    status=case((deliveries.c.attempts == 0, "queued"), else_="retrying"),
                    lease_owner=None,
                    claim_token=None,
                    lease_expires_at=None,
                    next_attempt_at=now,
                    updated_at=now,
                )
            )
        return result.rowcount == 1

    # -- operators --------------------------------------------------------
    def replay(self, delivery_id: str, *, to_status: str = "queued", now: float | None = None) -> bool:
        """Start a fresh retry cycle for a failed or held delivery; earlier attempts stay."""
        return self._replay(deliveries.c.id == delivery_id, to_status=to_status, now=now) == 1

    def replay_ids(self, delivery_ids: Sequence[str], *, to_status: str = "queued", batch: int = REPLAY_BATCH) -> int:
        """Replay those of these deliveries that are failed or held; returns how many."""
        replayed = 0
        for start in range(0, len(delivery_ids), batch):
            chosen = deliveries.c.id.in_(delivery_ids[start : start + batch])
            replayed += self._replay(chosen, to_status=to_status, now=None, batch=batch)
        return replayed

    def replay_matching(self, *, to_status: str = "queued", batch: int = REPLAY_BATCH, **filters: Any) -> int:
        """Replay every failed or held delivery that matches the filters; returns how many."""
        return self._replay(*self._filters(**filters), to_status=to_status, now=None, batch=batch)

    def replayable(self, **filters: Any) -> dict[str, int]:
        """What `replay_matching` with these filters would replay now, counted by `status/reason`
        (`failed/mapping`, `held`); nothing is changed."""
        found: dict[str, int] = {}
        query = (
            select(deliveries.c.status, deliveries.c.reason, func.count())
            .where(*_replayable(*self._filters(**filters)))
            .group_by(deliveries.c.status, deliveries.c.reason)
        )
        with self._read() as connection:
            for status, reason, count in connection.execute(query):
                key = status_and_reason(status, reason)
                found[key] = found.get(key, 0) + count
        return dict(sorted(found.items()))

    def _replay(
        self, *conditions: Any, to_status: str, now: float | None, batch: int = REPLAY_BATCH, keep_due: bool = False
    ) -> int:
        """Replay what matches now, `batch` deliveries a transaction.

        The ids are read first, without the write lock, then replayed batch by batch: one UPDATE of every
        match held SQLite's write lock while it ran (10,000 failed deliveries: 0.65 s in which no webhook
        was taken; now 18 ms at most a batch). Each delivery is replayed once, even when it fails again
        before the last batch.
        """
        # Replay re-translates with today's mapping but keeps `calls_done`: calls the upstream already
        # took (an order's counters) are not sent again.
        now = time.time() if now is None else now
        # `keep_due`: a delivery not due yet (a mapping's delay) stays so, and keeps the detail that says why.
        waiting = deliveries.c.next_attempt_at > now
        due: Any = case((waiting, deliveries.c.next_attempt_at), else_=now) if keep_due else now
        detail: Any = case((waiting, deliveries.c.detail), else_=None) if keep_due else None
        with self._read() as connection:
            ids = list(connection.execute(select(deliveries.c.id).where(*_replayable(*conditions))).scalars())
        replayed = 0
        for start in range(0, len(ids), batch):
            chosen = (
                deliveries.c.id.in_(ids[start : start + batch]),
                # Still replayable: checked on each row the ids find (the status index would have SQLite go
                # through every failed and held delivery for each batch instead).
                _unindexed(deliveries.c.status).in_(REPLAYABLE),
            )
            with self._tx() as tx:
                # The calls go, and what delivery_contacts held of them: the worker translates again.
                tx.execute(
                    delete(delivery_contacts).where(
                        delivery_contacts.c.delivery_id.in_(select(deliveries.c.id).where(*chosen))
                    )
                )
                result = tx.execute(
                    update(deliveries)
                    .where(*chosen)
                    .values(
                        status=to_status,
                        reason=None,
                        detail=detail,
                        calls=None,
                        contacts_indexed=None,
                        cycle_started_at=due,
                        next_attempt_at=due,
                        updated_at=now,
                    )
                )
            replayed += int(result.rowcount)
        return replayed

    def purge(
        self,
        *,
        received_before: float,
        now: float | None = None,
        batch: int = 500,
        key_window: int = 5000,
        stop: threading.Event | None = None,
    ) -> dict[str, int]:
        """Delete delivered deliveries received before `received_before` (with their attempts), and
        de-duplication keys whose window has passed; returns how many of each.

        Only `delivered` ones go: failed, held and waiting deliveries stay until they are delivered or
        replayed. Each batch of deliveries, and each window of `key_window` keys, is a transaction of its
        own, so webhooks keep arriving in between; `stop` ends the purge after the batch in hand (the next
        purge takes the rest).
        """
        now = time.time() if now is None else now
        purged = {"deliveries": 0, "dedup_keys": 0, "once_keys": 0, "latest_keys": 0}
        after = ""  # ids of the batches before: failed and held ones among them stay, and are not read again
        while True:
            with self._tx() as tx:
                ids = list(
                    tx.execute(
                        select(deliveries.c.id)
                        .where(
                            deliveries.c.id > after,
                            deliveries.c.id < _millis(received_before),  # the primary key finds the range
                            deliveries.c.received_at < received_before,
                            # SQLite would take the status index, then read and sort every delivered row
                            # of the table at each batch.
                            _unindexed(deliveries.c.status) == "delivered",
                        )
                        .order_by(deliveries.c.id)
                        .limit(batch)
                    ).scalars()
                )
                if ids:
                    after = ids[-1]
                    tx.execute(delete(attempts).where(attempts.c.delivery_id.in_(ids)))
                    tx.execute(delete(delivery_contacts).where(delivery_contacts.c.delivery_id.in_(ids)))
                    tx.execute(delete(deliveries).where(deliveries.c.id.in_(ids)))
            purged["deliveries"] += len(ids)
            if len(ids) < batch or (stop is not None and stop.is_set()):
                break
        purged["dedup_keys"] = self._purge_keys(now, key_window, stop)
        # Kept as long as the deliveries at least: a delivery replayed must find the key it took, or the key
        # of the later step that passes it over.
        taken_before = min(received_before, now - ONCE_KEEP_SECONDS)
        with self._tx() as tx:  # few rows (one an order, or a checkout), found by their index
            purged["once_keys"] = int(tx.execute(delete(once_keys).where(once_keys.c.taken_at < taken_before)).rowcount)
            purged["latest_keys"] = int(
                tx.execute(delete(latest_keys).where(latest_keys.c.received_at < taken_before)).rowcount
            )
        return purged

    def _purge_keys(self, now: float, window: int, stop: threading.Event | None) -> int:
        """Delete expired de-duplication keys, walking the key order `window` keys at a time.

        Keys are hashes, so expired ones lie all over the table, and there is no index on expiry (it
        would cost every webhook one more index write). Searching for expired keys from the start in
        each transaction would read the live keys before them again every time: at two million keys,
        a fifth of a second with SQLite's write lock held, for every batch. A walk reads each key once,
        and each write transaction looks at one window of keys only.
        """
        deleted = 0
        after: str | None = None
        while True:
            with self._read() as connection:  # the window's last key, found without the write lock
                query = select(dedup_keys.c.key).order_by(dedup_keys.c.key).offset(window - 1).limit(1)
                if after is not None:
                    query = query.where(dedup_keys.c.key > after)
                upto = connection.execute(query).scalar()
            condition = dedup_keys.c.expires_at <= now  # checked again under the lock: a key may be renewed
            if after is not None:
                condition = condition & (dedup_keys.c.key > after)
            if upto is not None:
                condition = condition & (dedup_keys.c.key <= upto)
            with self._tx() as tx:
                deleted += int(tx.execute(delete(dedup_keys).where(condition)).rowcount)
            if upto is None or (stop is not None and stop.is_set()):
                return deleted
            after = upto

    def release_held(self) -> int:
        """Queue every held delivery (an upstream is configured now): a replay of them, batch by batch,
        since days of webhooks may have waited. One whose mapping's delay has not passed waits it out."""
        return self._replay(deliveries.c.status == "held", to_status="queued", now=None, keep_due=True)
