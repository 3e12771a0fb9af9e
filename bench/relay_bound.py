"""Relay with parts of its ingress switched off, for `bench/ingress.py --bounds` only; never a way to run relay.

It bounds what the rest of the path costs: how near relay could come to the
bare endpoint if the committed row (`RELAY_BENCH_WITHOUT=store`) and the log
line (`store,log`) cost nothing.
"""

from __future__ import annotations

import logging
import os

from app import app
from relay.store import Accepted, new_id

_WITHOUT = set(os.environ.get("RELAY_BENCH_WITHOUT", "").split(","))
if "store" in _WITHOUT:
    app.extensions["relay"]["store"].accept = lambda _inbound, **_kwargs: Accepted(new_id(), False)
if "log" in _WITHOUT:
    logging.getLogger("relay.ingress").disabled = True

__all__ = ["app"]
