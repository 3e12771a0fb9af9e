"""The store contract on SQLite and PostgreSQL, and the admin API over it."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text

from relay.delivery_views import parse_time
from relay.inbound import InboundRequest
from relay.store import STATUSES, Store, new_id

from .conftest import MAPPINGS, SECRETS, counting_steps, make_settings

DAY = 24 * 3600.0


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'contract.db'}")
    else:
        s = Store(request.getfixturevalue("pg_url"))
    yield s
    s.close()


def _request(body: bytes, source: str = "tilda") -> InboundRequest:
    return InboundRequest(source=source, body=body, content_type="application/x-www-form-urlencoded")


def _accept_numbered(store: Store, source: str, n: int, status: str, at: float | None = None) -> str:
    """Accept webhook `n` of `source` (its own body and key) with `status`; its delivery id."""
    return store.accept(
        _request(f"n={n}".encode(), source), dedup_key=f"{source}:{n}", status=status, dedup_window=60, now=at
    ).id


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


def test_claim_takes_the_oldest_due_across_statuses(store):
    """Queued, retrying and ran-out leases are claimed oldest first; later ones and live leases wait."""
    now = time.time()
    ids = {}
    for name, at in (("new", now - 30), ("retry", now - 50), ("later", now + 600), ("held", now - 90)):
        key = f"tilda:p:{uuid.uuid4()}"
        ids[name] = store.accept(_request(name.encode()), dedup_key=key, status="queued", dedup_window=60, now=at).id
    (held, _token), *_ = store.claim(owner="x", limit=10, lease_seconds=40, now=now - 80)
    assert held.id == ids["held"]
    (retry, retry_token), *_ = store.claim(owner="x", limit=1, lease_seconds=5, now=now - 45)
    assert retry.id == ids["retry"]
    store.finish(retry.id, retry_token, status="retrying", next_attempt_at=now - 40)
    # The lease on "held" ran out at now - 40; "retry" is due at now - 40 and "new" at now - 30.
    claimed = store.claim(owner="y", limit=2, lease_seconds=30, now=now)
    assert [d.id for d, _ in claimed] == [ids["held"], ids["retry"]]
    assert [d.id for d, _ in store.claim(owner="y", limit=10, lease_seconds=30, now=now)] == [ids["new"]]
    assert store.claim(owner="z", limit=10, lease_seconds=30, now=now + 1) == []


def test_text_with_nul_from_outside_is_kept_on_both_databases(store):
    """PostgreSQL's text cannot hold NUL: a payload's de-duplication id with `\\u0000` in it failed the
    webhook's write (a 500, again at every retry), and an upstream answer with one failed to keep the
    result of a call the upstream took. NUL becomes U+FFFD, on both stores alike."""
    from relay.store import Attempt

    key = f"tilda:p:{uuid.uuid4().hex}\x00x"
    accepted = store.accept(_request(b"n=1"), dedup_key=key, status="queued", dedup_window=60)
    assert store.accept(_request(b"n=2"), dedup_key=key, status="queued", dedup_window=60).duplicate
    [(delivery, token)] = [
        pair for pair in store.claim(owner="a", limit=100, lease_seconds=30) if pair[0].id == accepted.id
    ]
    answer = '{"error": 0, "error_text": "ok\x00"}'
    attempt = Attempt(
        started_at=time.time(),
        duration_ms=1.0,
        call_index=0,
        method="profiles/import",
        request={"email": "a@example.com"},
        http_status=400,
        response=answer,
        outcome="rejected",
        error="HTTP 400, error 1: bad\x00",
    )
    assert store.finish(
        delivery.id, token, status="failed", reason="rejected", detail="HTTP 400, error 1: bad\x00", attempt=attempt
    )
    kept = store.get(delivery.id)
    assert kept.detail == "HTTP 400, error 1: bad\ufffd"
    # A profile id longer than its column (an upstream other than Altcraft) is left out, not a failed write.
    other = store.accept(_request(b"n=3"), dedup_key=key + "2", status="queued", dedup_window=60).id
    [(second, token)] = [(d, t) for d, t in store.claim(owner="a", limit=100, lease_seconds=30) if d.id == other]
    done = Attempt(time.time(), 1.0, 0, "profiles/import", {}, 200, "{}", "delivered", profile_id="p" * 65)
    assert store.finish(second.id, token, status="delivered", attempt=done)
    assert store.get(second.id).profile_id is None
    [logged] = store.attempts_of(delivery.id)
    assert (logged["response"], logged["error"]) == (answer.replace("\x00", "\ufffd"), "HTTP 400, error 1: bad\ufffd")


def test_time_filters_keep_exact_bounds(store):
    """since is inclusive and until exclusive, to the microsecond, though ids carry only milliseconds."""
    at = 1_700_000_000.0005
    kept = store.accept(_request(b"t"), dedup_key=f"t:{uuid.uuid4()}", status="held", dedup_window=60, now=at).id
    listed = lambda **bounds: [d.id for d in store.list_deliveries(**bounds)]  # noqa: E731
    assert listed(since=at) == [kept] and listed(until=at + 0.0001) == [kept]
    assert listed(since=at + 0.0001) == [] and listed(until=at) == []
    assert listed(since=at - 0.0004, until=at + 0.0004) == [kept]


def test_pages_of_deliveries_newest_first(store):
    """Pages of `limit` come newest first, `before` goes on where the last ended, and every filter holds."""
    now = time.time()
    made = []
    for n in range(7):
        source, status = ("tilda", "held") if n % 2 else ("shopify", "queued")
        request = InboundRequest(source=source, body=b"n=%d" % n, content_type="text/plain")
        accepted = store.accept(request, dedup_key=f"p:{uuid.uuid4()}", status=status, dedup_window=60, now=now + n)
        made.append((accepted.id, source))
    newest_first = [delivery_id for delivery_id, _ in reversed(made)]

    def pages(**filters: Any) -> list[list[str]]:
        found, before = [], None
        while True:
            page = [d.id for d in store.list_deliveries(limit=3, before=before, **filters)]
            found.append(page)
            if len(page) < 3:
                return found
            before = page[-1]

    assert pages() == [newest_first[:3], newest_first[3:6], newest_first[6:]]
    tilda = [delivery_id for delivery_id in newest_first if (delivery_id, "tilda") in made]
    assert pages(source="tilda") == [tilda[:3], tilda[3:]]
    assert pages(source="tilda", status="held") == [tilda[:3], tilda[3:]]
    assert pages(status="held,queued", since=now + 2) == [newest_first[:3], newest_first[3:5]]
    assert pages(source="shopify", status="held") == [[]]


def test_replayable_counts_by_status_and_reason_and_changes_nothing(store):
    """What a replay would take, on both databases: failed ones by reason, held ones, nothing else."""
    source = f"src{uuid.uuid4().hex[:8]}"
    held = _accept_numbered(store, source, 0, "held")
    queued = [_accept_numbered(store, source, n, "queued") for n in range(1, 5)]
    claimed = {d.id: t for d, t in store.claim(owner="a", limit=100, lease_seconds=30) if d.id in queued}
    assert set(claimed) == set(queued)
    for delivery_id, reason in zip(queued, ["mapping", "mapping", "rejected"], strict=False):
        assert store.finish(delivery_id, claimed[delivery_id], status="failed", reason=reason, detail="no")
    assert store.finish(queued[3], claimed[queued[3]], status="delivered")
    found = store.replayable(source=source)
    assert found == {"failed/mapping": 2, "failed/rejected": 1, "held": 1}
    assert store.replayable(source=source, status="held") == {"held": 1}
    assert store.replayable(source=source, status="failed/mapping") == {"failed/mapping": 2}
    assert store.replayable(source=source, status="failed/exhausted") == {}
    rejected = store.list_deliveries(source=source, status="failed/rejected")
    assert [d.id for d in rejected] == [queued[2]]
    assert store.get(held).status == "held" and store.get(queued[0]).status == "failed"
    assert store.replay_matching(source=source, status="failed/rejected") == 1  # the reason fixed: only those
    assert store.get(queued[2]).status == "queued" and store.get(queued[0]).status == "failed"
    assert store.replay_matching(source=source) == sum(found.values()) - 1


def test_kept_deliveries_are_counted_apart_on_both_databases(store):
    """relay_deliveries_kept: failed for their mapping by a rule with `keep` (their detail begins as the
    error's message does), not a mapping error that mentions it, nor another reason."""
    from relay.errors import KeptByMapping

    before = store.kept_count()
    source = f"src{uuid.uuid4().hex[:8]}"
    ids = [_accept_numbered(store, source, n, "queued") for n in range(3)]
    claimed = {d.id: t for d, t in store.claim(owner="a", limit=100, lease_seconds=30) if d.id in ids}
    kept = KeptByMapping("hold", "held while the order fields change").detail
    for delivery_id, reason, detail in zip(
        ids, ["mapping", "mapping", "rejected"], [kept, f"rule 'x': not {kept}", kept], strict=True
    ):
        assert store.finish(delivery_id, claimed[delivery_id], status="failed", reason=reason, detail=detail)
    assert store.kept_count() == before + 1


def test_counts_by_source_status_and_reason(store):
    """The overview's counts, on both databases: per source, status and reason (delivered ones as the
    difference of two indexes), within a time range, with each source's newest arrival."""
    source = f"src{uuid.uuid4().hex[:8]}"
    now = time.time()
    _accept_numbered(store, source, 0, "held", now - 7200)
    failed = _accept_numbered(store, source, 1, "queued", now)
    _accept_numbered(store, source, 2, "queued", now)
    done = _accept_numbered(store, source, 3, "queued", now - 30)
    claimed = store.claim(owner="a", limit=100, lease_seconds=30, now=now + 1)  # the queued ones
    tokens = {delivery.id: token for delivery, token in claimed}
    assert store.finish(failed, tokens[failed], status="failed", reason="mapping", detail="no")
    assert store.finish(done, tokens[done], status="delivered", reason="ignored")
    rows, newest = store.counts_by_source(source=source)
    assert sorted(rows, key=str) == sorted(
        [
            (source, "held", None, 1),
            (source, "failed", "mapping", 1),
            (source, "delivering", None, 1),
            (source, "delivered", None, 1),
        ],
        key=str,
    )
    assert newest == {source: pytest.approx(now, abs=0.001)}
    recent, newest = store.counts_by_source(source=source, since=now - 60, until=now - 10)
    assert recent == [(source, "delivered", None, 1)] and newest == {source: pytest.approx(now - 30, abs=0.001)}
    assert store.counts_by_source(source=source, until=now - 8000) == ([], {})


def test_problems_group_failed_and_retrying_deliveries_by_their_error(store):
    """What went wrong, on both databases: failed and retrying deliveries grouped by source, status, reason
    and detail, most common first, each group with its newest id; nothing else, and within the filters."""
    source, other = f"src{uuid.uuid4().hex[:8]}", f"src{uuid.uuid4().hex[:8]}"
    now = time.time()
    ids = [_accept_numbered(store, source, n, "queued", now - 50 + n) for n in range(8)]
    ids.append(_accept_numbered(store, other, 0, "queued", now - 40))
    _accept_numbered(store, source, 99, "held", now)
    tokens = {delivery.id: token for delivery, token in store.claim(owner="a", limit=100, lease_seconds=30)}
    no_email = "rule 'form' matches by email but the payload gives no usable email"
    outcomes = [
        ("failed", "mapping", no_email),
        ("retrying", None, "HTTP 503, error 1: busy"),
        ("failed", "mapping", no_email),
        ("failed", "rejected", "HTTP 400, error 3: bad"),
        ("retrying", None, "HTTP 503, error 1: busy"),
        ("failed", "mapping", no_email),
        ("delivered", None, None),
        ("failed", "rejected", None),
        ("failed", "mapping", no_email),  # the other source: a group of its own
    ]
    for id_, (status, reason, detail) in zip(ids, outcomes, strict=True):
        later = now + 600 if status == "retrying" else None
        assert store.finish(id_, tokens[id_], status=status, reason=reason, detail=detail, next_attempt_at=later)
    found = [(p.source, p.status, p.reason, p.detail, p.count, p.newest_id) for p in store.problems(source=source)]
    assert found == [
        (source, "failed", "mapping", no_email, 3, ids[5]),
        (source, "retrying", None, "HTTP 503, error 1: busy", 2, ids[4]),
        (source, "failed", "rejected", None, 1, ids[7]),  # equal counts: the newest group first
        (source, "failed", "rejected", "HTTP 400, error 3: bad", 1, ids[3]),
    ]
    assert [p.count for p in store.problems(source=source, limit=2)] == [3, 2]
    recent = store.problems(source=source, since=now - 46.5)  # ids[4] onwards
    assert [(p.status, p.reason, p.newest_id) for p in recent] == [
        ("failed", "rejected", ids[7]),
        ("failed", "mapping", ids[5]),
        ("retrying", None, ids[4]),
    ]
    assert [(p.source, p.count) for p in store.problems(source=other)] == [(other, 1)]


def test_the_overview_counts_what_a_plain_count_of_the_table_counts(tmp_path):
    """Counted from two indexes, the overview equals a count of the table's rows, for every filter."""
    import random

    path = tmp_path / "counts.db"
    store = Store(f"sqlite:///{path}")
    rng = random.Random(7)
    now = time.time()
    rows = [
        (now - rng.uniform(0, 1000), rng.choice(["tilda", "tally", "shopify"]), rng.choice(STATUSES))
        for _ in range(600)
    ]
    _insert_deliveries(path, rows)
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE deliveries SET reason = CASE WHEN random() % 2 THEN 'mapping' ELSE 'rejected' END "
            "WHERE status = 'failed'"
        )
        table = db.execute("SELECT id, source, status, reason FROM deliveries").fetchall()
    for source in (None, "tilda"):
        for since, until in [(None, None), (now - 500, None), (None, now - 200), (now - 700, now - 300)]:
            low = f"{int(since * 1000):012x}" if since is not None else ""  # ids begin with these milliseconds
            high = f"{int(until * 1000) + 1:012x}" if until is not None else "g"
            chosen = [r for r in table if (source in (None, r[1])) and low <= r[0][:12] < high]
            expected = Counter((s, st, reason if st != "delivered" else None) for _id, s, st, reason in chosen)
            found, newest = store.counts_by_source(source=source, since=since, until=until)
            assert sorted(found, key=str) == sorted(((*key, n) for key, n in expected.items()), key=str)
            assert newest == {
                name: int(max(i for i, s, _st, _r in chosen if s == name)[:12], 16) / 1000
                for name in {r[1] for r in chosen}
            }
    store.close()


