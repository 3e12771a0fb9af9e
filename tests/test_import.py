"""`relay import`: past webhooks from a file, stored as a source's and delivered by the worker.

The command runs in its own process against a SQLite store, as an operator runs it; the worker then sends
what it stored to the sandbox upstream on loopback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from relay.importer import read_records
from relay.store import Store
from relay.worker import Worker

from .conftest import MAPPINGS, drain, quick_retry_settings, relay_command

LEADS = (
    "\ufeffName,Email,Phone,tranid,formid\n"  # a spreadsheet's byte order mark, before the first column's name
    "Иван Петров,Ivan@Example.com,8 (912) 345-67-89,101:1,form1\n"
    "Anna Lee,anna@example.com,,101:2,form1\n"
    "Broken,b@example.com,,101:3,form1,one value too many\n"
)


def _import(
    tmp_path: Path, *args: str, stdin: str | None = None, upstream: str = ""
) -> tuple[dict[str, Any], str, int]:
    """`relay import <args>` on the test's store; with `upstream`, its deliveries are queued, else held."""
    env = {
        "PATH": "/usr/bin:/bin",
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
        **({"RELAY_UPSTREAM_URL": upstream} if upstream else {}),
    }
    result = relay_command("import", *args, env=env, stdin=stdin)
    summary = json.loads(result.stdout) if result.stdout.strip() else {}
    return summary, result.stderr, result.returncode


def _deliver_all(tmp_path: Path, sandbox) -> list[str]:  # type: ignore[no-untyped-def]
    """Every stored delivery, sent to the sandbox by a worker on the same store: their statuses."""
    settings = quick_retry_settings(tmp_path, sandbox)
    store = Store(settings.database_url)
    worker = Worker(settings, store=store)
    try:
        stored = [delivery.id for delivery in store.list_deliveries(limit=100)]
        for delivery_id in stored:
            drain(store, worker, delivery_id)  # each drain takes the oldest due: all are taken by the end
        return sorted(delivery.status for delivery in store.list_deliveries(limit=100))
    finally:
        worker.stop()
        store.close()


def test_a_csv_export_of_form_leads_is_stored_once_and_delivered(tmp_path, sandbox):
    leads = tmp_path / "leads.csv"
    leads.write_text(LEADS, encoding="utf-8")
    form = ("--content-type", "application/x-www-form-urlencoded")
    summary, problems, code = _import(tmp_path, "--source", "tilda", str(leads), *form, upstream=sandbox.api_url)
    assert code == 1 and "row 4: more values than the header names columns" in problems
    assert summary == {
        "source": "tilda",
        "dry_run": False,
        "records": 3,
        "accepted": 2,
        "duplicate": 0,
        "ignored": 0,
        "ping": 0,
        "unreadable": 1,
    }
    again, _problems, _code = _import(tmp_path, "--source", "tilda", str(leads), *form)
    assert (again["accepted"], again["duplicate"]) == (0, 2)  # by Tilda's tranid, as at the hook
    assert _deliver_all(tmp_path, sandbox) == ["delivered", "delivered"]
    profiles = {profile.fields["email"]: profile.fields for profile in sandbox.sandbox.profiles.values()}
    assert sorted(profiles) == ["anna@example.com", "ivan@example.com"]
    assert profiles["ivan@example.com"]["phones"] == ["+79123456789"]
    assert profiles["ivan@example.com"]["_fname"] == "Иван"


def test_json_lines_take_a_topic_header_and_a_ping_or_an_ignored_event_is_counted_not_stored(tmp_path, sandbox):
    order = json.loads((MAPPINGS / "examples/shopify/orders-paid-live.json").read_text(encoding="utf-8"))
    lines = "\n".join([json.dumps(order), "", json.dumps({**order, "id": order["id"] + 1})]) + "\n"
    header = ("--header", "X-Shopify-Topic: orders/paid")
    summary, problems, code = _import(
        tmp_path, "--source", "shopify", "-", *header, stdin=lines, upstream=sandbox.api_url
    )
    assert (code, summary["accepted"], summary["unreadable"]) == (0, 2, 0), problems
    assert _deliver_all(tmp_path, sandbox) == ["delivered", "delivered"]
    [profile] = sandbox.sandbox.profiles.values()
    assert profile.fields["orders_count"] == 2
    ping = json.dumps({"test": "test"})  # what Tilda sends when its webhook is saved
    summary, _problems, code = _import(tmp_path, "--source", "tilda", "-", stdin=ping + "\n")
    assert (code, summary["ping"], summary["accepted"]) == (0, 1, 0)
    ignored = json.dumps({**order, "id": 1, "customer": None, "email": None, "contact_email": None, "phone": None})
    summary, _problems, _code = _import(tmp_path, "--source", "shopify", "-", *header, stdin=ignored)
    assert (summary["ignored"], summary["accepted"]) == (1, 0)


