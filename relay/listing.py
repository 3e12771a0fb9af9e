"""Deliveries chosen by what only their stored request says: the event it names, the person it names.

The store pages through its deliveries by the filters it can answer itself (status, source, time, and a
first look at the calls' text); each delivery of a page is then read here, newest first, until enough
are found.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from relay.mapping.model import Source
from relay.pipeline import stored_event
from relay.store import Delivery, Store

__all__ = ["chosen_deliveries", "every_delivery", "iter_chosen", "naming_event"]

_PAGE = 500


def chosen_deliveries(
    store: Store,
    keep: Callable[[Delivery], bool],
    *,
    limit: int,
    before: str | None = None,
    naming: tuple[str, str] | None = None,
    replayable: bool = False,
    **filters: Any,
) -> list[Delivery]:
    """The newest `limit` deliveries (before `before`, matching `filters`) that `keep` takes."""
    found = iter_chosen(store, keep, before=before, naming=naming, replayable=replayable, **filters)
    return list(itertools.islice(found, limit))


def iter_chosen(
    store: Store,
    keep: Callable[[Delivery], bool],
    *,
    before: str | None = None,
    naming: tuple[str, str] | None = None,
    replayable: bool = False,
    **filters: Any,
) -> Iterator[Delivery]:
    """`chosen_deliveries` one by one, a page read at a time: for going through all of them."""
    while True:
        page = store.list_deliveries(limit=_PAGE, before=before, naming=naming, replayable=replayable, **filters)
        yield from (delivery for delivery in page if keep(delivery))
        if len(page) < _PAGE:
            return
        before = page[-1].id


def every_delivery(_delivery: Delivery) -> bool:
    """The choice that takes them all: `iter_chosen` as the store's own filters page."""
    return True


def naming_event(sources: Mapping[str, Source], event: str) -> Callable[[Delivery], bool]:
    """Whether a delivery's request names `event`, as its source's mapping reads it."""

    def names(delivery: Delivery) -> bool:
        source = sources.get(delivery.source)
        return source is not None and stored_event(source, delivery.inbound()) == event

    return names