def test_the_overview_does_not_read_the_rows_of_delivered_deliveries(tmp_path):
    """Each row carries its webhook's body: the overview counts delivered ones from the (source, id) index
    alone and reads rows only through the status index, for the statuses that are few."""
    from sqlalchemy.dialects import sqlite

    from relay.store import _source_counts

    Store(f"sqlite:///{tmp_path / 'plan.db'}").close()
    connection = sqlite3.connect(tmp_path / "plan.db")
    for source, since, until in [(None, None, None), ("tilda", None, None), (None, 1.0, 2.0), ("tilda", 1.0, None)]:
        sql = str(
            _source_counts(source, since, until, sqlite=True).compile(
                dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}
            )
        )
        plan = [row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + sql)]
        reads = [step for step in plan if step.startswith(("SCAN", "SEARCH"))]
        assert len(reads) == 2 and "USING INDEX ix_deliveries_due" in reads[0], plan
        assert "USING COVERING INDEX ix_deliveries_source_id" in reads[1], plan
    connection.close()


def test_last_received_is_each_sources_newest_arrival(store):
    """Each source's newest stored webhook, on both databases; a source with none is left out."""
    quiet, busy, never = (f"src{uuid.uuid4().hex[:8]}" for _ in range(3))
    now = time.time()
    _accept_numbered(store, quiet, 0, "held", now - 3 * DAY)
    for n, age in enumerate([50.0, 5.0, 500.0]):  # not in arrival order
        _accept_numbered(store, busy, n, "queued", now - age)
    assert store.last_received([quiet, busy, never]) == {quiet: now - 3 * DAY, busy: now - 5.0}
    assert store.last_received([]) == {}