def test_a_dry_run_stores_nothing_and_mistakes_are_said(tmp_path):
    items = tmp_path / "past.json"
    items.write_text(json.dumps([{"Email": "a@example.com", "tranid": "1"}, ["not", "an", "object"]]), "utf-8")
    summary, problems, code = _import(tmp_path, "--source", "tilda", str(items), "--dry-run")
    assert (code, summary["dry_run"], summary["accepted"], summary["unreadable"]) == (1, True, 1, 1)
    assert "item 2: a list, not an object" in problems
    assert not (tmp_path / "relay.db").exists()
    _summary, problems, code = _import(tmp_path, "--source", "nope", str(items))
    assert code == 1 and "no source 'nope'" in problems
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("Name,Email\nJosé,jose@example.com\n".encode("latin-1"))
    _summary, problems, code = _import(tmp_path, "--source", "tilda", str(latin))
    assert code == 1 and "is not UTF-8 text; save the export as UTF-8" in problems, problems
    nested = json.dumps({"Email": "n@example.com", "payment": {"amount": 5}})
    huge = json.dumps({"Email": "h@example.com", "Comments": "x" * (1024 * 1024)})
    form = ("--content-type", "application/x-www-form-urlencoded", "--dry-run")
    summary, problems, code = _import(tmp_path, "--source", "tilda", "-", *form, stdin=f"{nested}\n{huge}\n")
    assert (code, summary["unreadable"]) == (1, 2)
    assert "line 1: a form body cannot carry nested values" in problems
    assert "line 2: 1,048,607 bytes, over RELAY_MAX_BODY_BYTES (1,048,576)" in problems, problems
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"Email": "a@example.com"}\n{broken\n', encoding="utf-8")
    summary, problems, code = _import(tmp_path, "--source", "tilda", str(bad))
    assert (code, summary["accepted"], summary["unreadable"]) == (1, 1, 1) and "line 2: not JSON" in problems


def test_the_topic_a_hook_url_names_is_given_with_query(tmp_path):
    """InSales names an order's event by the hook address it posts to (`&topic=orders/create`): the import
    takes the same parameter, and the stored delivery names its event as one the hook took would."""
    order = (MAPPINGS / "examples/insales/orders-create.json").read_text(encoding="utf-8")
    record = json.dumps(json.loads(order))
    summary, problems, code = _import(
        tmp_path, "--source", "insales", "-", "--query", "topic=orders/create", stdin=record
    )
    assert (code, summary["accepted"]) == (0, 1), problems
    store = Store(f"sqlite:///{tmp_path / 'relay.db'}")
    try:
        [delivery] = store.list_deliveries(limit=10)
        assert delivery.headers == {"X-Relay-Event": "orders/create"}
    finally:
        store.close()
    _summary, problems, code = _import(tmp_path, "--source", "insales", "-", "--query", "topic", stdin=record)
    assert code == 1 and "--query 'topic' must be 'name=value'" in problems


def test_a_spreadsheets_semicolon_separated_export_is_read_by_its_header(tmp_path, sandbox):
    """Spreadsheets set to a locale whose decimal mark is the comma (Russian, German) separate CSV columns
    with semicolons; a file of one column has no separator at all."""
    leads = tmp_path / "leads.csv"
    leads.write_text("Name;Email;Phone;tranid\nОльга Смирнова;olga@example.com;8 916 123-45-67;7:1\n", "utf-8")
    summary, problems, _code = _import(tmp_path, "--source", "tilda", str(leads), upstream=sandbox.api_url)
    assert summary["accepted"] == 1, problems
    single = tmp_path / "emails.csv"
    single.write_text("Email\nsolo@example.com\n", encoding="utf-8")
    summary, problems, _code = _import(tmp_path, "--source", "tilda", str(single), upstream=sandbox.api_url)
    assert summary["accepted"] == 1, problems
    assert _deliver_all(tmp_path, sandbox) == ["delivered", "delivered"]
    profiles = {profile.fields["email"]: profile.fields for profile in sandbox.sandbox.profiles.values()}
    assert profiles["olga@example.com"]["phones"] == ["+79161234567"] and "solo@example.com" in profiles


class _EndlessLines:
    """A text stream of `first` lines, then one that fails: a file larger than memory, as far as a reader that
    takes it whole can tell."""

    def __init__(self, first: list[str]) -> None:
        self.lines = iter(first)

    def readline(self) -> str:
        return next(self.lines)

    def __iter__(self) -> _EndlessLines:
        return self

    def __next__(self) -> str:
        line = next(self.lines, None)
        if line is None:
            raise AssertionError("read past the records asked for")
        return line


def test_json_lines_and_csv_are_read_a_record_at_a_time():
    """A log of bodies larger than memory goes through: each record is read when it is taken (a 99 MB file of
    200,000 records took 54 MB of memory, against 358 MB read whole)."""
    lines = read_records(_EndlessLines(['{"Email": "a@example.com"}\n', '{"Email": "b@example.com"}\n']), "jsonl")
    assert [next(lines).fields, next(lines).fields] == [{"Email": "a@example.com"}, {"Email": "b@example.com"}]
    rows = read_records(_EndlessLines(["Email;Name\n", "c@example.com;C\n"]), "csv")
    assert next(rows).fields == {"Email": "c@example.com", "Name": "C"}


def test_a_landing_page_builders_lead_export_goes_through_its_webhooks_mapping(tmp_path, sandbox):
    """Unbounce's leads export names its columns as its webhook's `data.json` does (email, name, ip_address...);
    imported as JSON, each row is read at the top level, as a webhook with its own field mapping is."""
    export = tmp_path / "unbounce-leads.csv"
    export.write_text(
        "date_submitted,time_submitted,page_uuid,variant,page_url,ip_address,name,email,newsletter_opt_in\n"
        "2026-11-02,10:04 AM UTC,3f6b0a52-8d1e-4c47-9a2b-6e1f0c9d7a41,a,https://get.example.com/,203.0.114.9,"
        "Lea Martin,Lea@Example.com,yes\n",
        encoding="utf-8",
    )
    summary, problems, _code = _import(tmp_path, "--source", "unbounce", str(export), upstream=sandbox.api_url)
    assert summary["accepted"] == 1, problems
    assert _deliver_all(tmp_path, sandbox) == ["delivered"]
    [request] = sandbox.sandbox.requests
    data = request["body"]["data"]
    assert (data["email"], data["_fname"], data["_ip"]) == ("lea@example.com", "Lea", "203.0.114.9")
    assert data["subscriptions"][0]["status"] == "subscribed"
