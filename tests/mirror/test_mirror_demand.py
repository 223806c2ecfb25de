"""A client's Range for bytes not yet fetched moves them to the front of the engine's queue
(issue 16): the scheduler's ``Demand`` hook, and a mirror reader of a cold file's tail."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from fakehub import FakeHub
from modelhaul.policy.ranges import RangeSet
from modelhaul.policy.segments import Demand, SegmentScheduler
from server_harness import ServerThread, service_config

MiB = 1024 * 1024


def test_a_wanted_range_is_handed_out_before_plan_order() -> None:
    demand = Demand()
    woken: list[int] = []
    done = RangeSet()
    demand.attach(done, lambda: woken.append(1))
    sched = SegmentScheduler(100, done, chunk_bytes=10, min_steal_bytes=5, demand=demand)
    first = sched.next_nowait()
    assert first is not None and (first.start, first.end) == (0, 10)
    demand.want(73, 80)
    assert woken, "idle connections are told"
    seg = sched.next_nowait()
    assert seg is not None and (seg.start, seg.end) == (73, 83)
    done.add(73, 83)
    sched.release(seg)
    assert demand.final_end(75) == 83 and demand.final_end(90) == 90
    seg = sched.next_nowait()
    assert seg is not None and (seg.start, seg.end) == (10, 20), "then plan order again"


def test_a_wanted_range_inside_a_long_segment_in_flight_splits_it() -> None:
    demand = Demand()
    sched = SegmentScheduler(
        100, RangeSet(), chunk_bytes=100, min_steal_bytes=5, steal_after_s=1e9, demand=demand
    )
    whole = sched.next_nowait()
    assert whole is not None and (whole.start, whole.end) == (0, 100)
    demand.want(60, 70)
    tail = sched.next_nowait()
    assert tail is not None and (tail.start, tail.end) == (60, 100)
    assert whole.end == 60
    demand.want(62, 64)  # 2 bytes past a segment that starts there: it is soon enough
    assert sched.next_nowait() is None


def two_connection_mirror(hub: FakeHub, tmp_path: Path, chunk_bytes: int) -> ServerThread:
    """A mirror whose engine fetches with two connections of ``chunk_bytes`` chunks."""
    config = service_config(tmp_path, hf_endpoint=hub.endpoint)
    segments = replace(config.download.segments, connections=2, chunk_bytes=chunk_bytes)
    return ServerThread(replace(config, download=replace(config.download, segments=segments)))


@pytest.fixture
def slow_mirror(hub: FakeHub, tmp_path: Path) -> Iterator[ServerThread]:
    """Two connections of 4 MiB chunks: plan order is slow and predictable."""
    with two_connection_mirror(hub, tmp_path, 4 * MiB) as server:
        yield server


def read_range(
    c: httpx.Client, url: str, start: int, end: int, upstream: Callable[[], int]
) -> tuple[float, int, bytes]:
    """GET bytes [start, end) of ``url``: (seconds to the first body bytes, upstream bytes
    fetched by then, the body)."""
    began = time.monotonic()
    with c.stream("GET", url, headers={"Range": f"bytes={start}-{end - 1}"}) as resp:
        assert resp.status_code == 206
        chunks = resp.iter_raw()
        first = next(chunks)
        first_at = time.monotonic() - began
        upstream_then = upstream()
        return first_at, upstream_then, first + b"".join(chunks)


def test_a_range_near_the_end_of_a_cold_file_comes_first(
    hub: FakeHub, slow_mirror: ServerThread
) -> None:
    big = random.Random(21).randbytes(64 * MiB)
    sha = hashlib.sha256(big).hexdigest()
    hub.add_repo("org/tail", {"model.safetensors": big})
    hub.set_speed_limit(4 * MiB)  # per connection: plan order reaches the tail after ~7 s
    start, end = len(big) - 8 * MiB, len(big) - 7 * MiB
    url = "/hf/org/tail/resolve/main/model.safetensors"
    with httpx.Client(base_url=slow_mirror.url, timeout=60) as c:
        first_at, upstream_then, body = read_range(c, url, start, end, lambda: hub.cdn_bytes(sha))
    assert body == big[start:end]

    # Plan order would have fetched the 56 MiB before the range first.
    assert upstream_then < 32 * MiB, f"{upstream_then} bytes fetched before the range's first"
    assert first_at < 20, f"first byte after {first_at:.1f} s"


def test_with_every_connection_busy_a_want_shortens_the_longest_segment() -> None:
    demand = Demand()
    now = [0.0]
    sched = SegmentScheduler(
        300,
        RangeSet(),
        chunk_bytes=100,
        min_steal_bytes=10,
        steal_after_s=1.0,
        clock=lambda: now[0],
        demand=demand,
    )
    busy = sched.next_nowait()
    assert busy is not None and (busy.start, busy.end) == (0, 100)
    demand.want(250, 260)
    assert not sched.make_room_nowait(), "too young to judge"
    now[0] = 5.0
    busy.pos = 20
    assert sched.make_room_nowait()
    assert busy.end == 30, "it stops min_steal past what it has"
    seg = sched.next_nowait()
    assert seg is not None and (seg.start, seg.end) == (250, 300)
    assert not sched.make_room_nowait(), "nothing wanted is free any more"
    nxt = sched.next_nowait()
    assert nxt is not None and (nxt.start, nxt.end) == (30, 130), "the cut rest comes next"


@pytest.fixture
def busy_mirror(hub: FakeHub, tmp_path: Path) -> Iterator[ServerThread]:
    """Two connections of 32 MiB chunks: each busy for 16 s at 2 MiB/s."""
    with two_connection_mirror(hub, tmp_path, 32 * MiB) as server:
        yield server


def test_a_range_asked_mid_flight_does_not_wait_for_a_whole_chunk(
    hub: FakeHub, busy_mirror: ServerThread
) -> None:
    big = b"".join(random.Random(40 + i).randbytes(16 * MiB) for i in range(6))
    sha = hashlib.sha256(big).hexdigest()
    hub.add_repo("org/busy", {"model.safetensors": big})
    hub.set_speed_limit(2 * MiB)
    url = "/hf/org/busy/resolve/main/model.safetensors"
    start, end = len(big) - 6 * MiB, len(big) - 5 * MiB
    with (
        httpx.Client(base_url=busy_mirror.url, timeout=60) as c,
        c.stream("GET", url) as whole,  # the flight, both connections busy
    ):
        next(whole.iter_raw())
        # The first request (8 MiB) done, both connections are on 32 MiB chunks.
        hub.wait_bytes(sha, 20 * MiB, timeout_s=30, site="cdn")
        first_at, upstream_then, body = read_range(c, url, start, end, lambda: hub.cdn_bytes(sha))
    assert body == big[start:end]

    # Without room made, both 32 MiB chunks (64 MiB, 16 s) come before the range.
    assert upstream_then < 40 * MiB, f"{upstream_then} bytes fetched before the range's first"
    assert first_at < 12, f"first byte after {first_at:.1f} s"
