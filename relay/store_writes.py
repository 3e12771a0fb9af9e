"""The store's hot writes: accept a webhook, claim due deliveries, record a try, settle.

Each is written once, as SQL with `:name` parameters, against a small
executor. On PostgreSQL the executor is a SQLAlchemy transaction. On SQLite it
is the driver's own cursor inside the group writer's transaction: SQLAlchemy's
per-statement work cost about twenty times the statement itself there
(80 µs against 4 µs), and every webhook and every delivery runs these.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from relay.store import Store

__all__ = [
    "BUSY_TIMEOUT_SECONDS",
    "CHECKPOINT_SECONDS",
    "DELIVERY_COLUMNS",
    "Executor",
    "GroupWriter",
    "SQLAlchemyExecutor",
    "accept_webhook",
    "claim_due",
    "keep_keys",
    "record_try",
    "settle",
    "take_once",
]

T = TypeVar("T")

# The order of a delivery's columns in what claim_due returns.
DELIVERY_COLUMNS = (
    "id",
    "source",
    "received_at",
    "status",
    "reason",
    "detail",
    "body",
    "content_type",
    "headers",
    "client_ip",
    "dedup_key",
    "attempts",
    "calls_done",
    "cycle_started_at",
    "next_attempt_at",
    "lease_owner",
    "claim_token",
    "lease_expires_at",
    "calls",
    "profile_id",
    "updated_at",
)


class Executor(Protocol):
    def rows(self, sql: str, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]: ...

    def rowcount(self, sql: str, params: Mapping[str, Any]) -> int: ...

    def many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None: ...


def storable(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """`params` with NUL in any text replaced by U+FFFD. PostgreSQL's text cannot hold NUL, and outside text
    reaches these statements: a payload's de-duplication id (`"tranid": "1\\u0000"` failed the write, a 500),
    an upstream's answer and error text (the result of a call it took failed to be kept). SQLite takes NUL;
    both stores keep the same text."""
    if not any(isinstance(value, str) and "\x00" in value for value in params.values()):
        return params
    return {key: value.replace("\x00", "\ufffd") if isinstance(value, str) else value for key, value in params.items()}


class DriverExecutor:
    """SQLite's own cursor (which takes `:name` parameters as they are)."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor

    def rows(self, sql: str, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        return self.cursor.execute(sql, storable(params)).fetchall()  # type: ignore[no-any-return]

    def rowcount(self, sql: str, params: Mapping[str, Any]) -> int:
        return int(self.cursor.execute(sql, storable(params)).rowcount)

    def many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self.cursor.executemany(sql, [storable(row) for row in rows])


@functools.lru_cache(maxsize=64)
def _text(sql: str) -> Any:
    return text(sql)


class SQLAlchemyExecutor:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def rows(self, sql: str, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        return self.connection.execute(_text(sql), dict(storable(params))).all()

    def rowcount(self, sql: str, params: Mapping[str, Any]) -> int:
        return int(self.connection.execute(_text(sql), dict(storable(params))).rowcount)

    def many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """One statement for all `rows` (psycopg sends them in one pipeline: a round trip a row cost 0.4-0.5 ms
        on PostgreSQL)."""
        self.connection.execute(_text(sql), [dict(storable(row)) for row in rows])


# -- ingress ----------------------------------------------------------------
# One upsert claims the de-duplication key: a new key, or one whose window has passed. A live key
# returns no row, and the webhook is a duplicate of that key's delivery.
_CLAIM_KEY = (
    'INSERT INTO dedup_keys ("key", delivery_id, expires_at) VALUES (:key, :id, :expires) '
    'ON CONFLICT ("key") DO UPDATE SET delivery_id = excluded.delivery_id, expires_at = excluded.expires_at '
    "WHERE dedup_keys.expires_at <= :now RETURNING delivery_id"
)
_KEY_OWNER = 'SELECT delivery_id FROM dedup_keys WHERE "key" = :key'
_INSERT_DELIVERY = (
    "INSERT INTO deliveries (id, source, received_at, status, body, content_type, headers, client_ip, dedup_key, "
    "attempts, calls_done, cycle_started_at, next_attempt_at, updated_at, detail) "
    "VALUES (:id, :source, :now, :status, :body, :content_type, :headers, :client_ip, :key, "
    "0, 0, :due, :due, :now, :detail)"
)


# A delayed event's key (relay.mapping.delays.latest_key) names the newest delivery with it: the one with the
# highest `ordered_by` value, where both have one, else the last received (equal values: the last received).
_TAKE_LATEST = (
    'INSERT INTO latest_keys (source, "key", delivery_id, received_at, ordered_at) '
    "VALUES (:source, :latest, :id, :now, :ordered) "
    'ON CONFLICT (source, "key") DO UPDATE SET delivery_id = excluded.delivery_id, '
    "received_at = excluded.received_at, ordered_at = excluded.ordered_at "
    "WHERE excluded.ordered_at IS NULL OR latest_keys.ordered_at IS NULL "
    "OR excluded.ordered_at >= latest_keys.ordered_at"
)


def accept_webhook(ex: Executor, row: Mapping[str, Any]) -> tuple[str, bool]:
    """Store one webhook: (delivery id, False), or (the id of the delivery it repeats, True).

    `row` holds id, source, now, status, body, content_type, headers, client_ip, key, expires, due, detail and
    latest (a delayed event's key, or None) and ordered (its `ordered_by` value, or None).
    """
    if not ex.rows(_CLAIM_KEY, row):
        return str(ex.rows(_KEY_OWNER, row)[0][0]), True
    ex.rowcount(_INSERT_DELIVERY, row)
    if row.get("latest"):
        ex.rowcount(_TAKE_LATEST, row)
    return str(row["id"]), False


# -- the worker's side ------------------------------------------------------
# One ordered index scan per status. Equality on the index's first column keeps each scan in
# time order; one OR or IN made SQLite sort every due row on every claim, a cost that grew with
# the backlog. Leases that ran out are few: at most what the workers hold.
_DUE = (
    "SELECT id, next_attempt_at FROM deliveries WHERE status = 'queued' AND next_attempt_at <= :now "
    "ORDER BY next_attempt_at LIMIT :limit",
    "SELECT id, next_attempt_at FROM deliveries WHERE status = 'retrying' AND next_attempt_at <= :now "
    "ORDER BY next_attempt_at LIMIT :limit",
    "SELECT id, next_attempt_at FROM deliveries WHERE status = 'delivering' AND lease_expires_at <= :now "
    "ORDER BY lease_expires_at LIMIT :limit",
)
_CLAIM = (
    "UPDATE deliveries SET status = 'delivering', lease_owner = :owner, claim_token = :token, "
    "lease_expires_at = :expires, updated_at = :now WHERE id IN ({ids}) RETURNING {columns}"
)
_LOCK_ROWS = " FOR UPDATE SKIP LOCKED"


def claim_due(ex: Executor, claim: Mapping[str, Any], *, lock_rows: bool) -> list[Sequence[Any]]:
    """Claim up to `limit` due rows (oldest first) under one token; rows in DELIVERY_COLUMNS order.

    `claim` holds owner, token, now, expires and limit. `lock_rows` skips rows another
    transaction holds (PostgreSQL); SQLite's single writer needs no such thing.
    """
    found: list[Sequence[Any]] = []
    for sql in _DUE:
        found.extend(ex.rows(sql + _LOCK_ROWS if lock_rows else sql, claim))
    found.sort(key=lambda row: row[1])
    ids = [row[0] for row in found[: claim["limit"]]]
    if not ids:
        return []
    params = {**claim, **{f"id{index}": value for index, value in enumerate(ids)}}
    placeholders = ", ".join(f":id{index}" for index in range(len(ids)))
    sql = _CLAIM.format(ids=placeholders, columns=", ".join(DELIVERY_COLUMNS))  # noqa: S608 - names, not values
    rows = list(ex.rows(sql, params))
    rows.sort(key=lambda row: row[DELIVERY_COLUMNS.index("next_attempt_at")])
    return rows


_INSERT_ATTEMPT = (
    "INSERT INTO attempts (delivery_id, started_at, duration_ms, call_index, method, request, http_status, "
    "response, outcome, error) VALUES (:delivery_id, :started_at, :duration_ms, :call_index, :method, :request, "
    ":http_status, :response, :outcome, :error)"
)
_RECORD = (
    "UPDATE deliveries SET attempts = attempts + 1, updated_at = :now, "
    "calls_done = COALESCE(:calls_done, calls_done), profile_id = COALESCE(:profile_id, profile_id) "
    "WHERE id = :id AND claim_token = :token"
)
_SETTLE = (
    "UPDATE deliveries SET status = :status, reason = :reason, detail = :detail, lease_owner = NULL, "
    "claim_token = NULL, lease_expires_at = NULL, updated_at = :now, "
    "next_attempt_at = COALESCE(:next, next_attempt_at), calls = COALESCE(:calls, calls), "
    "attempts = attempts + :tried, calls_done = COALESCE(:calls_done, calls_done), "
    "profile_id = COALESCE(:profile_id, profile_id), contacts_indexed = COALESCE(:indexed, contacts_indexed) "
    "WHERE id = :id AND claim_token = :token"
)
_INDEX_CONTACT = "INSERT INTO delivery_contacts (contact, delivery_id) VALUES (:contact, :id) ON CONFLICT DO NOTHING"


def _index_contacts(ex: Executor, keyed: Sequence[tuple[str, Iterable[str]]]) -> None:
    """Keep the keys of these deliveries: (id, keys) each, each key once, in order, all in one statement."""
    rows = [{"contact": key, "id": delivery_id} for delivery_id, keys in keyed for key in sorted(set(keys))]
    if rows:
        ex.many(_INDEX_CONTACT, rows)


def record_try(ex: Executor, progress: Mapping[str, Any], attempt: Mapping[str, Any]) -> bool:
    """Count one try and keep its progress while the claim holds; False once the claim is lost.

    `progress` holds id, token, now, calls_done and profile_id; `attempt` is an attempts row.
    """
    if ex.rowcount(_RECORD, progress) != 1:
        return False
    ex.rowcount(_INSERT_ATTEMPT, attempt)
    return True


_MARK_KEYED = (
    "UPDATE deliveries SET contacts_indexed = 1 "
    "WHERE id = :id AND updated_at = :updated_at AND contacts_indexed IS NULL"
)


def keep_keys(ex: Executor, found: Sequence[tuple[str, float, Iterable[str]]]) -> int:
    """Mark deliveries keyed and keep their contact keys: (id, `updated_at` as read, keys) each. One whose
    `updated_at` moved since, or keyed meanwhile, is left. How many were marked."""
    marked = [
        (delivery_id, keys)
        for delivery_id, updated_at, keys in found
        if ex.rowcount(_MARK_KEYED, {"id": delivery_id, "updated_at": updated_at}) == 1
    ]
    _index_contacts(ex, marked)
    return len(marked)


def settle(
    ex: Executor,
    outcome: Mapping[str, Any],
    attempt: Mapping[str, Any] | None,
    contacts: Iterable[str] = (),
) -> bool:
    """Settle a claimed delivery with its last try and the keys of the contacts it names; False (and nothing
    written) once the claim is lost."""
    if ex.rowcount(_SETTLE, outcome) != 1:
        return False
    if attempt is not None:
        ex.rowcount(_INSERT_ATTEMPT, attempt)
    _index_contacts(ex, [(outcome["id"], contacts)])
    return True


_TAKE_ONCE = (
    'INSERT INTO once_keys (source, "key", delivery_id, taken_at) VALUES (:source, :key, :id, :now) '
    'ON CONFLICT (source, "key") DO NOTHING RETURNING delivery_id'
)
_ONCE_HOLDER = 'SELECT delivery_id FROM once_keys WHERE source = :source AND "key" = :key'


def take_once(ex: Executor, row: Mapping[str, Any]) -> str:
    """Take a rule's `once` key for a delivery, or find who has it: the holder's delivery id.

    `row` holds source, key, id and now. On PostgreSQL a take racing another waits for it to commit, then
    finds its row."""
    if ex.rows(_TAKE_ONCE, row):
        return str(row["id"])
    return str(ex.rows(_ONCE_HOLDER, row)[0][0])


# -- SQLite's single writer -------------------------------------------------
# How long a write may wait for SQLite's write lock, then 503; the store sets it on every connection.
BUSY_TIMEOUT_SECONDS = 10


class _Refused(Exception):
    """SQLite would not begin the transaction (locked past the busy timeout, disk failing), whatever
    its writes."""

    def __init__(self, error: sqlite3.OperationalError) -> None:
        super().__init__(str(error))
        self.error = error


class _Write:
    __slots__ = ("job", "done", "result", "queued_at")

    def __init__(self, job: Callable[[Executor], Any]) -> None:
        self.job = job
        self.done = False
        self.result: Any = None
        self.queued_at = time.monotonic()


CHECKPOINT_SECONDS = 0.25
# Held while a checkpoint thread is inside SQLite, and by a fork: a child forked in the middle of a
# checkpoint would inherit SQLite's mutexes held by a thread it does not have, and hang at its first
# statement (a multiprocessing child in the tests did, opening its own store). A fork waits for the
# checkpoint under way instead; gunicorn's master, which forks the web workers, runs none.
_CHECKPOINTING = threading.Lock()
os.register_at_fork(
    before=_CHECKPOINTING.acquire,
    after_in_parent=_CHECKPOINTING.release,
    after_in_child=_CHECKPOINTING.release,
)


class Checkpointer:
    """Copies the WAL into the database file from a thread of its own, so that commits need not.

    SQLite checkpoints from inside a COMMIT once the WAL holds `wal_autocheckpoint` pages, and the
    group writer holds the write lock meanwhile: every write queued behind it waits. On a slow disk
    that was one commit in 170 taking 13-16 ms against 0.2 ms, the writes waiting behind it, the
    ingress p99 at 300 requests/s 29-39 ms. This thread runs a PASSIVE checkpoint every
    CHECKPOINT_SECONDS, which never waits for writers nor makes them wait; the commits' own
    checkpoint (at 10,000 pages, see relay.store) then finds little left to copy and comes ten
    times less often: it is the one that lets the WAL start over, once no writer is adding to it.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="relay-checkpoint", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=5)

    def _run(self) -> None:
        try:
            with _CHECKPOINTING:
                connection = self.store.engine.raw_connection()
        except Exception:  # noqa: BLE001 - the commits checkpoint by themselves
            return
        try:
            cursor = connection.cursor()
            while not self.stopped.wait(CHECKPOINT_SECONDS):
                with _CHECKPOINTING:
                    # Busy (another process's checkpoint under way) is an answer, not an error.
                    cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception:  # noqa: BLE001 - a store closed or removed under it: the commits checkpoint by themselves
            return
        finally:
            with _CHECKPOINTING, contextlib.suppress(Exception):
                connection.close()


class GroupWriter:
    """Runs the writes of every thread of a process, many to a transaction, with no thread of its own.

    A thread queues its write, then takes the commit lock. If another thread
    committed the write meanwhile, it is done; if not, it commits every
    queued write, its own and those of the threads waiting behind it, in one
    transaction. Alone, a thread writes at once with no hand-off; under load,
    one commit serves a whole group (SQLite has one write lock, and a commit
    writes every page it touched). When a group fails, its writes are run
    again one by one, so one bad write fails alone; but when the database
    will not begin the transaction (locked by another program past the busy
    timeout, failing), the group and every write queued meanwhile fail at
    once: each would wait out the timeout again, one after the other. Time
    spent waiting for the file lock (another process waiting out its own
    timeout) counts against the busy timeout, so that no write waits for
    SQLite's lock much longer than the timeout, whatever the processes.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.queued: list[_Write] = []
        self.queue_lock = threading.Lock()
        self.commit_lock = threading.Lock()
        self.connection: Any = None
        self.cursor: Any = None
        self.pid = 0
        self.checkpointer: Checkpointer | None = None

    def run(self, job: Callable[[Executor], T]) -> T:
        write = _Write(job)
        with self.queue_lock:
            self.queued.append(write)
        with self.commit_lock:
            if not write.done:
                # The group is taken once the file lock is ours: writes that queued while another
                # process held it go into this commit instead of waiting for one more.
                with self.store._write_lock():
                    with self.queue_lock:
                        group, self.queued = self.queued, []
                    self._commit_group(group)
        if isinstance(write.result, BaseException):
            raise write.result
        return write.result  # type: ignore[no-any-return]

    def close(self) -> None:
        with self.commit_lock:
            if self.connection is not None and self.pid == os.getpid():
                self.cursor.close()
                self.connection.close()
                if self.checkpointer is not None:
                    self.checkpointer.stop()
            self.connection = self.cursor = self.checkpointer = None

    def _commit_group(self, group: list[_Write]) -> None:
        waited = time.monotonic() - group[0].queued_at  # the oldest: writes queue in order
        try:
            results = self._commit([write.job for write in group], waited)
        except _Refused as refused:  # the database's own trouble, not one write's
            with self.queue_lock:
                group, self.queued = group + self.queued, []
            error = refused.error
            results = [type(error)(*error.args) for _ in group]  # one each: every caller raises its own
        except BaseException:  # noqa: BLE001 - find the write that failed; the others go through
            results = []
            for write in group:
                try:
                    results.extend(self._commit([write.job]))
                except _Refused as refused:  # the database went away meanwhile: its own error, a 503
                    results.append(refused.error)
                except BaseException as exc:  # noqa: BLE001 - handed to its caller
                    results.append(exc)
        for write, result in zip(group, results, strict=True):
            write.result = result
            write.done = True

    def _commit(self, jobs: list[Callable[[Executor], Any]], waited: float = 0.0) -> list[Any]:
        # One connection per process, used only under the commit lock; a pool checkout and
        # SQLAlchemy's begin and commit cost more than the writes of a small group.
        if self.connection is None or self.pid != os.getpid():
            self.connection = self.store.engine.raw_connection()  # a forked child opens its own
            self.cursor = self.connection.cursor()
            self.pid = os.getpid()
            # Threads do not survive a fork: each process that writes runs its own.
            self.checkpointer = Checkpointer(self.store) if self.store.on_disk else None
        cursor = self.cursor
        executor = DriverExecutor(cursor)
        shortened = waited > 1.0  # not under load (milliseconds), only while something holds SQLite's lock
        try:
            if shortened:
                left = max(0.0, BUSY_TIMEOUT_SECONDS - waited)
                cursor.execute(f"PRAGMA busy_timeout={int(left * 1000)}")
            cursor.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise _Refused(exc) from exc
        finally:
            if shortened:
                cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_SECONDS * 1000}")
        try:
            results = [job(executor) for job in jobs]
            # A COMMIT that fails (busy past the timeout, a deferred constraint) leaves the transaction open:
            # without the rollback below, every later BEGIN of this process would fail.
            cursor.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):  # the error that matters is the one being raised
                cursor.execute("ROLLBACK")
            raise
        return results
