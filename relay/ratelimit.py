"""Per-source limits on the webhooks a hook takes.

Only webhooks that passed authentication count: forged requests must not spend a source's
allowance and have its provider's own webhooks answered 429.

`memory://` counts per process in a fixed window (a dict and a lock: the
`limits` library's memory storage starts a timer thread per key and window,
too dear for every request). `redis://...` uses the `limits` library, so one
count is shared by every process and node. When that storage does not answer
(within half a second), requests go through: the limit protects relay, and a
webhook is worth more than the count.
"""

from __future__ import annotations

import logging
import threading
import time

from limits import parse, storage, strategies
from limits.errors import StorageError

from relay.logs import Throttle

__all__ = ["HookLimiter"]

log = logging.getLogger("relay.ratelimit")


class HookLimiter:
    def __init__(self, spec: str, storage_uri: str) -> None:
        self.limit = parse(spec)
        self.spec = spec
        self.window = float(self.limit.get_expiry())
        self.shared = (
            None
            if storage_uri.startswith("memory://")
            else strategies.FixedWindowRateLimiter(
                storage.storage_from_string(
                    storage_uri, wrap_exceptions=True, socket_timeout=0.5, socket_connect_timeout=0.5
                )
            )
        )
        self.warnings = Throttle(60)  # one line a minute, not one a webhook
        self.counts: dict[str, tuple[float, int]] = {}
        self.lock = threading.Lock()

    def retry_after(self, source: str) -> int | None:
        """None when `source` may proceed; else the seconds until its window resets."""
        if self.shared is not None:
            try:
                if self.shared.hit(self.limit, "hook", source):
                    return None
                reset_at, _remaining = self.shared.get_window_stats(self.limit, "hook", source)
            except StorageError as exc:
                if self.warnings.due():
                    log.warning("rate limit storage unavailable; not limiting", extra={"error": str(exc)[:200]})
                return None
            return max(1, int(reset_at - time.time() + 0.999))
        now = time.time()
        start = now - now % self.window
        with self.lock:
            window, count = self.counts.get(source, (start, 0))
            if window != start:
                window, count = start, 0
            if count >= self.limit.amount:
                return max(1, int(start + self.window - now + 0.999))
            self.counts[source] = (window, count + 1)
        return None
