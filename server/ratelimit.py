"""Per-key request rate limit: a sliding one-minute window per principal, in memory (one API process)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from pubmind.errors import RateLimited

WINDOW_SECONDS = 60.0


class RateLimiter:
    """At most ``per_minute`` requests in any 60 s window for each key; ``check`` raises RateLimited."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be >= 1, got {per_minute}")
        self.per_minute = per_minute
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        now = self._clock()
        with self._lock:
            q = self._hits.setdefault(key, deque())
            while q and q[0] <= now - WINDOW_SECONDS:
                q.popleft()
            if len(q) >= self.per_minute:
                retry = max(1, math.ceil(q[0] + WINDOW_SECONDS - now))
                err = RateLimited(f"rate limit exceeded for API key {key!r}: {self.per_minute} requests per "
                                  f"minute (settings.server.rate_limit_per_minute); retry in {retry}s")
                err.retry_after = retry  # type: ignore[attr-defined]  # sent as Retry-After
                raise err
            q.append(now)
            if len(self._hits) > 10_000:  # forget idle keys
                for k in [k for k, v in self._hits.items() if not v or v[-1] <= now - WINDOW_SECONDS]:
                    del self._hits[k]
