"""TokenBucket on virtual time: a fake clock and a fake sleep, so no test sleeps for real.

``VirtualTime`` replaces ``asyncio.sleep`` inside the ratelimit module only. A sleeper parks on
a future; ``advance_to`` wakes sleepers in time order, moving the clock to each wake-up, and lets
the woken tasks run until they park again.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import pytest

from modelhaul.policy import ratelimit
from modelhaul.policy.ratelimit import TokenBucket

RESOLUTION_S = 1e-6


class VirtualTime:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        assert delay >= 0, delay
        self.sleeps.append(delay)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A real clock always moves on while a task sleeps; a float clock at t = 100 cannot move
        # by 1e-15, so give sleeps the resolution of a real timer instead of spinning forever.
        wake = self.now + max(delay, RESOLUTION_S)
        heapq.heappush(self._heap, (wake, next(self._seq), fut))
        await fut

    async def settle(self) -> None:
        # Woken tasks only run bucket arithmetic before parking again: a few loop turns suffice.
        for _ in range(10):
            await asyncio.sleep(0)

    async def advance_to(self, t: float) -> None:
        await self.settle()
        while self._heap and self._heap[0][0] <= t:
            wake, _, fut = heapq.heappop(self._heap)
            self.now = max(self.now, wake)
            fut.set_result(None)
            await self.settle()
        self.now = max(self.now, t)
        await self.settle()

    async def run(self, until: Callable[[], bool], limit_s: float = 1000.0) -> None:
        """Advance from wake-up to wake-up until ``until()`` holds."""
        await self.settle()
        for _ in range(100_000):
            if until():
                return
            assert self._heap, "nothing left to wake, but not done"
            assert self._heap[0][0] <= limit_s, "virtual time ran away"
            await self.advance_to(self._heap[0][0])
        pytest.fail("too many wake-ups without finishing")


@pytest.fixture
def vt(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    vt = VirtualTime()
    monkeypatch.setattr(ratelimit, "asyncio", SimpleNamespace(sleep=vt.sleep))
    return vt


def spawn(coro: Awaitable[None]) -> asyncio.Task[None]:
    return asyncio.ensure_future(coro)


# ---------------------------------------------------------------- the nowait arithmetic


def test_reserve_and_wait_table() -> None:
    now = [0.0]
    b = TokenBucket(100.0, burst_s=0.5, clock=lambda: now[0])
    assert b.rate_bytes_per_s == 100.0
    mark = b.reserve_nowait(50)
    assert mark == 50
    assert b.wait_s_nowait(mark) == pytest.approx(0.5)  # nothing banked at the start
    now[0] = 0.25
    assert b.wait_s_nowait(mark) == pytest.approx(0.25)
    now[0] = 0.5
    assert b.wait_s_nowait(mark) == 0.0
    now[0] = 0.75
    assert b.wait_s_nowait(mark) == 0.0  # never negative
    mark2 = b.reserve_nowait(100)
    assert mark2 == 150
    assert b.wait_s_nowait(mark2) == pytest.approx(0.75)


def test_idle_bucket_banks_only_a_burst() -> None:
    now = [0.0]
    b = TokenBucket(100.0, burst_s=0.5, clock=lambda: now[0])
    now[0] = 1000.0  # idle for a long time
    assert b.wait_s_nowait(b.reserve_nowait(50)) == 0.0  # a burst (50 B) is free
    m = b.reserve_nowait(100)
    assert b.wait_s_nowait(m) == pytest.approx(1.0)  # the rest at the rate, not from the bank


def test_unlimited_never_waits() -> None:
    now = [0.0]
    b = TokenBucket(None, clock=lambda: now[0])
    assert b.rate_bytes_per_s is None
    for n in (1, 10**9, 10**12):
        assert b.wait_s_nowait(b.reserve_nowait(n)) == 0.0


@pytest.mark.parametrize("rate", [0, 0.0, -1, -1e9, float("nan"), float("-inf")])
def test_invalid_rates_raise(rate: float) -> None:
    with pytest.raises(ValueError, match="rate_bytes_per_s"):
        TokenBucket(rate)
    b = TokenBucket(1000.0)
    with pytest.raises(ValueError, match="rate_bytes_per_s"):
        b.set_rate(rate)
    assert b.rate_bytes_per_s == 1000.0  # a refused change leaves the old rate


# ---------------------------------------------------------------- acquire on virtual time


async def test_unlimited_acquire_returns_without_sleeping(vt: VirtualTime) -> None:
    b = TokenBucket(None, clock=vt.clock)
    for _ in range(100):
        await b.acquire(10**9)
    assert vt.sleeps == []
    assert vt.now == 0.0


async def test_acquire_waits_exactly_for_its_bytes(vt: VirtualTime) -> None:
    b = TokenBucket(1000.0, clock=vt.clock)
    done: list[float] = []

    async def one() -> None:
        await b.acquire(2500)
        done.append(vt.now)

    spawn(one())
    await vt.run(lambda: bool(done))
    assert done[0] == pytest.approx(2.5)
    assert max(vt.sleeps) <= 0.2 + 1e-12  # sleeps in slices so rate changes land quickly


async def consume(
    b: TokenBucket,
    vt: VirtualTime,
    log: list[tuple[float, int]],
    stop_s: float,
    rng: random.Random,
    max_chunk: int,
) -> None:
    while vt.now < stop_s:
        n = rng.randint(1, max_chunk)
        await b.acquire(n)
        log.append((vt.now, n))


def passed_by(log: list[tuple[float, int]], t: float) -> int:
    return sum(n for when, n in log if when <= t + 1e-9)


@pytest.mark.parametrize("seed", range(5))
async def test_cap_holds_from_the_start(vt: VirtualTime, seed: int) -> None:
    rate = 10_000.0
    b = TokenBucket(rate, burst_s=0.5, clock=vt.clock)
    rng = random.Random(seed)
    log: list[tuple[float, int]] = []
    tasks = [spawn(consume(b, vt, log, 5.0, rng, 3000)) for _ in range(4)]
    await vt.run(lambda: all(t.done() for t in tasks))
    for t in tasks:
        t.result()
    # Nothing is banked at the start, so by any moment at most rate * t has passed: the cap
    # holds from the first byte, not only after a burst.
    for when, _ in log:
        assert passed_by(log, when) <= rate * when + 1e-6, when
    assert passed_by(log, 1.0) <= rate * 1.0 + 1e-6
    # And the cap is reached, not undershot: busy consumers get about the full rate.
    assert passed_by(log, 5.0) >= rate * 5.0 - 4 * 3000


async def test_cap_after_idle_allows_only_a_burst(vt: VirtualTime) -> None:
    rate, burst_s = 1000.0, 0.5
    b = TokenBucket(rate, burst_s=burst_s, clock=vt.clock)
    await vt.advance_to(100.0)  # idle for 100 s
    log: list[tuple[float, int]] = []
    tasks = [spawn(consume(b, vt, log, 103.0, random.Random(i), 200)) for i in range(3)]
    await vt.run(lambda: all(t.done() for t in tasks))
    for when, _ in log:
        assert passed_by(log, when) <= rate * (when - 100.0) + rate * burst_s + 1e-6, when
    assert passed_by(log, 103.0) >= rate * 3.0


async def test_waiters_are_served_first_come_first_served(vt: VirtualTime) -> None:
    b = TokenBucket(100.0, clock=vt.clock)
    finished: list[tuple[str, float]] = []

    async def waiter(name: str, n: int) -> None:
        await b.acquire(n)
        finished.append((name, vt.now))

    sizes = [("big", 500), ("small-1", 1), ("small-2", 1), ("medium", 50), ("small-3", 1)]
    tasks = []
    for name, n in sizes:
        tasks.append(spawn(waiter(name, n)))
        await vt.settle()  # each one reserves before the next arrives
    await vt.run(lambda: all(t.done() for t in tasks))
    assert [name for name, _ in finished] == [name for name, _ in sizes]
    # Each is paid when the cumulative total up to it is: small ones do not jump the queue.
    marks = list(itertools.accumulate(n for _, n in sizes))
    for (_, when), mark in zip(finished, marks, strict=True):
        assert when == pytest.approx(mark / 100.0, abs=1e-5)


async def test_raising_the_rate_reaches_an_existing_waiter_within_a_slice(
    vt: VirtualTime,
) -> None:
    b = TokenBucket(1000.0, clock=vt.clock)
    done: list[float] = []

    async def one() -> None:
        await b.acquire(10_000)  # 10 s at the old rate
        done.append(vt.now)

    spawn(one())
    await vt.advance_to(1.05)
    assert not done
    b.set_rate(1_000_000.0)
    await vt.run(lambda: bool(done))
    # Paid 1050 B so far; the other 8950 B take 9 ms at the new rate, after at most one slice.
    assert 1.05 < done[0] <= 1.05 + 0.2 + 8950 / 1e6 + 1e-9


async def test_lowering_the_rate_slows_an_existing_waiter(vt: VirtualTime) -> None:
    b = TokenBucket(10_000.0, clock=vt.clock)
    done: list[float] = []

    async def one() -> None:
        await b.acquire(10_000)  # 1 s at the old rate
        done.append(vt.now)

    spawn(one())
    await vt.advance_to(0.5)
    b.set_rate(1000.0)  # 5000 B paid, 5000 B left at 1000 B/s
    await vt.run(lambda: bool(done))
    assert done[0] == pytest.approx(5.5, abs=1e-6)


async def test_removing_the_limit_releases_waiters_within_a_slice(vt: VirtualTime) -> None:
    b = TokenBucket(10.0, clock=vt.clock)
    done: list[float] = []

    async def one(n: int) -> None:
        await b.acquire(n)
        done.append(vt.now)

    tasks = [spawn(one(1000)) for _ in range(3)]
    await vt.advance_to(2.0)
    b.set_rate(None)
    assert b.rate_bytes_per_s is None
    await vt.run(lambda: all(t.done() for t in tasks))
    assert len(done) == 3
    assert all(2.0 < when <= 2.2 + 1e-9 for when in done)


async def test_limit_again_after_unlimited_holds_from_that_moment(vt: VirtualTime) -> None:
    b = TokenBucket(1000.0, clock=vt.clock)
    await b.acquire(0)
    b.set_rate(None)
    for _ in range(50):
        await b.acquire(10**6)  # free while unlimited
    assert vt.now == 0.0
    await vt.advance_to(10.0)
    b.set_rate(1000.0)
    log: list[tuple[float, int]] = []
    task = spawn(consume(b, vt, log, 12.0, random.Random(7), 100))
    await vt.run(task.done)
    task.result()
    for when, _ in log:
        assert passed_by(log, when) <= 1000.0 * (when - 10.0) + 500.0 + 1e-6, when
    assert passed_by(log, 12.0) >= 1900


async def test_set_rate_after_idle_does_not_release_the_idle_time(vt: VirtualTime) -> None:
    b = TokenBucket(1000.0, burst_s=0.5, clock=vt.clock)
    await vt.advance_to(60.0)  # a minute idle at 1000 B/s
    b.set_rate(2000.0)
    log: list[tuple[float, int]] = []
    task = spawn(consume(b, vt, log, 62.0, random.Random(3), 100))
    await vt.run(task.done)
    for when, _ in log:
        # At most a burst at the new rate (1000 B) ahead, not 60 s of banked allowance.
        assert passed_by(log, when) <= 2000.0 * (when - 60.0) + 1000.0 + 1e-6, when


async def test_cancelled_acquire_gives_its_booking_back() -> None:
    """A pause mid-wait must not leave the next caller waiting for bytes that never moved."""
    bucket = TokenBucket(1024 * 1024, burst_s=0.0)
    waiter = asyncio.create_task(bucket.acquire(8 * 1024 * 1024))
    await asyncio.sleep(0)  # let it book and start waiting
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    mark = bucket.reserve_nowait(64 * 1024)
    assert bucket.wait_s_nowait(mark) < 0.5
