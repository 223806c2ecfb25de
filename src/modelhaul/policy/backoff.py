"""Retry delays: a pure function from attempt number to seconds, plus Retry-After parsing."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def backoff_delay_s(
    attempt: int,
    *,
    initial_s: float = 1.0,
    factor: float = 2.0,
    max_s: float = 60.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``attempt`` (0 for the first retry), "equal jitter".

    ``d = min(max_s, initial_s * factor**attempt)``; the delay is ``d/2 + U(0, d/2)``. Half of
    the delay is fixed, so with ``factor >= 2`` successive waits keep growing until ``d`` reaches
    ``max_s`` (the jitter never undoes the growth); from there every wait lies in
    ``[max_s/2, max_s]``, while concurrent clients still spread out.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    d = min(max_s, initial_s)
    if initial_s > 0 and factor > 1 and max_s > initial_s:
        # Compare in log space so that no factor or attempt number can overflow a float.
        capped = attempt * math.log(factor) >= math.log(max_s / initial_s)
        d = max_s if capped else initial_s * factor**attempt
    return d / 2 + rand() * (d / 2)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent/bad.

    >>> parse_retry_after("120")
    120.0
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        # Very long digit strings are just "a long time"; int() would refuse them.
        return float(min(int(value[:12]) if len(value) <= 12 else 24 * 3600, 24 * 3600))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, min((when - current).total_seconds(), 24 * 3600.0))


def retry_wait_s(attempt: int, retry_after_s: float | None, *, max_s: float, **kw: float) -> float:
    """The wait before the next attempt: the server's Retry-After wins when it asks for longer."""
    delay = backoff_delay_s(attempt, max_s=max_s, **kw)  # type: ignore[arg-type]
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max(max_s, retry_after_s)))
    return delay