def test_last_received_does_not_grow_with_the_table(tmp_path):
    """Read at every /metrics scrape: one seek a source, the same work at 20 deliveries as at 4,000."""
    path = tmp_path / "grow.db"
    store = Store(f"sqlite:///{path}")
    now = time.time()

    def steps() -> int:
        found, count = counting_steps(store, lambda: store.last_received(["tilda", "tally", "shopify"]))
        assert set(found) == {"tilda", "tally"}
        return count

    _insert_deliveries(path, [(now - n, source, "delivered") for n in range(10) for source in ("tilda", "tally")])
    few = steps()
    rows = [(now - 10 - n / 100, source, "delivered") for n in range(2000) for source in ("tilda", "tally")]
    _insert_deliveries(path, rows)
    assert steps() == few < 200
    store.close()


def test_dedup_window_expires(store):
    """After the window, the same key is a new delivery."""
    key = f"tilda:p:{uuid.uuid4()}"
    first = store.accept(_request(b"x=1"), dedup_key=key, status="held", dedup_window=10, now=1000.0)
    later = store.accept(_request(b"x=1"), dedup_key=key, status="held", dedup_window=10, now=1011.0)
    assert not later.duplicate and later.id != first.id


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


def test_replay_keeps_the_calls_already_made(store):
    """A delivery that failed on its second call replays from that call, not from the first."""
    from relay.store import Attempt

    accepted = store.accept(
        _request(b"Email=r%40example.com"), dedup_key=f"r:{uuid.uuid4()}", status="queued", dedup_window=60
    )
    (_delivery, token), *_ = [c for c in store.claim(owner="w", limit=100, lease_seconds=30) if c[0].id == accepted.id]
    first = Attempt(
        started_at=time.time(),
        duration_ms=1,
        call_index=0,
        method="profiles/import",
        request={},
        http_status=200,
        response="{}",
        outcome="delivered",
        calls_done=1,
    )
    assert store.record_attempt(accepted.id, token, first)
    assert store.finish(accepted.id, token, status="failed", reason="rejected", detail="second call refused")
    assert store.replay(accepted.id)
    replayed = store.get(accepted.id)
    assert replayed.status == "queued" and replayed.calls_done == 1 and replayed.attempts == 1


