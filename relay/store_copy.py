"""`python -m relay copy-store --to URL`: the store relay uses now, copied into another one.

For the move from the embedded SQLite store to PostgreSQL, when relay grows to several web nodes and
workers: the deliveries still held or failed go with it, and so do the keys that keep a provider's retry a
duplicate and an order counted once, which a new, empty store would not have. Stop relay first (a worker
finishes what it holds on SIGTERM), copy, point RELAY_DATABASE_URL at the new store, start again.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from relay.errors import StoreUnavailable, first_line
from relay.settings import Settings
from relay.store import Store

__all__ = ["cmd_copy_store", "copy_store"]

COPY_BATCH = 1000  # rows a transaction of the new store


def copy_store(source: Store, target: Store, *, batch: int = COPY_BATCH) -> Counter[str]:
    """Copy every row of `source` into `target`, which must hold no delivery; the rows copied, by table.

    Raises:
        ValueError: the target already holds deliveries (a copy would mix two stores' ids and keys).
    """
    held = sum(target.counts().values())
    if held:
        raise ValueError(f"it already holds {held:,} deliveries; copy into a store that holds none")
    copied: Counter[str] = Counter()
    for table, rows in source.table_rows(batch):
        target.add_rows(table, rows)
        copied[table] += len(rows)
    target.rows_added()
    return copied


def cmd_copy_store(args: argparse.Namespace, settings: Settings) -> int:
    try:
        to = make_url(args.to)
    except ArgumentError:  # not shown: it may hold a password
        print("relay: --to is no database URL (sqlite:///path or postgresql://user:password@host/db)", file=sys.stderr)
        return 1
    shown = to.render_as_string(hide_password=True)
    if to == make_url(settings.database_url):
        print(f"relay: --to names the store relay uses now ({shown})", file=sys.stderr)
        return 1
    source = Store(settings.database_url)
    try:
        try:
            target = Store(args.to)
        except StoreUnavailable as exc:
            print(f"relay: the store at {shown} failed: {exc.reason}", file=sys.stderr)
            return 1
        try:
            copied = copy_store(source, target)
        except ValueError as exc:
            print(f"relay: the store at {shown}: {exc}", file=sys.stderr)
            return 1
        except (StoreUnavailable, SQLAlchemyError) as exc:
            reason = exc.reason if isinstance(exc, StoreUnavailable) else first_line(exc)
            print(
                f"relay: the copy into {shown} stopped: {reason}; empty that store (or make a new one) before "
                "copying again",
                file=sys.stderr,
            )
            return 1
        finally:
            target.close()
    finally:
        source.close()
    print(json.dumps({"to": shown, "copied": dict(copied)}))
    print(f"relay: copied; set RELAY_DATABASE_URL to {shown} and start relay again", file=sys.stderr)
    return 0
