"""The baseline for the slow-upstream benchmark: forward inline, inside the request, as hand-written relays do."""

from __future__ import annotations

import os

import httpx
from flask import Flask, jsonify, request

app = Flask("naive")
client = httpx.Client(timeout=30)
UPSTREAM = os.environ["NAIVE_UPSTREAM_URL"]
TOKEN = os.environ.get("NAIVE_UPSTREAM_TOKEN", "")


@app.post("/hooks/<source>")
def hook(source: str):  # type: ignore[no-untyped-def]
    payload = request.get_json(force=True, silent=True) or {}
    email = str(payload.get("Email", "")).lower()
    body = {"token": TOKEN, "db_id": 1, "matching": "email", "email": email, "data": {"email": email}}
    answer = client.post(f"{UPSTREAM}/profiles/import", json=body)
    return jsonify({"status": "forwarded", "upstream": answer.status_code}), 202
