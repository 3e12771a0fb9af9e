"""Every Prometheus metric relay emits, declared in this one place.

Labels are bounded: a source name, a status or an outcome code; never an id
or an address.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from flask import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from relay.store import Store

__all__ = ["attempt", "observe_ingress", "received", "render"]

REGISTRY = CollectorRegistry(auto_describe=True)

WEBHOOKS = Counter(
    "relay_webhooks_received_total",
    "Webhooks received, by source and outcome",
    ["source", "outcome"],
    registry=REGISTRY,
)
ATTEMPTS = Counter(
    "relay_delivery_attempts_total",
    "Upstream call attempts, by source and outcome",
    ["source", "outcome"],
    registry=REGISTRY,
)
INGRESS_LATENCY = Histogram(
    "relay_ingress_seconds",
    "Time to accept a webhook",
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
UPSTREAM_LATENCY = Histogram(
    "relay_upstream_seconds",
    "Duration of upstream calls",
    registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DELIVERIES = Gauge("relay_deliveries", "Deliveries in the store, by status", ["status"], registry=REGISTRY)
OLDEST_DUE = Gauge("relay_oldest_due_age_seconds", "Age of the oldest delivery that is due", registry=REGISTRY)


def received(source: str, outcome: str) -> None:
    WEBHOOKS.labels(source=source, outcome=outcome).inc()


def attempt(source: str, outcome: str, seconds: float) -> None:
    ATTEMPTS.labels(source=source, outcome=outcome).inc()
    UPSTREAM_LATENCY.observe(seconds)


def observe_ingress(seconds: float) -> None:
    INGRESS_LATENCY.observe(seconds)


def render(store: Store) -> Response:
    """The text exposition, with the queue gauges read from the store now."""
    from relay.store import STATUSES

    counts = store.counts()
    for status in STATUSES:
        DELIVERIES.labels(status=status).set(counts.get(status, 0))
    oldest = store.oldest_due()
    OLDEST_DUE.set(time.time() - oldest if oldest else 0)
    return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)
