"""Every Prometheus metric relay emits, declared in this one place.

Labels are bounded: a source name, a status or an outcome code; never an id
or an address.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from relay.store import Store

__all__ = [
    "CONTENT_TYPE",
    "attempt",
    "fetched",
    "mapping_files_broken",
    "observe_ingress",
    "passed_over",
    "purged",
    "received",
    "render",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST  # of what render() gives

# With PROMETHEUS_MULTIPROC_DIR set (gunicorn, `relay run`), every process writes its
# counters to that folder and a scrape merges them; otherwise they live in memory.
REGISTRY = CollectorRegistry(auto_describe=True)
# Merged multi-process counters carry no `_created` series; without this, a process serving its own
# (a standalone worker, tests) would add one beside every counter and histogram.
disable_created_metrics()  # type: ignore[no-untyped-call]

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
FETCHES = Counter(
    "relay_fetches_total",
    "Documents fetched from a provider's API for a mapping's `fetch:`, by source and outcome",
    ["source", "outcome"],
    registry=REGISTRY,
)
FETCH_LATENCY = Histogram(
    "relay_fetch_seconds",
    "Duration of fetches from providers' APIs",
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
PASSED_OVER = Counter(
    "relay_rules_passed_over_total",
    "Delivered webhooks that passed a rule with `once` over (an earlier delivery took its key), by source and rule",
    ["source", "rule"],
    registry=REGISTRY,
)
PURGED = Counter(
    "relay_purged_total",
    "Rows deleted by the retention purge: delivered deliveries past RELAY_KEEP_DELIVERED, expired dedup and once keys",
    ["kind"],
    registry=REGISTRY,
)
# Set by each delivery worker when it looks at its mapping folder after a change. A scrape of several
# processes shows the largest of the live ones.
MAPPING_FILES_BROKEN = Gauge(
    "relay_mapping_files_broken",
    "Mapping files a delivery worker could not load when they last changed (it keeps their last good version)",
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
STORE_GAUGES = {
    "relay_store_up": "1 when the store answered this scrape's queries, 0 when it did not",
    "relay_deliveries": "Deliveries in the store, by status",
    "relay_deliveries_kept": "Failed deliveries a mapping rule with `keep` holds back on purpose (among the failed)",
    "relay_queue_depth": "Deliveries waiting to be sent (queued or retrying)",
    "relay_oldest_due_age_seconds": "Age of the oldest delivery that is due now",
    "relay_last_received_timestamp_seconds": "When the source's newest stored webhook arrived (Unix time)",
    "relay_store_disk_free_bytes": "Free space where the SQLite store is (absent on PostgreSQL)",
    "relay_housekeeping_done_timestamp_seconds": (
        "When the worker's housekeeping task (purge, keying) last ended a round that did not fail (Unix time)"
    ),
}
DECLARED = {
    "relay_webhooks_received_total",
    "relay_delivery_attempts_total",
    "relay_ingress_seconds",
    "relay_upstream_seconds",
    "relay_fetches_total",
    "relay_fetch_seconds",
    "relay_purged_total",
    "relay_rules_passed_over_total",
    "relay_mapping_files_broken",
    *STORE_GAUGES,
}


# A labelled child looked up once: `labels()` takes a lock and builds a key on every call. The
# cache stays small because the labels are bounded.
@functools.lru_cache(maxsize=1024)
def _child(counter: Counter, source: str, outcome: str) -> Counter:
    return counter.labels(source=source, outcome=outcome)


def received(source: str, outcome: str) -> None:
    _child(WEBHOOKS, source, outcome).inc()


def attempt(source: str, outcome: str, seconds: float) -> None:
    _child(ATTEMPTS, source, outcome).inc()
    UPSTREAM_LATENCY.observe(seconds)


def fetched(source: str, outcome: str, seconds: float) -> None:
    _child(FETCHES, source, outcome).inc()
    FETCH_LATENCY.observe(seconds)


def passed_over(source: str, rule: str) -> None:
    PASSED_OVER.labels(source=source, rule=rule).inc()


def purged(kind: str, count: int) -> None:
    if count:
        PURGED.labels(kind=kind).inc(count)


def mapping_files_broken(count: int) -> None:
    MAPPING_FILES_BROKEN.set(count)


def observe_ingress(seconds: float) -> None:
    INGRESS_LATENCY.observe(seconds)


class _StoreCollector:
    """Gauges read from the store at scrape time, so they are right whichever process serves."""

    def __init__(self, store: Store, sources: Iterable[str]) -> None:
        self.store = store
        self.sources = sources

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from relay.store import STATUSES

        try:
            counts = self.store.counts()
            kept = self.store.kept_count()
            oldest = self.store.oldest_due()
            newest = self.store.last_received(self.sources)
            housekeeping = self.store.housekeeping_done()
        except Exception:  # noqa: BLE001 - the counters still matter most while the store is away
            logging.getLogger("relay.metrics").warning("store gauges left out: the store did not answer")
            yield GaugeMetricFamily("relay_store_up", STORE_GAUGES["relay_store_up"], value=0)
            return
        yield GaugeMetricFamily("relay_store_up", STORE_GAUGES["relay_store_up"], value=1)
        by_status = GaugeMetricFamily("relay_deliveries", STORE_GAUGES["relay_deliveries"], labels=["status"])
        for status in STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily("relay_deliveries_kept", STORE_GAUGES["relay_deliveries_kept"], value=kept)
        yield GaugeMetricFamily(
            "relay_queue_depth",
            STORE_GAUGES["relay_queue_depth"],
            value=counts.get("queued", 0) + counts.get("retrying", 0),
        )
        yield GaugeMetricFamily(
            "relay_oldest_due_age_seconds",
            STORE_GAUGES["relay_oldest_due_age_seconds"],
            value=time.time() - oldest if oldest else 0,
        )
        # From the store rather than a counter: a restart empties the counters, and a source that has gone
        # quiet would then have no series at all to alert on.
        yield _labelled("relay_last_received_timestamp_seconds", "source", newest)
        # From the store too: whichever worker process ran the round, and a purge that has failed since the
        # last restart still shows how long ago one went through.
        yield _labelled("relay_housekeeping_done_timestamp_seconds", "task", housekeeping)
        free = self.store.disk_free_bytes()
        if free is not None:
            yield GaugeMetricFamily(
                "relay_store_disk_free_bytes", STORE_GAUGES["relay_store_disk_free_bytes"], value=free
            )


def _labelled(name: str, label: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    """A store gauge with one label, a series for each of `values`, in the label's order."""
    family = GaugeMetricFamily(name, STORE_GAUGES[name], labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def render(store: Store, sources: Iterable[str]) -> bytes:
    """The text exposition (of type CONTENT_TYPE): counters of every process, gauges from the store
    (`sources`: the mapping files' names, which bound the source label)."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    scrape = CollectorRegistry()
    scrape.register(_StoreCollector(store, sources))
    return generate_latest(registry) + generate_latest(scrape)
