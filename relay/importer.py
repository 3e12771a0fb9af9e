"""`python -m relay import`: past webhooks from a file, taken as if their provider had sent them now.

For a site that used relay's mapping elsewhere, or lost webhooks before relay was there: a form builder's
export of its submissions (CSV, its columns named as the form's fields), or a log of bodies (JSON Lines, or
one JSON array). Each record is stored as a webhook of the source, de-duplicated as the hook does it (a
record imported twice, or one the provider also sent, is stored once), and the worker delivers it. The
operator runs it with the store's credentials, so nothing is authenticated; pings and what the mapping
ignores are counted and left out, as at the hook.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from relay.errors import RequestRejected
from relay.inbound import InboundRequest
from relay.intake import take_request
from relay.mapping.model import Source
from relay.settings import Settings
from relay.store import Store

__all__ = ["ImportedRecord", "format_of", "import_records", "read_records"]

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


@dataclass(frozen=True)
class ImportedRecord:
    """One record of the file: where it is (`line 3`, `row 3`, `item 3`), and its fields, or why it has none."""

    where: str
    fields: dict[str, Any] | None
    problem: str | None = None


def format_of(path: str, given: str | None) -> str:
    """The file's format: as given, else by its name's suffix (`.csv`, `.json`), else JSON Lines."""
    if given:
        return given
    suffix = Path(path).suffix.lower()
    return {".csv": "csv", ".json": "json"}.get(suffix, "jsonl")


def read_records(stream: TextIO, fmt: str) -> Iterator[ImportedRecord]:
    """The file's records, each an object (a CSV row's columns by their header), in the file's order. JSON
    Lines and CSV are read a line at a time, so a file larger than memory goes through; a JSON array is read
    whole."""
    if fmt == "csv":
        header = stream.readline()
        lines = itertools.chain([header], stream)
        rows = csv.DictReader(lines, dialect=_csv_dialect(header))
        for number, row in enumerate(rows, start=2):  # row 1 names the columns
            if None in row:
                yield ImportedRecord(f"row {number}", None, "more values than the header names columns")
            else:
                yield ImportedRecord(f"row {number}", {name: value for name, value in row.items() if name})
        return
    if fmt == "json":
        try:
            items = json.load(stream)
        except ValueError as exc:
            yield ImportedRecord("file", None, f"not JSON: {exc}")
            return
        if not isinstance(items, list):
            yield ImportedRecord("file", None, "a .json file holds one array of objects")
            return
        for number, item in enumerate(items, start=1):
            yield _record(f"item {number}", item)
        return
    for number, line in enumerate(stream, start=1):
        if line.strip():
            try:
                item = json.loads(line)
            except ValueError as exc:
                yield ImportedRecord(f"line {number}", None, f"not JSON: {exc}")
                continue
            yield _record(f"line {number}", item)


def _csv_dialect(header: str) -> type[csv.Dialect]:
    """The CSV's separator, read off its header row: a comma, or the semicolon of spreadsheets set to a locale
    whose decimal mark is the comma (Tilda's and Excel's exports in Russian), or a tab."""
    try:
        return csv.Sniffer().sniff(header, delimiters=",;\t")
    except csv.Error:  # one column: no separator to find
        return csv.excel


def _record(where: str, item: Any) -> ImportedRecord:
    if isinstance(item, dict):
        return ImportedRecord(where, item)
    return ImportedRecord(where, None, f"a {type(item).__name__}, not an object")


def _body(record: ImportedRecord, content_type: str, limit: int) -> tuple[bytes | None, str | None]:
    """The record as its provider would have posted it, or why it cannot be."""
    if record.fields is None:
        return None, record.problem
    if content_type.split(";")[0].strip().lower() != FORM:
        body = json.dumps(record.fields, ensure_ascii=False, separators=(",", ":")).encode()
    elif any(isinstance(value, (dict, list)) for value in record.fields.values()):
        return None, "a form body cannot carry nested values"
    else:
        body = urllib.parse.urlencode({k: "" if v is None else v for k, v in record.fields.items()}).encode()
    if len(body) > limit:
        return None, f"{len(body):,} bytes, over RELAY_MAX_BODY_BYTES ({limit:,})"
    return body, None


def import_records(
    records: Iterator[ImportedRecord],
    source: Source,
    *,
    settings: Settings,
    store: Store | None,
    content_type: str = JSON,
    headers: Mapping[str, str] | None = None,
    problems: TextIO | None = None,
) -> Counter[str]:
    """Store each record as a webhook of `source` (none with `store` None: a dry run, which counts what
    would be stored as `accepted`); the count of each outcome, `unreadable` for a record that is no object, or
    whose body relay refuses (each said on `problems` with where it is)."""
    counts: Counter[str] = Counter()
    for record in records:
        body, problem = _body(record, content_type, settings.max_body_bytes)
        if body is None:
            counts["unreadable"] += 1
            print(f"relay: {record.where}: {problem}", file=problems or sys.stderr)
            continue
        inbound = InboundRequest(source=source.name, body=body, content_type=content_type, headers=dict(headers or {}))
        try:
            outcome = take_request(source, inbound, settings=settings, store=store).outcome
        except RequestRejected as exc:
            counts["unreadable"] += 1
            print(f"relay: {record.where}: {exc.detail}", file=problems or sys.stderr)
            continue
        counts[outcome] += 1
    return counts