def _open_store(url: str, results) -> None:  # type: ignore[no-untyped-def]
    try:
        Store(url).close()
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(repr(exc)[:200])


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_processes_starting_together_create_the_schema_once(kind, tmp_path, request):
    """Four processes opening a new store at once (gunicorn workers booting) all succeed."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    outcomes = []
    for round_no in range(5):
        if kind == "sqlite":
            url = f"sqlite:///{tmp_path}/race{round_no}.db"
        else:
            url = request.getfixturevalue("pg_url") if round_no == 0 else _fresh_schema(request, round_no)
        results = context.Queue()
        processes = [context.Process(target=_open_store, args=(url, results)) for _ in range(4)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=30)
        outcomes += [results.get(timeout=5) for _ in processes]
    assert outcomes == ["ok"] * 20


def test_a_fork_during_a_checkpoint_does_not_hang_the_child(tmp_path, monkeypatch):
    """A process forked while a store's checkpoint thread is inside SQLite inherited SQLite's mutexes held
    by a thread it does not have, and hung at its first statement: 13 of 160 children in a stress run
    (the test above hung so in CI). A fork now waits for the checkpoint under way."""
    import multiprocessing

    import relay.store_writes as writes_module

    monkeypatch.setattr(writes_module, "CHECKPOINT_SECONDS", 0.0005)  # checkpoints all the time
    busy = [Store(f"sqlite:///{tmp_path}/busy{n}.db") for n in range(4)]
    for n, store in enumerate(busy):
        for i in range(30):
            store.accept(_request(b"x" * 2000), dedup_key=f"b{n}:{i}", status="held", dedup_window=60)
    context = multiprocessing.get_context("fork")
    hung = 0
    try:
        for round_no in range(20):
            results = context.Queue()
            children = [
                context.Process(target=_open_store, args=(f"sqlite:///{tmp_path}/child{round_no}_{k}.db", results))
                for k in range(4)
            ]
            for child in children:
                child.start()
            for child in children:
                child.join(timeout=10)
                if child.is_alive():
                    hung += 1
                    child.kill()
    finally:
        for store in busy:
            store.close()
    assert hung == 0


def _fresh_schema(request, round_no: int) -> str:  # type: ignore[no-untyped-def]
    """Another empty schema next to the pg_url fixture's one (dropped with the test's connection)."""
    from sqlalchemy import create_engine, text

    base = request.getfixturevalue("pg_url")
    schema = base.rsplit("%3D", 1)[1] + f"_r{round_no}"
    engine = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()

    def drop() -> None:
        cleanup = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
        with cleanup.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        cleanup.dispose()

    request.addfinalizer(drop)
    return base.rsplit("%3D", 1)[0] + f"%3D{schema}"


def test_claim_scans_an_index_in_order_without_sorting_the_backlog(tmp_path):
    """Each claim query walks an index in time order: one that sorts every due row grew with the backlog."""
    import sqlite3

    from relay.store_writes import _DUE

    Store(f"sqlite:///{tmp_path / 'plan.db'}").close()
    connection = sqlite3.connect(tmp_path / "plan.db")
    for sql in _DUE:
        plan = " | ".join(row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + sql, {"now": 1, "limit": 4}))
        assert "USING INDEX ix_deliveries_due" in plan, plan
        if "'delivering'" not in sql:  # leases that ran out are few; sorting them is fine
            assert "TEMP B-TREE" not in plan, plan
    connection.close()


def test_a_failing_write_fails_alone(tmp_path):
    """The group writer commits many writes together; one that fails does not take the others with it."""
    import sqlite3
    import threading

    store = Store(f"sqlite:///{tmp_path / 'group.db'}")
    assert store._writer is not None
    results: list[object] = []
    start = threading.Barrier(9)

    def accept(index: int) -> None:
        start.wait()
        results.append(store.accept(_request(b"%d" % index), dedup_key=f"k{index}", status="held", dedup_window=60))

    def broken(executor) -> None:  # type: ignore[no-untyped-def]
        executor.rowcount("INSERT INTO no_such_table VALUES (1)", {})

    def bad() -> None:
        start.wait()
        try:
            store._writer.run(broken)
        except sqlite3.OperationalError as exc:
            results.append(exc)

    threads = [threading.Thread(target=accept, args=(i,)) for i in range(8)] + [threading.Thread(target=bad)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sum(isinstance(r, sqlite3.OperationalError) for r in results) == 1
    assert store.counts() == {"held": 8}
    store.close()


def test_a_commit_that_fails_leaves_the_writer_usable(tmp_path):
    """When COMMIT itself fails (here a deferred foreign key; in life SQLite busy past its timeout), the
    transaction is rolled back: the writer's connection would otherwise stay inside it, and every later
    write of the process fail with "cannot start a transaction within a transaction"."""
    import sqlite3

    store = Store(f"sqlite:///{tmp_path / 'commit.db'}")
    assert store._writer is not None

    def dangling_attempt(executor) -> None:  # type: ignore[no-untyped-def]
        executor.rowcount("PRAGMA defer_foreign_keys = ON", {})
        executor.rowcount(
            "INSERT INTO attempts (delivery_id, started_at, duration_ms, call_index, outcome) "
            "VALUES ('no-such-delivery', 0, 0, 0, 'delivered')",
            {},
        )

    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        store._writer.run(dangling_attempt)
    accepted = store.accept(_request(b"Email=after%40example.com"), dedup_key="after", status="held", dedup_window=60)
    assert store.get(accepted.id) is not None
    assert store.attempts_of("no-such-delivery") == []
    store.close()


def test_writes_that_wait_for_another_process_share_one_commit(tmp_path):
    """While another process holds the file lock, every write that queues meanwhile goes into the next commit."""
    import fcntl
    import os
    import threading

    store = Store(f"sqlite:///{tmp_path / 'shared.db'}")
    assert store._writer is not None
    store.accept(_request(b"first"), dedup_key="first", status="held", dedup_window=60)  # opens the connection
    statements: list[str] = []
    store._writer.connection.dbapi_connection.set_trace_callback(statements.append)

    holder = os.open(str(tmp_path / "shared.db.lock"), os.O_RDWR)  # as another process would
    fcntl.flock(holder, fcntl.LOCK_EX)
    threads = [
        threading.Thread(
            target=store.accept,
            args=(_request(b"%d" % i),),
            kwargs={"dedup_key": f"k{i}", "status": "held", "dedup_window": 60},
        )
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    # All four stay queued while the lock is held: the group is taken only once the lock is ours.
    deadline = time.monotonic() + 5
    while len(store._writer.queued) < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    fcntl.flock(holder, fcntl.LOCK_UN)
    os.close(holder)
    for thread in threads:
        thread.join(10)
    assert store.counts() == {"held": 5}
    assert statements.count("COMMIT") == 1, statements
    store.close()


def test_the_wal_shrinks_back_after_a_long_read_let_it_grow(tmp_path, monkeypatch):
    """A backup (VACUUM INTO) or a long export holds a read, checkpoints stop and the WAL grows with every
    webhook meanwhile; once the read ends the file is cut back, not kept at its largest for ever."""
    import relay.store as store_module

    limit = 1024 * 1024
    monkeypatch.setattr(store_module, "WAL_SIZE_LIMIT", limit)  # 64 MB in use: too many webhooks for a test
    path = tmp_path / "wal.db"
    wal = Path(f"{path}-wal")
    store = Store(f"sqlite:///{path}")
    body = b"x" * 3000

    def accept(tag: str, count: int) -> None:
        for i in range(count):
            store.accept(_request(body), dedup_key=f"{tag}{i}", status="held", dedup_window=60)

    accept("before", 10)
    backup = sqlite3.connect(path)
    backup.execute("BEGIN")
    backup.execute("SELECT count(*) FROM deliveries").fetchone()  # the read that holds checkpoints back
    accept("during", 400)
    grown = wal.stat().st_size
    assert grown > 4 * limit, grown
    backup.rollback()
    backup.close()
    # Webhooks go on arriving; the store's checkpoint thread copies the WAL out between them, and the next
    # commit after that starts the file over and cuts it back.
    deadline, after = time.monotonic() + 10, 0
    while wal.stat().st_size > limit and time.monotonic() < deadline:
        accept(f"after{after}-", 1)
        after += 1
        time.sleep(0.05)
    assert wal.stat().st_size <= limit, (grown, wal.stat().st_size)
    assert store.counts() == {"held": 410 + after}
    store.close()


def test_commits_leave_the_wal_to_the_checkpoint_thread(tmp_path, monkeypatch):
    """SQLite checkpoints inside the COMMIT that takes the WAL past 1,000 pages, with the write lock held:
    on a slow disk one commit in 170 took 13-16 ms and every write queued behind it waited. A thread of
    the writing process checkpoints instead; a commit does so itself only at 10,000 pages."""
    import relay.store_writes as writes_module

    monkeypatch.setattr(writes_module, "CHECKPOINT_SECONDS", 3600.0)  # the thread started, but idle here
    path = tmp_path / "ckpt.db"
    store = Store(f"sqlite:///{path}")
    for i in range(400):  # about 1,300 pages of WAL
        store.accept(_request(b"x" * 3000), dedup_key=f"c{i}", status="held", dedup_window=60)
    assert store._writer is not None and store._writer.checkpointer is not None
    thread = store._writer.checkpointer.thread
    assert thread.is_alive() and thread.name == "relay-checkpoint"
    with sqlite3.connect(path) as other:
        frames = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    assert frames > 1_000, frames  # no commit checkpointed at SQLite's default
    store.close()
    assert not thread.is_alive()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_admin_api_filters_are_checked(kind, tmp_path, request):
    """A misspelt status, time, source or id is a 400 (or, in a path, a 404) naming it, not an empty list (or
    an empty replay). On PostgreSQL a source, an id or a `before` with NUL in it was a 500."""
    from relay.web import create_app

    url = request.getfixturevalue("pg_url") if kind == "postgres" else f"sqlite:///{tmp_path / 'relay.db'}"
    app = create_app(make_settings(tmp_path, RELAY_DATABASE_URL=url))
    try:
        _check_admin_filters(app.test_client())
    finally:
        app.extensions["relay"]["store"].close()


def _check_admin_filters(client: Any) -> None:
    auth = {"Authorization": "Bearer " + SECRETS["RELAY_ADMIN_TOKEN"]}
    client.post("/hooks/tilda?token=" + SECRETS["TILDA_WEBHOOK_TOKEN"], data={"Email": "f@example.com"})
    assert len(client.get("/admin/api/deliveries?status=held&since=2020-01-01", headers=auth).json["deliveries"]) == 1
    cases = [
        ("get", "/admin/api/deliveries?status=faild", "status 'faild' is not one of queued, delivering, delivered"),
        ("get", "/admin/api/deliveries?since=yesterday", "since 'yesterday' is neither an ISO 8601 time"),
        ("get", "/admin/api/deliveries?until=nan", "until 'nan' is neither an ISO 8601 time"),
        ("post", "/admin/api/replay?status=faild", "status 'faild' is not one of"),
        ("post", "/admin/api/replay?status=delivered", "only failed and held deliveries replay"),
        ("get", "/admin/api/deliveries?status=failed/late", "status 'failed/late' is not one of"),
        ("get", "/admin/api/deliveries?status=held/mapping", "status 'held/mapping' is not one of"),
        ("get", "/admin/api/deliveries?limit=many", "limit must be a whole number"),
        ("get", "/admin/api/deliveries?source=Tilda", "source 'Tilda' is not a source name"),
        ("get", "/admin/api/overview?source=x%00y", "source 'x\\x00y' is not a source name"),
        ("post", "/admin/api/replay?source=x%00y", "source 'x\\x00y' is not a source name"),
        ("get", "/admin/api/deliveries?before=x%00y", "before 'x\\x00y' is not a delivery id (32 hex digits)"),
    ]
    for method, path, detail in cases:
        response = getattr(client, method)(path, headers=auth)
        assert response.status_code == 400, path
        assert response.json["error"] == "bad_request"
        assert response.json["detail"].startswith(detail), response.json
    for method, path in [("get", "/admin/api/deliveries/x%00y"), ("post", "/admin/api/deliveries/x%00y/replay")]:
        response = getattr(client, method)(path, headers=auth)
        assert (response.status_code, response.json["detail"]) == (404, "no such delivery"), path
    assert client.post("/admin/api/replay?status=held", headers=auth).json == {"replayed": 1}
    assert client.get("/admin/api/nothing-here", headers=auth).json["detail"] == "no such route"


def test_a_replay_dry_run_counts_what_the_replay_then_takes_and_changes_nothing(tmp_path):
    """`POST /admin/api/replay?...&dry_run=1` answers what the same replay would take, by status and
    reason, and leaves every delivery as it was; the replay that follows takes exactly that many."""
    from relay.web import create_app

    path = tmp_path / "relay.db"
    # An upstream is set (no worker runs here), so replayed deliveries are queued, not held again.
    upstream = "http://127.0.0.1:9/api/v1.1"
    app = create_app(make_settings(tmp_path, RELAY_DATABASE_URL=f"sqlite:///{path}", RELAY_UPSTREAM_URL=upstream))
    store = app.extensions["relay"]["store"]
    client = app.test_client()
    now = time.time()
    _insert_deliveries(
        path,
        [(now - n, "tilda", "failed") for n in range(1, 4)]
        + [(now - 10, "tally", "failed"), (now - 11, "tilda", "held"), (now - 12, "tilda", "delivered")],
    )
    with sqlite3.connect(path) as db:
        db.execute("UPDATE deliveries SET reason = 'mapping' WHERE status = 'failed' AND source = 'tilda'")
        db.execute("UPDATE deliveries SET reason = 'rejected' WHERE source = 'tally'")
    auth = {"Authorization": "Bearer " + SECRETS["RELAY_ADMIN_TOKEN"]}
    before = store.counts()
    counted = client.post("/admin/api/replay?source=tilda&dry_run=1", headers=auth)
    assert counted.status_code == 200
    assert counted.json["would_replay"] == 4 and counted.json["by_status"] == {"failed/mapping": 3, "held": 1}
    # Their bodies are one NUL byte each: none would translate (tests/test_cli.py has ones that do).
    assert counted.json["with_mappings_now"]["checked"] == 4
    assert counted.json["with_mappings_now"]["still_fail"] == 4
    failed_only = client.post("/admin/api/replay?status=failed&dry_run=true", headers=auth).json
    assert failed_only["would_replay"] == 4
    assert failed_only["by_status"] == {"failed/mapping": 3, "failed/rejected": 1}
    one_reason = client.post("/admin/api/replay?status=failed/rejected&dry_run=1", headers=auth).json
    assert one_reason["would_replay"] == 1 and one_reason["by_status"] == {"failed/rejected": 1}
    assert store.counts() == before
    assert client.post("/admin/api/replay?source=tilda", headers=auth).json == {"replayed": 4}
    assert client.post("/admin/api/replay?source=tilda&dry_run=1", headers=auth).json == {
        "would_replay": 0,
        "by_status": {},
    }
    store.close()


def test_admin_overview_counts_by_status_reason_and_source(tmp_path):
    """`GET /admin/api/overview`: what arrived and what is stuck, in one answer, behind the admin token."""
    from relay.web import create_app

    path = tmp_path / "relay.db"
    app = create_app(make_settings(tmp_path, RELAY_DATABASE_URL=f"sqlite:///{path}"))
    client = app.test_client()
    now = time.time()
    _insert_deliveries(
        path,
        [(now - 1, "tilda", "failed"), (now - 2, "tilda", "failed"), (now - 3, "tally", "queued")]
        + [(now - 4, "tally", "delivered"), (now - 5000, "tilda", "held")],
    )
    with sqlite3.connect(path) as db:
        db.execute("UPDATE deliveries SET reason = 'mapping', detail = 'no e-mail' WHERE status = 'failed'")
        db.execute("UPDATE deliveries SET next_attempt_at = ? WHERE status = 'queued'", (now - 90,))
        (newest_failed,) = db.execute("SELECT max(id) FROM deliveries WHERE status = 'failed'").fetchone()
    auth = {"Authorization": "Bearer " + SECRETS["RELAY_ADMIN_TOKEN"]}
    assert client.get("/admin/api/overview").status_code == 401
    found = client.get("/admin/api/overview", headers=auth).json
    zero = dict.fromkeys(["queued", "delivering", "delivered", "retrying", "held", "failed"], 0)
    assert found["total"] == 5
    assert found["by_status"] == {**zero, "queued": 1, "delivered": 1, "held": 1, "failed": 2}
    assert found["failed_by_reason"] == {"mapping": 2}
    assert found["by_source"] == {
        "tally": {**zero, "queued": 1, "delivered": 1},
        "tilda": {**zero, "held": 1, "failed": 2},
    }
    assert 89 <= found["oldest_due_age_seconds"] < 120
    assert list(found["last_received_at"]) == ["tally", "tilda"]
    assert parse_time(found["last_received_at"]["tally"]) == pytest.approx(now - 3, abs=0.002)
    assert parse_time(found["last_received_at"]["tilda"]) == pytest.approx(now - 1, abs=0.002)
    why = {"source": "tilda", "status": "failed/mapping", "detail": "no e-mail", "count": 2, "newest_id": newest_failed}
    assert found["problems"] == [why]
    recent = client.get("/admin/api/overview?source=tilda&since=" + str(now - 60), headers=auth).json
    assert recent["by_status"] == {**zero, "failed": 2} and list(recent["by_source"]) == ["tilda"]
    long_ago = client.get("/admin/api/overview?until=" + str(now - 60), headers=auth).json
    assert list(long_ago["by_source"]) == ["tilda"]  # the newest arrival within the filter, not of all
    assert long_ago["problems"] == [] and recent["problems"] == [why]
    assert parse_time(long_ago["last_received_at"]["tilda"]) == pytest.approx(now - 5000, abs=0.002)
    refused = client.get("/admin/api/overview?status=failed", headers=auth)
    assert refused.status_code == 400 and "filter by source, since or until" in refused.json["detail"]
    app.extensions["relay"]["store"].close()


def test_purge_deletes_only_old_delivered_and_expired_keys(store):
    """Delivered deliveries past the cut go, with their attempts, batch by batch; failed, held and
    waiting ones stay whatever their age; so do de-duplication keys still inside their window."""
    from relay.store import Attempt

    day = 24 * 3600.0
    now = time.time()
    old = now - 40 * day

    def accepted(status: str, received: float, window: float = day) -> str:
        return store.accept(
            _request(b"Email=p%40example.com"),
            dedup_key=f"p:{uuid.uuid4()}",
            status="queued" if status != "held" else "held",
            dedup_window=window,
            now=received,
        ).id

    def settle(delivery_id: str, status: str) -> None:
        (_delivery, token), *_ = [
            c for c in store.claim(owner="w", limit=100, lease_seconds=30) if c[0].id == delivery_id
        ]
        attempt = Attempt(
            started_at=now,
            duration_ms=1,
            call_index=0,
            method="profiles/import",
            request={},
            http_status=200 if status == "delivered" else 400,
            response="{}",
            outcome="delivered" if status == "delivered" else "rejected",
            calls_done=1,
        )
        assert store.finish(delivery_id, token, status=status, reason=None, attempt=attempt)

    old_delivered = []
    for n in range(5):
        old_delivered.append(accepted("delivered", old + n))
        settle(old_delivered[-1], "delivered")
    old_failed = accepted("failed", old)
    settle(old_failed, "failed")
    recent = accepted("delivered", now - day, window=7 * day)  # its key is still inside its window
    settle(recent, "delivered")
    old_held = accepted("held", old)
    old_queued = accepted("queued", old - 1)

    purged = store.purge(received_before=now - 30 * day, now=now, batch=2, key_window=3)  # several of each

    assert purged == {"deliveries": 5, "dedup_keys": 8, "once_keys": 0, "latest_keys": 0}
    assert [store.get(d) for d in old_delivered] == [None] * 5
    assert [store.attempts_of(d) for d in old_delivered] == [[]] * 5
    assert store.get(old_failed).status == "failed" and len(store.attempts_of(old_failed)) == 1
    assert store.get(old_held).status == "held"
    assert store.get(old_queued) is not None and store.get(recent).status == "delivered"
    assert store.counts() == {"failed": 1, "held": 1, "queued": 1, "delivered": 1}
    again = store.accept(_request(b"x"), dedup_key="p:again", status="queued", dedup_window=day, now=now)
    assert not again.duplicate
    assert store.purge(received_before=now - 30 * day, now=now) == {
        "deliveries": 0,
        "dedup_keys": 0,
        "once_keys": 0,
        "latest_keys": 0,
    }


def test_a_housekeeping_round_is_one_processs_turn(store):
    """A round taken is not due for anyone else until its holder ends it and the task's interval has passed;
    a holder that never ends it (killed) holds it for its hold only, and then cannot end the next one's."""
    t = 1_000_000.0
    assert store.take_turn("purge", "a", hold=900, now=t)  # the task's first round in this store
    assert not store.take_turn("purge", "b", hold=900, now=t + 1)  # a runs it now
    assert store.take_turn("keying", "b", hold=900, now=t + 1)  # another task, another turn
    store.end_turn("purge", "a", every=3600, done=True, now=t + 10)
    assert store.housekeeping_done() == {"purge": t + 10}  # b's keying has not ended yet
    assert not store.take_turn("purge", "b", hold=900, now=t + 3609)  # ran 3,599 s ago
    assert store.take_turn("purge", "b", hold=900, now=t + 3610)
    # b is killed in the middle: its turn passes on after the hold, and b's late end changes nothing.
    assert not store.take_turn("purge", "c", hold=900, now=t + 4509)
    assert store.take_turn("purge", "c", hold=900, now=t + 4510)
    store.end_turn("purge", "b", every=60, done=True, now=t + 4520)
    assert not store.take_turn("purge", "a", hold=900, now=t + 4600)  # c holds it till t + 5410
    store.end_turn("purge", "c", every=60, done=False, now=t + 4610)  # a round that failed
    assert store.take_turn("purge", "a", hold=900, now=t + 4670)
    assert store.housekeeping_done() == {"purge": t + 10}  # the last that went through: a's


