"""A bandwidth token bucket (bytes per second), changeable while running.

This limits *bytes over time*; it has nothing to do with how many connections run (that is the
manager's concurrency limiter). Callers reserve bytes first and then wait their turn, so the
waiting order is first come, first served and no connection starves. Rate changes rebase the
allowance so that already-waiting callers are paid at the new rate within a fraction of a second.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable


def _check_rate(rate: float | None) -> None:
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate_bytes_per_s must be a positive finite number or None, got {rate!r}")


# Sleep in slices so a rate change reaches waiters quickly.
_MAX_SLICE_S = 0.2


class TokenBucket:
    """Cumulative-allowance bucket: ``allowed(t) = base + rate * (t - t0)``, capped by a burst."""

    def __init__(
        self,
        rate_bytes_per_s: float | None,
        *,
        burst_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_rate(rate_bytes_per_s)
        self._clock = clock
        self._rate = rate_bytes_per_s
        self._burst_s = burst_s
        self._t0 = clock()
        self._reserved = 0.0
        # Start with nothing banked: the cap holds from the first byte.
        self._base = 0.0

    @property
    def rate_bytes_per_s(self) -> float | None:
        return self._rate

    def set_rate(self, rate_bytes_per_s: float | None) -> None:
        """Change the rate now; ``None`` removes the limit."""
        _check_rate(rate_bytes_per_s)
        now = self._clock()
        self._base = self._allowed(now) if self._rate else self._reserved
        self._t0 = now
        self._rate = rate_bytes_per_s

    def _allowed(self, now: float) -> float:
        assert self._rate is not None
        return self._base + self._rate * (now - self._t0)

    def reserve_nowait(self, n: int) -> float:
        """Book ``n`` bytes; returns the cumulative mark the caller must wait for."""
        if self._rate is None:
            return 0.0
        now = self._clock()
        burst = self._rate * self._burst_s
        # An idle bucket banks at most a burst's worth.
        if self._allowed(now) > self._reserved + burst:
            self._base = self._reserved + burst
            self._t0 = now
        self._reserved += n
        return self._reserved

    def wait_s_nowait(self, mark: float) -> float:
        """Seconds until ``mark`` is allowed at the current rate (0 when unlimited)."""
        if self._rate is None:
            return 0.0
        return max(0.0, (mark - self._allowed(self._clock())) / self._rate)

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` more bytes may pass."""
        if self._rate is None:
            return
        mark = self.reserve_nowait(n)
        try:
            while True:
                wait = self.wait_s_nowait(mark)
                if wait <= 0:
                    return
                await asyncio.sleep(min(wait, _MAX_SLICE_S))
        except asyncio.CancelledError:
            # Bytes that will never move must not delay whoever asks next.
            self._reserved -= n
            raise
