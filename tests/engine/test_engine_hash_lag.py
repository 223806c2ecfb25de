"""While the SHA-256 trails the completed prefix, a download shifts CPU towards it: the receive
threads leave it one CPU (hash_cpu_lag_bytes), fewer receives run (hash_recv_lag_bytes), or
receives far past the hashed bytes wait for it (hash_window_bytes). All are undone when the lag
is gone or the receives end.

To make the hash trail on purpose, the hash threads are kept busy reading FIFOs nobody writes
yet (HashGate); the gate opens when the mechanism is seen engaged, so the download finishes.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import blob, sha
from helpers import download_config as config
from modelhaul.config import MiB
from modelhaul.disk.hashing import PrefixHasher, sha256_file_async
from modelhaul.engine import stages
from modelhaul.engine.cpus import RECEIVER_CPUS, ReceiverCpus
from modelhaul.engine.downloader import Downloader
from modelhaul.engine.hashlag import must_wait_for_hash, next_receive_cap
from modelhaul.errors import ModelhaulError
from origin import Fault, Origin

# disk.hashing's pool runs this many hashes at once: keeping all busy stalls the prefix hash.
_HASH_THREADS = 4
CPUS = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
needs_few_cpus = pytest.mark.skipif(
    not 2 <= len(CPUS) <= 4, reason="the CPU is left to the hash on machines with 2-4 CPUs"
)


class HashGate:
    """Keeps every hash thread blocked on a FIFO until ``open``."""

    def __init__(self, root: Path) -> None:
        self.fifos = [root / f"gate{i}" for i in range(_HASH_THREADS)]
        for f in self.fifos:
            os.mkfifo(f)
        self.jobs: list[asyncio.Future[str]] = []
        self._opened = False

    def close_all(self) -> None:
        self.jobs = [asyncio.ensure_future(sha256_file_async(f)) for f in self.fifos]

    def open(self) -> None:
        """Let the hash threads go (from any thread; a writer's open waits for its reader)."""
        if self._opened:
            return
        self._opened = True

        def release() -> None:
            for f in self.fifos:
                os.close(os.open(f, os.O_WRONLY))

        threading.Thread(target=release, daemon=True).start()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[HashGate]:
    g = HashGate(tmp_path)
    yield g
    g.open()


@pytest.fixture
def seen() -> Iterator[list[tuple[str, object]]]:
    """The lag stages a download passed, each with what the test looked at right then."""
    out: list[tuple[str, object]] = []
    yield out
    stages.stage_hook = None


def _masks() -> dict[int, set[int]]:
    masks = {}
    for tid in RECEIVER_CPUS.thread_ids():
        try:
            masks[tid] = os.sched_getaffinity(tid)
        except ProcessLookupError:
            continue
    return masks


def _only(**setting: int) -> dict[str, int | None]:
    """Download settings with every answer to a trailing hash off but ``setting``."""
    off: dict[str, int | None] = dict.fromkeys(
        ("hash_cpu_lag_bytes", "hash_recv_lag_bytes", "hash_window_bytes")
    )
    return {**off, **setting}


def _watch_holds(seen: list[tuple[str, object]], let_go: Callable[[], None], *at: str) -> None:
    """Note every hold of the hash window in ``seen``; ``let_go`` of a stalled hash at the
    stages ``at`` and at "hashing" (where the window never engaged: the download must end)."""

    def hook(name: str) -> None:
        if name == "receive_window_held":
            seen.append((name, None))
        if name in (*at, "hashing"):
            let_go()

    stages.stage_hook = hook


async def _download(origin: Origin, dest: Path, gate: HashGate | None, **cfg: object) -> None:
    """48 MiB through 4 connections, with every hash thread kept busy (``gate``) or not."""
    data = blob(48 * MiB, seed=21)
    origin.add_file("big.bin", data)
    # 4 connections x 16 MiB/s: about 0.75 s of receiving, several ticks with the hash stalled.
    origin.set_default("big.bin", Fault(rate_bytes_per_s=16 * MiB))
    if gate is not None:
        gate.close_all()
    async with Downloader(config(connections=4, **cfg), state_dir=dest.parent / "st") as dl:
        result = await asyncio.wait_for(
            dl.download(origin.url("big.bin"), dest, sha256=sha(data)), 60
        )
    assert result.sha256 == sha(data)
    if gate is not None:
        await asyncio.wait_for(asyncio.gather(*gate.jobs), 10)


class HashHold:
    """Holds every prefix hash on its thread before each span until ``release``: the hash
    runs (``on_thread``) but stands still, as one starved of CPU."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._go = threading.Event()
        self._go.set()
        original = PrefixHasher._hash_span

        def held(hasher: PrefixHasher, view: memoryview, start: int, end: int) -> int:
            self._go.wait(30)
            return original(hasher, view, start, end)

        monkeypatch.setattr(PrefixHasher, "_hash_span", held)

    def arm(self) -> None:
        self._go.clear()

    def release(self) -> None:
        self._go.set()


@pytest.fixture
def hold(monkeypatch: pytest.MonkeyPatch) -> Iterator[HashHold]:
    h = HashHold(monkeypatch)
    yield h
    h.release()


@needs_few_cpus
async def test_receive_threads_leave_a_cpu_to_a_trailing_hash_and_get_it_back(
    origin: Origin, tmp_path: Path, gate: HashGate, seen: list[tuple[str, object]]
) -> None:
    def hook(name: str) -> None:
        if name.startswith("hash_cpu"):
            seen.append((name, _masks()))
        if name in ("hash_cpu_held", "hashing"):  # "hashing": it never engaged, finish anyway
            gate.open()

    stages.stage_hook = hook
    await _download(origin, tmp_path / "big.bin", gate, hash_cpu_lag_bytes=1 * MiB)
    names = [name for name, _ in seen]
    assert names[0] == "hash_cpu_held" and names[-1] == "hash_cpu_released", names
    held = seen[0][1]
    assert isinstance(held, dict) and held, "no receive thread was seen"
    narrow = CPUS - {max(CPUS)}
    assert all(mask == narrow for mask in held.values()), held
    # Given back: every receive thread may run anywhere again.
    assert all(mask == CPUS for mask in _masks().values()), _masks()
    assert not RECEIVER_CPUS.held


async def test_without_the_setting_the_cpus_are_left_alone(
    origin: Origin, tmp_path: Path, gate: HashGate, seen: list[tuple[str, object]]
) -> None:
    stages.stage_hook = lambda name: seen.append((name, None))
    gate.open()  # nothing engages to open it
    await _download(origin, tmp_path / "big.bin", gate, **_only())
    assert not [name for name, _ in seen if "cpu" in name or "cap" in name or "window" in name]


async def test_fewer_receives_run_while_the_hash_trails_and_all_again_after(
    origin: Origin, tmp_path: Path, gate: HashGate, seen: list[tuple[str, object]]
) -> None:
    def hook(name: str) -> None:
        if name.startswith("receive_"):
            seen.append((name, None))
        if name in ("receive_held", "hashing"):  # "hashing": it never engaged, finish anyway
            gate.open()

    stages.stage_hook = hook
    await _download(
        origin, tmp_path / "big.bin", gate, hash_cpu_lag_bytes=None, hash_recv_lag_bytes=1 * MiB
    )
    names = [name for name, _ in seen]
    assert names and names[0] == "receive_cap_set" and names[-1] == "receive_cap_lifted", names
    # A receive waited for its turn: the cap held connections back.
    assert "receive_held" in names, names


@needs_few_cpus
def test_a_thread_started_while_held_is_narrowed_and_every_hold_is_counted() -> None:
    cpus = ReceiverCpus()
    with ThreadPoolExecutor(max_workers=2, initializer=cpus.register) as pool:
        first = pool.submit(threading.get_native_id).result(timeout=10)
        assert cpus.hold() and cpus.hold()
        narrow = CPUS - {max(CPUS)}
        assert os.sched_getaffinity(first) == narrow
        # A second thread, started while held (both busy at once, so the pool starts it).
        both = threading.Barrier(2, timeout=10)

        def meet() -> int:
            both.wait()
            return threading.get_native_id()

        tids = {f.result(timeout=10) for f in [pool.submit(meet), pool.submit(meet)]}
        assert len(tids) == 2
        assert all(os.sched_getaffinity(t) == narrow for t in tids)
        cpus.release()  # one hold left
        assert all(os.sched_getaffinity(t) == narrow for t in tids)
        cpus.release()
        assert all(os.sched_getaffinity(t) == CPUS for t in tids)
        assert not cpus.held


def test_more_cpus_than_the_bound_hold_nothing() -> None:
    cpus = ReceiverCpus(max_cpus=len(CPUS) - 1)
    assert not cpus.hold()
    assert not cpus.held


def test_the_receive_cap_halves_while_the_hash_trails_and_doubles_back_to_none() -> None:
    lag = 64 * MiB
    assert next_receive_cap(None, 16, 10 * MiB, 0, lag) is None  # no lag: no cap
    assert next_receive_cap(None, 16, 100 * MiB, 90 * MiB, lag) == 8  # half the connections
    assert next_receive_cap(8, 16, 100 * MiB, 100 * MiB, lag) == 4  # not shrinking: halved
    assert next_receive_cap(2, 16, 500 * MiB, 400 * MiB, lag) == 1
    assert next_receive_cap(1, 16, 500 * MiB, 500 * MiB, lag) == 1  # never below one
    assert next_receive_cap(4, 16, 40 * MiB, 30 * MiB, lag) == 4  # between half and whole: kept
    assert next_receive_cap(4, 16, 10 * MiB, 40 * MiB, lag) == 8  # under half: doubled
    assert next_receive_cap(8, 16, 10 * MiB, 20 * MiB, lag) is None  # every connection again


def test_a_lag_the_hash_is_clearing_on_its_own_holds_nothing_back() -> None:
    # The prefix jumped (a slow chunk completed): the lag is high but falls tick by tick.
    lag = 64 * MiB
    assert next_receive_cap(None, 16, 900 * MiB, 1000 * MiB, lag) is None
    assert next_receive_cap(4, 16, 900 * MiB, 1000 * MiB, lag) == 4  # a cap set stays


async def test_receives_far_past_a_trailing_hash_wait_for_it(
    origin: Origin, tmp_path: Path, hold: HashHold, seen: list[tuple[str, object]]
) -> None:
    _watch_holds(seen, hold.release, "receive_window_held")
    hold.arm()
    await _download(origin, tmp_path / "big.bin", None, **_only(hash_window_bytes=4 * MiB))
    # The hash stood still at 0 on its thread while the prefix grew past 4 MiB: a receive
    # further on waited (and went on once released: the download completed and verified).
    assert ("receive_window_held", None) in seen


async def test_a_hash_waiting_for_a_thread_holds_no_receive(
    origin: Origin, tmp_path: Path, gate: HashGate, seen: list[tuple[str, object]]
) -> None:
    _watch_holds(seen, gate.open)
    # Every hash thread is busy with other files: this file's hash has not started, so its
    # receives are not what holds it back.
    await _download(origin, tmp_path / "big.bin", gate, **_only(hash_window_bytes=4 * MiB))
    assert not seen, seen


def test_only_a_receive_far_past_a_hash_that_trails_the_prefix_waits() -> None:
    w = 128 * MiB
    assert must_wait_for_hash(900 * MiB, 100 * MiB, 500 * MiB, w)  # the hash is 400 MiB behind
    assert not must_wait_for_hash(200 * MiB, 100 * MiB, 500 * MiB, w)  # within the window
    assert not must_wait_for_hash(500 * MiB, 100 * MiB, 500 * MiB, w)  # continues the prefix
    # The hash keeps up with the prefix: the network sets the pace, segments may span far.
    assert not must_wait_for_hash(900 * MiB, 400 * MiB, 500 * MiB, w)


async def test_a_resumed_download_does_not_wait_for_the_hash_to_reread_the_old_bytes(
    origin: Origin, tmp_path: Path, hold: HashHold, seen: list[tuple[str, object]]
) -> None:
    data = blob(64 * MiB, seed=22)
    origin.add_file("r.bin", data)
    dest = tmp_path / "r.bin"
    # A first run ends after 40 MiB: a reset after progress is retried, the retry gets
    # nothing, which spends retries=0.
    origin.plan("r.bin", [Fault(drop_after=40 * MiB), Fault(drop_after=0)])
    state = tmp_path / "st"
    async with Downloader(config(retries=0, connections=1), state_dir=state) as dl:
        with pytest.raises(ModelhaulError):
            await asyncio.wait_for(dl.download(origin.url("r.bin"), dest), 60)

    _watch_holds(seen, hold.release)
    origin.set_default("r.bin", Fault(rate_bytes_per_s=16 * MiB))
    hold.arm()  # the hash stands still at 0, on its thread, while the rest (24 MiB) arrives
    cfg = config(connections=4, **_only(hash_window_bytes=32 * MiB))
    async with Downloader(cfg, state_dir=state) as dl:
        result = await asyncio.wait_for(
            dl.download(origin.url("r.bin"), dest, sha256=sha(data)), 60
        )
    assert result.resumed_from >= 32 * MiB and result.sha256 == sha(data)
    # The hash trailed the prefix by ~40 MiB, more than the window, but all of that was the
    # earlier run's: this run's 24 MiB never outran it by a window.
    assert not seen, seen
