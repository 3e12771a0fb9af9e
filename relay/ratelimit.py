"""Per-source request limits on the hook route, with the `limits` library.

Storage `memory://` counts per process; `redis://...` shares one count across
every process and node. A fixed window is one counter increment per request,
which keeps the check off the ingress hot path's profile.
"""

from __future__ import annotations

import time

from limits import parse, storage, strategies

__all__ = ["HookLimiter"]


class HookLimiter:
    def __init__(self, spec: str, storage_uri: str) -> None:
        self.limit = parse(spec)
        self.strategy = strategies.FixedWindowRateLimiter(storage.storage_from_string(storage_uri))
        self.spec = spec

    def retry_after(self, source: str) -> int | None:
        """None when `source` may proceed; else the seconds until its window resets."""
        if self.strategy.hit(self.limit, "hook", source):
            return None
        reset_at, _remaining = self.strategy.get_window_stats(self.limit, "hook", source)
        return max(1, int(reset_at - time.time() + 0.999))