def _take_turn(url: str, at: float, results) -> None:  # type: ignore[no-untyped-def]
    store = Store(url)
    try:
        results.put(store.take_turn("keying", f"process {os.getpid()}", hold=900, now=at))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(repr(exc)[:200])
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_of_processes_that_ask_at_once_one_takes_the_round(kind, tmp_path, request):
    """Worker processes starting together (relay run, or nodes) ask for the same round at the same moment,
    before it exists in the store and once it does: one takes it each time."""
    import multiprocessing

    url = f"sqlite:///{tmp_path}/turns.db" if kind == "sqlite" else request.getfixturevalue("pg_url")
    Store(url).close()  # the tables: the race is the turn's, not the schema's
    context = multiprocessing.get_context("fork")
    outcomes = []
    for at in (1000.0, 1000.0 + 900):  # the first round ever, then the next once the first one's hold ran out
        results = context.Queue()
        processes = [context.Process(target=_take_turn, args=(url, at, results)) for _ in range(4)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=30)
        outcomes.append(sorted(results.get(timeout=5) for _ in processes))
    assert outcomes == [[False, False, False, True]] * 2


def _insert_deliveries(path: Path, rows: list[tuple[float, str, str]]) -> None:
    """Deliveries straight into a SQLite store's file: (received at, source, status) each."""
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO deliveries (id, source, received_at, status, body, headers, dedup_key, attempts, "
            "calls_done, cycle_started_at, next_attempt_at, updated_at) "
            "VALUES (?1, ?2, ?3, ?4, x'00', '{}', ?1, 1, 1, ?3, ?3, ?3)",
            [(new_id(received), source, received, status) for received, source, status in rows],
        )


