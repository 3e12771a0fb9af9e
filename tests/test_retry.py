"""The retry policy: backoff with jitter, Retry-After clamped, budgets by count and age."""

from __future__ import annotations

import random

from relay.retry import SCHEDULE, next_attempt


def test_backoff_grows_with_jitter_and_reaches_three_days():
    """Delays follow the schedule within ±20%, and the defaults keep trying for over 3 days."""
    rng = random.Random(1)
    delays = [
        next_attempt(n, now=0, cycle_started_at=0, max_attempts=30, max_age=4 * 86400, rng=rng) for n in (1, 2, 3)
    ]
    for delay, step in zip(delays, SCHEDULE, strict=False):
        assert delay is not None and 0.8 * step <= delay <= 1.2 * step
    now, attempt = 0.0, 1
    while (when := next_attempt(attempt, now=now, cycle_started_at=0, max_attempts=30, max_age=4 * 86400)) is not None:
        now, attempt = when, attempt + 1
    assert 3 * 86400 < now <= 4 * 86400 and attempt < 30  # the 4-day age budget ends it first


def test_retry_after_is_clamped_and_budgets_end():
    """Retry-After is honoured between the step and twice it; attempts and age both end the cycle."""
    assert next_attempt(1, now=0, cycle_started_at=0, max_attempts=9, max_age=1e9, retry_after=7) == 7
    assert next_attempt(1, now=0, cycle_started_at=0, max_attempts=9, max_age=1e9, retry_after=1) == 5
    assert next_attempt(1, now=0, cycle_started_at=0, max_attempts=9, max_age=1e9, retry_after=3600) == 10
    assert next_attempt(9, now=0, cycle_started_at=0, max_attempts=9, max_age=1e9) is None
    assert next_attempt(1, now=100, cycle_started_at=0, max_attempts=9, max_age=100) is None


def test_upstream_rate_limiter_spaces_calls_and_pauses_after_429():
    """RELAY_UPSTREAM_RATE is shared by a process's threads; a 429 pauses them all."""
    import threading
    import time

    from relay.upstream.client import RateLimiter

    limiter = RateLimiter(50, burst=1)
    started = time.monotonic()
    threads = [threading.Thread(target=lambda: [limiter.acquire() for _ in range(5)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert 0.3 <= time.monotonic() - started < 2  # 20 calls at 50/s take about 0.4 s
    limiter.pause(0.5)
    paused = time.monotonic()
    limiter.acquire()
    assert time.monotonic() - paused >= 0.45
