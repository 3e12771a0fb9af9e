"""A second baseline for the ingress benchmark: the bare endpoint plus the least a durable answer needs.

It parses JSON like `bare_app`, then commits the raw body to SQLite (WAL, `synchronous=NORMAL`, as relay's
store) before it answers 202: one INSERT a request on the thread's own connection, with no de-duplication,
no grouping of commits and nothing else. Relay against it shows what relay adds on top of the durable
write that its promise needs, where the issue's ratio against `bare_app` counts that write too.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

from flask import Flask, jsonify, request

app = Flask("durable")
_PATH = os.environ["BENCH_DURABLE_DB"]
_local = threading.local()


def _connection() -> sqlite3.Connection:
    connection = getattr(_local, "connection", None)
    if connection is None:
        connection = sqlite3.connect(_PATH, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=10000")
        connection.execute("CREATE TABLE IF NOT EXISTS hooks (source TEXT, received_at REAL, body BLOB)")
        _local.connection = connection
    return connection


@app.post("/hooks/<source>")
def hook(source: str):  # type: ignore[no-untyped-def]
    body = request.get_data()
    payload = request.get_json(force=True, silent=True)
    if payload is None:
        return jsonify({"error": "unparsable"}), 400
    _connection().execute("INSERT INTO hooks VALUES (?, ?, ?)", (source, time.time(), body))  # autocommit
    return jsonify({"status": "accepted", "source": source}), 202
