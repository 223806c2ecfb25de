"""Limits per download: connections within the per-host cap, its own token bucket, and its
fair share of a global bandwidth cap.

Under a global cap every running download gets its own bucket at a max-min fair share
(``policy.fairshare``), rebalanced twice a second, so a file on many connections cannot crowd
out one on a single connection, and what a slow file leaves unused goes to the others.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from ..config import DownloadConfig, ManagerConfig
from ..events import State
from ..policy.fairshare import estimate_demand, water_fill
from ..policy.ratelimit import TokenBucket

_REBALANCE_EVERY_S = 0.5


class TaskBucket(TokenBucket):
    """One download's bucket. It counts the bytes that passed and notes whether a connection
    had to wait, which tells the fair-share rebalance whether the download wants more."""

    def __init__(self, rate_bytes_per_s: float | None) -> None:
        super().__init__(rate_bytes_per_s)
        self.passed = 0
        self.waiting = 0  # connections parked in acquire() right now
        self.waited = False  # some connection had to wait since the last rebalance

    async def acquire(self, n: int) -> None:
        started = time.monotonic()
        self.waiting += 1
        try:
            await super().acquire(n)
        finally:
            self.waiting -= 1
        if time.monotonic() - started > 0.001:
            self.waited = True
        self.passed += n

    def wanted_more(self) -> bool:
        """A connection waited since the last call (or waits now, maybe for a large chunk)."""
        wanted, self.waited = self.waited or self.waiting > 0, False
        return wanted


class Shared(Protocol):
    """What the fair share reads and sets on a download (the manager's task record)."""

    state: State
    rate_limit: float | None  # the caller's cap for this download
    limiter: TaskBucket  # at the lower of rate_limit and the fair share
    share: float | None  # fair share of the global cap, while running under one
    passed_mark: int  # limiter.passed at the last measurement


def within_host_limit(dc: DownloadConfig, config: ManagerConfig) -> DownloadConfig:
    """``dc`` with no more connections per file than the manager allows per host."""
    per_file = min(dc.segments.max_connections, config.max_connections_per_host)
    dc = replace(dc, segments=replace(dc.segments, max_connections=per_file))
    if dc.segments.connections is not None:
        conns = min(dc.segments.connections, per_file)
        dc = replace(dc, segments=replace(dc.segments, connections=conns))
    return dc


def check_rate(rate_bytes_per_s: float | None) -> None:
    # Checked when called, not later inside a rebalance that a state change set off.
    if rate_bytes_per_s is not None and not (
        math.isfinite(rate_bytes_per_s) and rate_bytes_per_s > 0
    ):
        raise ValueError(
            f"rate_bytes_per_s must be a positive number or None, got {rate_bytes_per_s!r}"
        )


class FairShare:
    """The global cap (None: unlimited) and each running download's share of it."""

    def __init__(self, tasks: Mapping[str, Shared], rate_limit: float | None) -> None:
        self._tasks = tasks
        self.rate_limit = rate_limit
        self._rebalancer: asyncio.Task[None] | None = None
        self._measured_at = time.monotonic()
        self._closed = False

    def close(self) -> None:
        self._closed = True
        if self._rebalancer is not None:
            self._rebalancer.cancel()

    def set_limit(self, rate_bytes_per_s: float | None) -> None:
        self.rate_limit = rate_bytes_per_s
        self.rebalance()

    def running_changed(self, task: Shared) -> None:
        """``task`` started or stopped running: the shares change."""
        task.share = None  # until measured, a download is presumed to want a full share
        task.passed_mark = task.limiter.passed
        if self.rate_limit is not None:
            self.rebalance()
        elif task.limiter.rate_bytes_per_s != task.rate_limit:
            task.limiter.set_rate(task.rate_limit)

    def rebalance(self, *, measure: bool = False) -> None:
        """Set each download's bucket: its own cap, or under a global cap its max-min fair
        share; with ``measure``, first learn who used less than offered and did not wait."""
        running = [t for t in self._tasks.values() if t.state is State.RUNNING]
        cap = self.rate_limit
        if cap is None:
            # Only tasks still holding a share need their own cap back; touching every task on
            # every state change made a queue of n files cost O(n^2).
            for task in self._tasks.values():
                if task.share is not None or task.limiter.rate_bytes_per_s != task.rate_limit:
                    task.share = None
                    task.limiter.set_rate(task.rate_limit)
            return
        floor = cap / (4 * max(1, len(running)))
        now = time.monotonic()
        elapsed = now - self._measured_at
        if measure:
            self._measured_at = now
        demands: list[float | None] = []
        for task in running:
            demand: float | None = None
            if measure and elapsed > 0:
                used = (task.limiter.passed - task.passed_mark) / elapsed
                waited = task.limiter.wanted_more()
                demand = estimate_demand(used, task.share, waited=waited, floor=floor)
                task.passed_mark = task.limiter.passed
            if task.rate_limit is not None:
                demand = task.rate_limit if demand is None else min(demand, task.rate_limit)
            demands.append(demand)
        for task, share in zip(running, water_fill(cap, demands), strict=True):
            task.share = max(share, 1.0)
            task.limiter.set_rate(task.share)
        if running and self._rebalancer is None and not self._closed:
            self._rebalancer = asyncio.get_running_loop().create_task(
                self._rebalance_while_capped(), name="modelhaul-rebalance"
            )

    async def _rebalance_while_capped(self) -> None:
        self._measured_at = time.monotonic()
        try:
            while True:
                await asyncio.sleep(_REBALANCE_EVERY_S)
                if self.rate_limit is None or not any(
                    t.state is State.RUNNING for t in self._tasks.values()
                ):
                    return
                self.rebalance(measure=True)
        finally:
            self._rebalancer = None
