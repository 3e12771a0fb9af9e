"""How long an event's delivery waits before the worker takes it: a mapping's `delay:` section.

The ingress stores such a webhook at once (the provider has its answer in milliseconds) and makes it due
later, so that what the worker fetches then says how things ended. Ecwid sends `unfinished_order.created` as
the shopper leaves for the payment page and advises waiting 5 to 10 minutes for the order's own hook: a
shopper who paid meanwhile is no abandoned checkout.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from relay.mapping import envrefs
from relay.mapping.expressions import search
from relay.mapping.model import MAX_DELAY_SECONDS, DelaySpec, Source
from relay.mapping.transforms import parse_when, scalar_text

__all__ = ["Latest", "LatestHolder", "Wait", "delay_spec", "latest_key", "seconds_of", "wait_for"]

# Given a delivery's latest key, the id of a later delivery that holds it now (this one is passed over), or None.
LatestHolder = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Wait:
    """Seconds a delivery waits, and why a setting's value was not taken (its default was), if it was not."""

    seconds: int = 0
    problem: str | None = None


@dataclass(frozen=True)
class Latest:
    """A delayed event's `latest_by` key (a digest: no payload text), the expression it was read by, and where
    the payload's `ordered_by` value puts it among the deliveries of that key (None: by arrival)."""

    key: str
    by: str
    order: float | None = None


def delay_spec(source: Source, event: str | None) -> DelaySpec | None:
    """The source's delay entry that names `event` (the schema lets an event be in one only), or None."""
    return next((spec for spec in source.delays if event in spec.events), None)


def wait_for(source: Source, event: str | None, env: Mapping[str, str]) -> Wait:
    """How long a webhook of `event` waits before the worker takes it (0: at once)."""
    spec = delay_spec(source, event)
    return seconds_of(spec, env) if spec is not None else Wait()


def latest_key(source: Source, data: Any, event: str | None) -> Latest | None:
    """The key under which a delayed event's deliveries supersede each other (`latest_by`), a digest of the
    expression and the payload's value; None when the event has no such key or the payload gives no value (the
    delivery then goes on its own)."""
    spec = delay_spec(source, event)
    if spec is None or spec.latest_by is None:
        return None
    value = scalar_text(search(spec.latest_by, data))
    if not value:
        return None
    key = hashlib.sha256(f"{spec.latest_by}\0{value}".encode()).hexdigest()
    order = _order_of(search(spec.ordered_by, data)) if spec.ordered_by else None
    return Latest(key, spec.latest_by, order)


def _order_of(value: Any) -> float | None:
    """An `ordered_by` value as a number to compare: a number as it is, a date-time as its POSIX time (one
    without a zone read as UTC); None for anything else, which leaves the delivery ordered by its arrival."""
    text = scalar_text(value)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return number if math.isfinite(number) else None
    when = parse_when(text)
    if when is None:
        return None
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


def seconds_of(spec: DelaySpec, env: Mapping[str, str]) -> Wait:
    """A delay's seconds under these settings. A reference's value that is no whole number of seconds from 0
    to a day leaves the default in force (the webhook is taken all the same), and says so; the value is not
    repeated, in case the setting is not what the file meant."""
    if isinstance(spec.seconds, int):
        return Wait(spec.seconds)
    ref = envrefs.parse_ref(spec.seconds)
    if ref is None or ref.default is None:  # the schema takes neither
        raise ValueError(f"delay seconds {spec.seconds!r} is not a ${{NAME:-default}} reference")
    value = ref.resolve(env) or ref.default
    try:
        seconds = int(value.strip())
    except ValueError:
        seconds = -1
    if 0 <= seconds <= MAX_DELAY_SECONDS:
        return Wait(seconds)
    return Wait(
        int(ref.default),
        f"{ref.name} is not a whole number of seconds from 0 to {MAX_DELAY_SECONDS}; "
        f"waiting its default, {ref.default} s",
    )