def test_purging_keys_reads_each_key_about_once(tmp_path):
    """Expired de-duplication keys are spread over the whole key order (keys are hashes) and have no
    index of their own. The purge walks the keys window by window; searching from the first key in every
    transaction read the live keys before each batch again: 78 SQLite steps a key here against 7, more
    with every batch, and a fifth of a second with the write lock held per batch at two million keys."""
    path = tmp_path / "keys.db"
    store = Store(f"sqlite:///{path}")
    now = time.time()
    keys = 20_000
    with sqlite3.connect(path) as db:
        db.executemany(
            'INSERT INTO dedup_keys ("key", delivery_id, expires_at) VALUES (?, ?, ?)',
            [
                (f"tilda:{hashlib.sha256(str(n).encode()).hexdigest()}", f"d{n}", now - 1 if n % 10 == 0 else now + 60)
                for n in range(keys)
            ],
        )

    purged, steps = counting_steps(
        store, lambda: store.purge(received_before=now - 30 * DAY, now=now, batch=50, key_window=500)
    )
    store.close()

    assert purged == {"deliveries": 0, "dedup_keys": keys // 10, "once_keys": 0, "latest_keys": 0}
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*), min(expires_at) > ? FROM dedup_keys", (now,)).fetchone() == (18_000, 1)
    assert steps < 20 * keys, f"{steps / keys:.0f} SQLite steps a key"


