"""Splitting one bandwidth cap among running downloads: max-min fairness by water-filling.

A shared token bucket is first come, first served per chunk, so a download on eight
connections takes eight times the bandwidth of one on a single connection. The manager gives
each download its own bucket at the share computed here instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# A download counts as held back by something else (a slow origin, its own cap) when it used
# less than this fraction of its share without ever waiting for the bucket.
MODEST_USE = 0.7
# Such a download may still grow this much before the next rebalance.
HEADROOM = 1.5


def water_fill(total: float, demands: Sequence[float | None]) -> list[float]:
    """Shares of ``total``: nobody gets more than it demands (``None``: no limit of its own),
    and what the modest leave is split evenly among the rest.

    Fill the smallest demands first; each gets ``min(demand, remaining / still_waiting)``.

    Example::

        water_fill(9, [1, None, None]) == [1, 4, 4]
        water_fill(9, [5, None, None]) == [3, 3, 3]

    Raises:
        ValueError: ``total`` or a demand is negative.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total!r}")
    if any(d is not None and d < 0 for d in demands):
        raise ValueError(f"demands must be >= 0 or None, got {list(demands)!r}")
    shares = [0.0] * len(demands)
    order = sorted(range(len(demands)), key=lambda i: _demand_key(demands[i]))
    left = float(total)
    for done, i in enumerate(order):
        even = left / (len(order) - done)
        demand = demands[i]
        shares[i] = even if demand is None else min(demand, even)
        left -= shares[i]
    return shares


def estimate_demand(
    used_bytes_per_s: float, share: float | None, *, waited: bool, floor: float
) -> float | None:
    """What a download would take if offered more: ``None`` (as much as it can get) when it
    had to wait for its bucket or used most of its share; otherwise what it used, with
    headroom to grow, and never below ``floor``.

    A download that has no share yet (just started) is assumed to want everything.
    """
    if share is None or waited or used_bytes_per_s >= MODEST_USE * share:
        return None
    return max(floor, used_bytes_per_s * HEADROOM)


def _demand_key(demand: float | None) -> float:
    return math.inf if demand is None else demand
