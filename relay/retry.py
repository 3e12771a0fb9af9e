"""When to try a delivery again: a pure function of the attempt and the clock."""

from __future__ import annotations

import random

__all__ = ["SCHEDULE", "next_attempt"]

# Seconds before try n+1 after n failed tries; the last step repeats.
SCHEDULE: tuple[float, ...] = (5, 30, 120, 300, 900, 1800, 3600, 7200, 14400, 21600)
OVERLOAD_FLOOR = 30.0  # a 429 or a timeout waits at least this long
JITTER = 0.2


def next_attempt(
    attempt_no: int,
    *,
    now: float,
    cycle_started_at: float,
    max_attempts: int,
    max_age: float,
    retry_after: float | None = None,
    overloaded: bool = False,
    schedule: tuple[float, ...] = SCHEDULE,
    rng: random.Random | None = None,
) -> float | None:
    """The time of the next try after failed try number `attempt_no` (1-based), or None.

    None means the retry budget is spent: `max_attempts` tries made, or the
    next try would fall after `max_age` seconds from the start of the cycle.
    `Retry-After` is honoured, but clamped to between the step and twice it,
    so an upstream cannot park a delivery for a day or make relay hammer it.
    """
    if attempt_no >= max_attempts:
        return None
    step = schedule[min(attempt_no - 1, len(schedule) - 1)]
    if overloaded:
        step = max(step, min(OVERLOAD_FLOOR, schedule[-1]))
    delay = step * (1 + (rng or random).uniform(-JITTER, JITTER))
    if retry_after is not None and retry_after > 0:
        delay = min(max(retry_after, step), 2 * step)
    when = now + delay
    if when - cycle_started_at > max_age:
        return None
    return when