def test_purging_deliveries_reads_each_old_one_about_once(tmp_path):
    """Each batch goes on after the last id of the one before, through the primary key. SQLite used to
    take the status index instead, then read and sort every delivered row of the table, recent ones
    included, at every batch (66 ms with the write lock held per batch at 300,000 recent rows, growing
    with the table); failed ones among the old were read again at every batch too."""
    path = tmp_path / "old.db"
    store = Store(f"sqlite:///{path}")
    now = time.time()
    cut = now - 30 * DAY
    old, recent = 4_000, 8_000
    _insert_deliveries(
        path,
        [
            (cut - DAY + n if n < old else cut + n, "tilda", "failed" if n < old and n % 4 == 0 else "delivered")
            for n in range(old + recent)
        ],
    )

    purged, steps = counting_steps(store, lambda: store.purge(received_before=cut, now=now, batch=50))
    store.close()

    assert purged == {"deliveries": old * 3 // 4, "dedup_keys": 0, "once_keys": 0, "latest_keys": 0}
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY status").fetchall() == [
            ("delivered", recent),
            ("failed", old // 4),
        ]
    assert steps < 100 * old, f"{steps / old:.0f} SQLite steps an old delivery"


def test_a_page_of_deliveries_is_read_without_the_rest_of_the_table(tmp_path):
    """Listing newest first reads about a page, whatever the table holds. The status index made SQLite
    read and sort every delivered row for a page of them (2.1 s at a million rows), the old (source,
    received_at) index every row of the source (0.5 s); and walking one source's deliveries for a status
    it has none of read them all (PostgreSQL chose that too: 258 ms at a million). Now each takes about
    a millisecond, and a rare status costs the sort of its own few rows at most."""
    path = tmp_path / "list.db"
    store = Store(f"sqlite:///{path}")
    now = time.time()
    rows = 20_000
    _insert_deliveries(
        path,
        [
            (now - DAY + n, ("tilda", "shopify", "tally")[n % 3], "failed" if n % 100 == 0 else "delivered")
            for n in range(rows)
        ],
    )
    pages = {  # name: filters, how many the page holds
        "delivered": (dict(status="delivered"), 50),
        "delivered or failed": (dict(status="delivered,failed"), 50),
        "one source": (dict(source="tally"), 50),
        "one source, delivered": (dict(source="tally", status="delivered"), 50),
        "one source, its last hour": (dict(source="tally", since=now - DAY + rows - 3600), 50),
        "one source, failed": (dict(source="tally", status="failed"), 50),
        "one source, held (none)": (dict(source="tally", status="held"), 0),
    }
    try:
        for name, (filters, size) in pages.items():
            page, steps = counting_steps(store, functools.partial(store.list_deliveries, limit=50, **filters))
            assert len(page) == size and page == sorted(page, key=lambda d: d.id, reverse=True), name
            assert all(d.source == filters.get("source", d.source) for d in page), name
            assert all(d.status in filters.get("status", d.status).split(",") for d in page), name
            assert steps < 20_000, f"{name}: {steps} SQLite steps for a page of {rows:,} rows"
    finally:
        store.close()


def test_a_store_made_by_an_earlier_version_gets_todays_columns_and_indexes(store):
    """Opening a store whose tables an earlier version made adds the columns and indexes they lack and
    drops the indexes no longer used; the rows kept stay as they were."""
    from relay.store import _DROPPED_INDEXES, deliveries, latest_keys

    with store.engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_deliveries_source_id"))
        connection.execute(text(f"CREATE INDEX {_DROPPED_INDEXES[0]} ON deliveries (source, received_at)"))
        connection.execute(text("DROP TABLE latest_keys"))
        connection.execute(  # as the twenty-seventh session made it, before `ordered_by`
            text(
                'CREATE TABLE latest_keys (source VARCHAR(64) NOT NULL, "key" VARCHAR(64) NOT NULL, '
                'delivery_id VARCHAR(32) NOT NULL, received_at FLOAT NOT NULL, PRIMARY KEY (source, "key"))'
            )
        )
        connection.execute(text("INSERT INTO latest_keys VALUES ('shop', 'k1', 'd1', 1.0)"))
        # As the thirty-first session made it, before delivery_contacts.
        connection.execute(text("DROP TABLE delivery_contacts"))
        connection.execute(text("DROP INDEX ix_deliveries_unindexed"))
        connection.execute(text("ALTER TABLE deliveries DROP COLUMN contacts_indexed"))
    url = store.engine.url.render_as_string(hide_password=False)

    Store(url).close()

    names = {index["name"] for index in inspect(store.engine).get_indexes(deliveries.name)}
    assert {"ix_deliveries_source_id", "ix_deliveries_unindexed"} <= names and _DROPPED_INDEXES[0] not in names
    assert "ordered_at" in {column["name"] for column in inspect(store.engine).get_columns(latest_keys.name)}
    assert "contacts_indexed" in {column["name"] for column in inspect(store.engine).get_columns(deliveries.name)}
    assert inspect(store.engine).has_table("delivery_contacts")
    with store.engine.begin() as connection:
        assert connection.execute(select(latest_keys)).all() == [("shop", "k1", "d1", 1.0, None)]
    assert store.latest_holder("shop", "k1") == "d1"
    request = InboundRequest(source="shop", body=b"{}", content_type="application/json")
    newer = store.accept(request, dedup_key="shop:1", status="queued", dedup_window=60, latest="k1", latest_order=5.0)
    assert store.latest_holder("shop", "k1") == newer.id


def test_replaying_many_takes_the_write_lock_a_batch_at_a_time(tmp_path):
    """Replaying every failed delivery (after a mapping is fixed, or an outage exhausted the retries) was
    one UPDATE holding SQLite's write lock while it ran: 0.65 s for 10,000, in which no webhook was taken.
    The ids are read first, then replayed a batch a transaction, each once."""
    path = tmp_path / "replay.db"
    store = Store(f"sqlite:///{path}")
    now = time.time()
    failed = 2_000
    _insert_deliveries(
        path, [(now - DAY + n, "tilda", "failed" if n % 5 == 0 else "delivered") for n in range(failed * 5)]
    )
    transactions: list[int] = []

    replayed, _ = counting_steps(store, lambda: store.replay_matching(status="failed", batch=100), transactions)

    store.close()
    assert replayed == failed
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY status").fetchall() == [
            ("delivered", failed * 4),
            ("queued", failed),
        ]
    assert len(transactions) >= failed // 100
    assert max(transactions[1:]) < 100 * 100, transactions  # the first is the read, without the write lock


