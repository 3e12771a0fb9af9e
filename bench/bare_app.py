"""The baseline for the ingress benchmark: a Flask endpoint that only parses JSON and answers 202."""

from __future__ import annotations

from flask import Flask, jsonify, request

app = Flask("bare")


@app.post("/hooks/<source>")
def hook(source: str):  # type: ignore[no-untyped-def]
    payload = request.get_json(force=True, silent=True)
    if payload is None:
        return jsonify({"error": "unparsable"}), 400
    return jsonify({"status": "accepted", "source": source}), 202