def test_a_listed_delivery_says_the_event_its_request_names_and_the_event_chooses(tmp_path):
    """Each row of a list, over the admin API and on the command line, gives the event as the source's mapping
    reads it: Shopify's topic header, InSales' hook URL parameter, Stripe's `type` in the body; a Tilda form
    names none. The event also chooses what a list shows and a replay takes."""
    from relay.web import create_app

    from .conftest import post_signed, relay_command
    from .test_signatures import stripe

    settings = make_settings(tmp_path)
    app = create_app(settings)
    client = app.test_client()
    examples = MAPPINGS / "examples"
    shopify = post_signed(
        client,
        "shopify",
        json.loads((examples / "shopify" / "orders-paid.json").read_text(encoding="utf-8")),
        secret=SECRETS["SHOPIFY_WEBHOOK_SECRET"],
        header="X-Shopify-Hmac-Sha256",
        headers={"X-Shopify-Topic": "orders/paid", "X-Shopify-Webhook-Id": "w-1"},
    )
    insales = client.post(
        f"/hooks/insales?token={SECRETS['INSALES_WEBHOOK_TOKEN']}&topic=orders/create",
        data=(examples / "insales" / "orders-create.json").read_bytes(),
        content_type="application/json",
    )
    session = (examples / "stripe" / "checkout.session.completed.live.json").read_bytes()
    signed = stripe(SECRETS["STRIPE_WEBHOOK_SECRET"], session, time.time())
    paid = client.post("/hooks/stripe", data=session, content_type="application/json", headers=signed)
    form = client.post(f"/hooks/tilda?token={SECRETS['TILDA_WEBHOOK_TOKEN']}", data={"Email": "a@example.com"})
    answers = {"orders/paid": shopify, "orders/create": insales, "checkout.session.completed": paid, None: form}
    expected = {answer.get_json()["id"]: event for event, answer in answers.items()}
    auth = {"Authorization": "Bearer " + SECRETS["RELAY_ADMIN_TOKEN"]}
    listed = client.get("/admin/api/deliveries", headers=auth).get_json()["deliveries"]
    assert {row["id"]: row["event"] for row in listed} == expected
    shown = client.get(f"/admin/api/deliveries/{shopify.get_json()['id']}", headers=auth).get_json()
    assert shown["event"] == "orders/paid"
    env = {"RELAY_DATABASE_URL": settings.database_url}
    lines = relay_command("deliveries", env=env).stdout.splitlines()
    assert {line.split()[0]: line.split()[3] for line in lines} == {
        delivery_id: event or "-" for delivery_id, event in expected.items()
    }
    # The event as a filter: a list, and a replay (these wait as held: no upstream is set).
    paid_id = paid.get_json()["id"]
    chosen = client.get("/admin/api/deliveries?event=checkout.session.completed", headers=auth).get_json()
    assert [row["id"] for row in chosen["deliveries"]] == [paid_id]
    only = relay_command("deliveries", "--event", "orders/paid", "--status", "held", env=env).stdout.splitlines()
    assert [line.split()[0] for line in only] == [shopify.get_json()["id"]]
    dry = client.post("/admin/api/replay?event=orders/create&dry_run=1", headers=auth).get_json()
    assert dry["would_replay"] == 1 and dry["by_status"] == {"held": 1}
    assert dry["with_mappings_now"]["checked"] == 1
    told = relay_command("replay", "--event", "checkout.session.completed", "--dry-run", env=env)
    assert told.returncode == 0 and told.stdout.startswith("would replay 1 delivery: held 1"), told.stdout
    done = relay_command("replay", "--event", "checkout.session.completed", env=env)
    assert done.returncode == 0 and done.stdout.strip() == "replayed 1 delivery (held)", done.stdout + done.stderr
    assert client.post("/admin/api/replay?event=nothing-names-this", headers=auth).get_json() == {"replayed": 0}
    app.extensions["relay"]["store"].close()


def test_replay_by_ids_takes_the_failed_and_held_among_them_in_batches(store):
    """`replay_ids` (a replay chosen by event) replays the held and failed ones of the ids it is given, a batch
    a transaction, and leaves the others; a second replay finds none left to replay."""
    held = [_accept_numbered(store, "tilda", n, "held") for n in range(5)]
    queued = _accept_numbered(store, "tilda", 9, "queued")
    assert store.replay_ids([*held, queued, "0" * 32], to_status="queued", batch=2) == 5
    assert {store.get(delivery_id).status for delivery_id in held} == {"queued"}
    assert store.replay_ids(held, batch=2) == 0
