"""DownloadManager tests against the real fault-injecting origin.

What the manager promises (issue 3), each checked where it is visible: ordering and
concurrency at the origin, pause/cancel on the origin's byte counters and on disk, bandwidth in
measured throughput, events by their order. Throughput tests measure over windows of a second or
more with generous bounds, since the test machine is small and noisy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import blob, sha
from helpers import small_steps_config as config
from modelhaul.config import DownloadConfig, ManagerConfig, MiB, RetryPolicy
from modelhaul.disk.journal import Journal
from modelhaul.errors import ModelhaulError
from modelhaul.events import State, TaskEvent
from modelhaul.manager.downloads import DownloadManager
from modelhaul.manager.handle import DownloadHandle
from modelhaul.policy.ranges import RangeSet
from origin import Fault, Origin

KiB = 1024

# Several connections over small chunks: a file is fetched as many ranges.
SPLIT = {"connections": 2, "chunk_bytes": 256 * KiB, "min_steal_bytes": 128 * KiB}


def one_at_a_time() -> ManagerConfig:
    return ManagerConfig(max_active_files=1, adaptive=False)


class Recorder:
    """Collects a manager's events through the callback interface; a test awaits one."""

    def __init__(self, mgr: DownloadManager) -> None:
        self.events: list[TaskEvent] = []
        self._waiters: list[tuple[Callable[[TaskEvent], bool], asyncio.Future[TaskEvent]]] = []
        mgr.subscribe(self._on_event)

    def _on_event(self, event: TaskEvent) -> None:
        self.events.append(event)
        for waiter in list(self._waiters):
            match, future = waiter
            if match(event) and not future.done():
                future.set_result(event)
                self._waiters.remove(waiter)

    def mark(self) -> int:
        return len(self.events)

    async def wait_for(
        self, match: Callable[[TaskEvent], bool], *, since: int = 0, timeout: float = 10
    ) -> TaskEvent:
        for event in self.events[since:]:
            if match(event):
                return event
        future: asyncio.Future[TaskEvent] = asyncio.get_running_loop().create_future()
        self._waiters.append((match, future))
        async with asyncio.timeout(timeout):
            return await future

    async def wait_state(
        self, task_id: str, state: State, *, since: int = 0, timeout: float = 10
    ) -> TaskEvent:
        return await self.wait_for(
            lambda e: e.kind == "state" and e.task_id == task_id and e.state is state,
            since=since,
            timeout=timeout,
        )

    def states(self, task_id: str) -> list[State]:
        return [e.state for e in self.events if e.kind == "state" and e.task_id == task_id]


def first_request_order(origin: Origin, names: list[str]) -> list[str]:
    order: list[str] = []
    for record in origin.requests:
        if record.name in names and record.name not in order:
            order.append(record.name)
    return order


async def no_new_request(origin: Origin, name: str, *, within_s: float = 0.3) -> bool:
    """True if no request for ``name`` arrives within the window (an event that must not happen)."""
    seen = len(origin.requests_for(name))
    try:
        await origin.wait_requests_async(name, seen + 1, timeout=within_s)
    except TimeoutError:
        return True
    return False


async def rate_over(read_bytes: Callable[[], int], seconds: float) -> float:
    """Bytes per second of a growing counter over a measuring window."""
    b0, t0 = read_bytes(), time.monotonic()
    await asyncio.sleep(seconds)  # a measuring window, not synchronisation
    return (read_bytes() - b0) / (time.monotonic() - t0)


# ---------------------------------------------------------------------- add / wait


async def test_add_returns_a_handle_at_once_and_wait_gives_the_result(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(3 * MiB, seed=1)
    origin.add_file("a.bin", data)
    async with DownloadManager(download_config=config(), state_dir=state_dir) as mgr:
        handle = mgr.add(origin.url("a.bin"), tmp_path / "a.bin", sha256=sha(data))
        # Nothing was awaited: no request can have been made yet.
        assert isinstance(handle, DownloadHandle)
        assert origin.requests_for("a.bin") == []
        assert handle.info().state is State.RUNNING
        result = await handle.wait()
    assert result.sha256 == sha(data)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert handle.info().state is State.COMPLETED
    assert handle.info().bytes_done == len(data)


async def test_wait_raises_the_categorised_error(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(256 * KiB, seed=2)
    origin.add_file("ok.bin", data)
    async with DownloadManager(download_config=config(), state_dir=state_dir) as mgr:
        missing = mgr.add(origin.url("nope.bin"), tmp_path / "nope.bin")
        corrupt = mgr.add(origin.url("ok.bin"), tmp_path / "bad.bin", sha256="0" * 64)
        fine = mgr.add(origin.url("ok.bin"), tmp_path / "ok.bin")
        with pytest.raises(ModelhaulError) as not_found:
            await missing.wait()
        with pytest.raises(ModelhaulError) as integrity:
            await corrupt.wait()
        assert (await fine.wait()).sha256 == sha(data)
    assert not_found.value.category == "not_found"
    assert integrity.value.category == "integrity"
    assert missing.info().state is State.FAILED
    assert missing.info().error == not_found.value.to_dict()
    assert not (tmp_path / "bad.bin").exists()


# ---------------------------------------------------------------------- scheduling


async def test_higher_priority_starts_first_and_fifo_among_equals(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    names = [f"p{i}.bin" for i in range(6)]
    for i, name in enumerate(names):
        origin.add_file(name, blob(128 * KiB, seed=i))
    async with DownloadManager(
        one_at_a_time(), download_config=config(), state_dir=state_dir
    ) as mgr:
        priorities = [0, 0, 5, 5, 1, 0]
        handles = [
            mgr.add(origin.url(n), tmp_path / n, priority=p)
            for n, p in zip(names, priorities, strict=True)
        ]
        # While queued, p5 jumps ahead of everything but the running p0.
        handles[5].set_priority(9)
        assert handles[5].info().priority == 9
        for h in handles:
            await h.wait()
    # p0 was already running when the others were added.
    assert first_request_order(origin, names) == [
        "p0.bin",
        "p5.bin",
        "p2.bin",
        "p3.bin",
        "p4.bin",
        "p1.bin",
    ]


async def test_a_started_file_goes_before_a_new_one_of_equal_priority(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    for name in ("new.bin", "started.bin", "urgent.bin"):
        origin.add_file(name, blob(2 * MiB, seed=len(name)))
        origin.set_default(name, Fault(rate_bytes_per_s=4 * MiB))
    async with DownloadManager(
        one_at_a_time(), download_config=config(), state_dir=state_dir
    ) as mgr:
        rec = Recorder(mgr)
        new = mgr.add(origin.url("new.bin"), tmp_path / "new.bin", paused=True)  # older
        started = mgr.add(origin.url("started.bin"), tmp_path / "started.bin")
        urgent = mgr.add(origin.url("urgent.bin"), tmp_path / "urgent.bin", priority=1)
        await origin.wait_bytes_async("started.bin", 256 * KiB)
        started.pause()  # frees the slot: urgent (priority 1) runs
        await rec.wait_state(urgent.id, State.RUNNING)
        # Changing the priority of a running download is allowed and reported.
        urgent.set_priority(2)
        assert urgent.info().priority == 2
        new.resume()
        started.resume()
        assert new.info().state is State.QUEUED
        assert started.info().state is State.QUEUED
        for h in (urgent, started, new):
            await h.wait()
    order = [r.name for r in origin.requests]
    last_started = max(i for i, n in enumerate(order) if n == "started.bin")
    assert order.index("urgent.bin") < last_started < order.index("new.bin")


async def test_at_most_max_active_files_run_at_once(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    names = [f"c{i}.bin" for i in range(4)]
    for i, name in enumerate(names):
        origin.add_file(name, blob(1 * MiB, seed=i))
        origin.set_default(name, Fault(rate_bytes_per_s=2 * MiB))
    mconf = ManagerConfig(max_active_files=2, adaptive=False)
    async with DownloadManager(mconf, download_config=config(), state_dir=state_dir) as mgr:
        running: set[str] = set()
        most = 0

        def count(event: TaskEvent) -> None:
            nonlocal most
            if event.kind != "state":
                return
            if event.state in (State.RUNNING, State.VERIFYING):
                running.add(event.task_id)
            else:
                running.discard(event.task_id)
            most = max(most, len(running))

        mgr.subscribe(count)
        handles = [mgr.add(origin.url(n), tmp_path / n) for n in names]
        await origin.wait_bytes_async("c0.bin", 128 * KiB)
        await origin.wait_bytes_async("c1.bin", 128 * KiB)
        # Two files are mid-transfer; the origin has not heard of the others.
        assert origin.requests_for("c2.bin") == origin.requests_for("c3.bin") == []
        for h in handles:
            await h.wait()
    assert most == 2


async def test_connections_per_host_are_limited(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    for i in range(3):
        origin.add_file(f"h{i}.bin", blob(4 * MiB, seed=i))
        origin.set_default(f"h{i}.bin", Fault(rate_bytes_per_s=1 * MiB))
    mconf = ManagerConfig(max_connections_per_host=2, max_connections=3)
    dconf = config(connections=4, chunk_bytes=512 * KiB)
    async with DownloadManager(mconf, download_config=dconf, state_dir=state_dir) as mgr:
        per_host: dict[str, int] = {}
        overall = 0

        def sample(event: TaskEvent) -> None:
            nonlocal overall
            # Late in a file, work stealing closes connections whose handlers end a moment
            # later; sample while every file still has unassigned bytes.
            if any(origin.bytes_served(f"h{i}.bin") > 1 * MiB for i in range(3)):
                return
            live = [r for r in origin.requests if not r.done]
            overall = max(overall, len(live))
            for record in live:
                n = sum(1 for r in live if r.host == record.host)
                per_host[record.host] = max(per_host.get(record.host, 0), n)

        mgr.subscribe(sample)
        handles = [
            mgr.add(origin.url("h0.bin"), tmp_path / "h0.bin"),
            mgr.add(origin.url("h1.bin"), tmp_path / "h1.bin"),
            mgr.add(origin.url("h2.bin", alt=True), tmp_path / "h2.bin"),
        ]
        await origin.wait_bytes_async("h2.bin", 512 * KiB)
        for h in handles:
            h.cancel()
    assert per_host, "no sample taken"
    assert max(per_host.values()) == 2
    assert len(per_host) == 2  # both hosts were served
    assert overall == 3


# ---------------------------------------------------------------------- pause / resume


async def test_a_target_known_absent_is_looked_for_again_after_a_pause(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    # known_absent holds for the first run only: a paused run leaves a partial file and
    # journal, which the next run resumes rather than fetching from the start.
    data = blob(2 * MiB, seed=5)
    origin.add_file("k.bin", data)
    origin.set_default("k.bin", Fault(rate_bytes_per_s=1 * MiB))
    dest = tmp_path / "k.bin"
    async with DownloadManager(download_config=config(), state_dir=state_dir) as mgr:
        rec = Recorder(mgr)
        handle = mgr.add(origin.url("k.bin"), dest, known_absent=True)
        await origin.wait_bytes_async("k.bin", 512 * KiB)
        handle.pause()
        await rec.wait_state(handle.id, State.PAUSED)
        state = Journal(dest.with_name("k.bin.modelhaul.journal")).load()
        assert state is not None and state.done.prefix_end() > 0
        origin.set_default("k.bin", None)
        # A lock file would send the run to the lock, which looks anyway: without it, only
        # a look of the run's own finds the partial file.
        for lock in (state_dir / "locks").iterdir():
            lock.unlink()
        before = len(origin.ranges_served("k.bin"))
        handle.resume()
        result = await handle.wait()
    assert dest.read_bytes() == data
    assert result.resumed_from == state.done.total()
    assert all(
        start >= state.done.prefix_end() for start, _ in origin.ranges_served("k.bin")[before:]
    )


async def test_pause_stops_the_origin_within_a_second_and_resume_fetches_no_range_twice(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(3 * MiB, seed=3)
    origin.add_file("p.bin", data)
    origin.set_default("p.bin", Fault(rate_bytes_per_s=1 * MiB))
    dest = tmp_path / "p.bin"
    async with DownloadManager(download_config=config(**SPLIT), state_dir=state_dir) as mgr:
        rec = Recorder(mgr)
        handle = mgr.add(origin.url("p.bin"), dest)
        await origin.wait_bytes_async("p.bin", 768 * KiB)
        paused_at = time.monotonic()
        handle.pause()
        await origin.wait_idle_async(timeout=5)
        assert time.monotonic() - paused_at < 1.0
        await rec.wait_state(handle.id, State.PAUSED)
        served = origin.bytes_served("p.bin")
        assert await no_new_request(origin, "p.bin")
        assert origin.bytes_served("p.bin") == served

        # The partial data and the journal stay; the journal is the truth about what is held.
        part = dest.with_name("p.bin.modelhaul.part")
        state = Journal(dest.with_name("p.bin.modelhaul.journal")).load()
        assert part.exists() and state is not None
        held = state.done
        assert held.total() > 0
        assert not dest.exists()
        before = len(origin.ranges_served("p.bin"))

        handle.resume()
        assert handle.info().state is State.QUEUED or handle.info().state is State.RUNNING
        result = await handle.wait()
    assert dest.read_bytes() == data
    assert result.resumed_from == held.total()
    after = origin.ranges_served("p.bin")[before:]
    refetched = RangeSet(after)
    overlap = refetched.total() + held.total() - RangeSet([*refetched, *held]).total()
    assert overlap == 0, f"re-fetched {overlap} bytes the journal already held"
    assert sum(e - s for s, e in after) <= len(data) - held.total()
    states = rec.states(handle.id)
    assert states == [State.QUEUED, State.RUNNING, State.PAUSED, State.QUEUED, State.RUNNING,
                      State.VERIFYING, State.COMPLETED]  # fmt: skip


async def test_a_result_counts_the_bytes_of_every_run_and_a_file_already_done_none(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(3 * MiB, seed=33)
    origin.add_file("n.bin", data)
    origin.set_default("n.bin", Fault(rate_bytes_per_s=1 * MiB))
    dest = tmp_path / "n.bin"
    async with DownloadManager(download_config=config(**SPLIT), state_dir=state_dir) as mgr:
        rec = Recorder(mgr)
        handle = mgr.add(origin.url("n.bin"), dest, sha256=sha(data))
        await origin.wait_bytes_async("n.bin", 768 * KiB)
        handle.pause()
        await rec.wait_state(handle.id, State.PAUSED)
        origin.set_default("n.bin", None)
        handle.resume()
        result = await handle.wait()
        # Both runs received bytes: the one before the pause counts too.
        assert result.resumed_from > 0
        assert len(data) <= result.bytes_transferred <= origin.bytes_served("n.bin")
        assert result.size == len(data)
        assert handle.info().bytes_received == result.bytes_transferred

        served = origin.bytes_served("n.bin")
        again = await mgr.add(origin.url("n.bin"), dest).wait()
        elsewhere = await mgr.add(
            origin.url("n.bin"), tmp_path / "copy.bin", sha256=sha(data)
        ).wait()
    assert origin.bytes_served("n.bin") == served
    for done in (again, elsewhere):
        assert done.already_complete and done.bytes_transferred == 0
        assert done.size == len(data) and done.sha256 == sha(data)
    assert elsewhere.path == str(tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == data


async def test_pausing_one_download_does_not_disturb_another(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    a, b = blob(2 * MiB, seed=4), blob(2 * MiB, seed=5)
    origin.add_file("a.bin", a)
    origin.add_file("b.bin", b)
    for name in ("a.bin", "b.bin"):
        origin.set_default(name, Fault(rate_bytes_per_s=1 * MiB))
    async with DownloadManager(download_config=config(**SPLIT), state_dir=state_dir) as mgr:
        rec = Recorder(mgr)
        ha = mgr.add(origin.url("a.bin"), tmp_path / "a.bin")
        hb = mgr.add(origin.url("b.bin"), tmp_path / "b.bin")
        await origin.wait_bytes_async("a.bin", 256 * KiB)
        await origin.wait_bytes_async("b.bin", 256 * KiB)
        ha.pause()
        await rec.wait_state(ha.id, State.PAUSED, timeout=1.0)
        stopped_at = origin.bytes_served("a.bin")
        b_at_pause = origin.bytes_served("b.bin")
        assert (await hb.wait()).sha256 == sha(b)
        await origin.wait_idle_async()
        # a's handlers may have written one more paced piece before seeing the close.
        assert origin.bytes_served("a.bin") - stopped_at <= 2 * (1 * MiB // 20)
        assert origin.bytes_served("b.bin") - b_at_pause > 512 * KiB
        assert all(r.status in (200, 206) for r in origin.requests_for("b.bin"))
        assert ha.info().state is State.PAUSED
        ha.resume()
        assert (await ha.wait()).sha256 == sha(a)
    assert rec.states(hb.id) == [State.QUEUED, State.RUNNING, State.VERIFYING, State.COMPLETED]


async def test_pause_frees_the_slot_for_the_next_download(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    origin.add_file("first.bin", blob(4 * MiB, seed=6))
    origin.set_default("first.bin", Fault(rate_bytes_per_s=1 * MiB))
    second = blob(512 * KiB, seed=7)
    origin.add_file("second.bin", second)
    async with DownloadManager(
        one_at_a_time(), download_config=config(), state_dir=state_dir
    ) as mgr:
        h1 = mgr.add(origin.url("first.bin"), tmp_path / "first.bin")
        h2 = mgr.add(origin.url("second.bin"), tmp_path / "second.bin")
        await origin.wait_bytes_async("first.bin", 128 * KiB)
        assert h2.info().state is State.QUEUED
        h1.pause()
        assert (await asyncio.wait_for(h2.wait(), 5)).sha256 == sha(second)
        assert h1.info().state is State.PAUSED
        h1.cancel()


async def test_resume_right_after_pause_is_not_lost(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(2 * MiB, seed=8)
    origin.add_file("r.bin", data)
    origin.set_default("r.bin", Fault(rate_bytes_per_s=2 * MiB))
    async with DownloadManager(download_config=config(**SPLIT), state_dir=state_dir) as mgr:
        rec = Recorder(mgr)
        handle = mgr.add(origin.url("r.bin"), tmp_path / "r.bin")
        await origin.wait_bytes_async("r.bin", 256 * KiB)
        # Both calls land before the paused transfer has wound down.
        handle.pause()
        handle.resume()
        result = await asyncio.wait_for(handle.wait(), 10)
    assert result.sha256 == sha(data)
    assert rec.states(handle.id)[-1] is State.COMPLETED


async def test_a_resumed_download_is_not_held_back_by_its_paused_run(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    """Bytes the paused run had booked against its cap but never received are not owed."""
    data = blob(16 * MiB, seed=28)
    origin.add_file("owed.bin", data)
    dconf = config(connections=4, chunk_bytes=1 * MiB, read_buffer_bytes=1 * MiB)
    async with DownloadManager(download_config=dconf, state_dir=state_dir) as mgr:
        rec = Recorder(mgr)
        handle = mgr.add(origin.url("owed.bin"), tmp_path / "owed.bin", rate_limit=512 * KiB)
        await asyncio.sleep(1.5)  # connections book large chunks while they wait their turn
        handle.pause()
        await rec.wait_state(handle.id, State.PAUSED)
        mark = rec.mark()
        handle.resume()
        await rec.wait_state(handle.id, State.RUNNING, since=mark)
        before = handle.info().bytes_done
        moved = await rec.wait_for(
            lambda e: e.kind == "progress" and e.bytes_done >= before + 256 * KiB,
            since=mark,
            timeout=3,
        )
        handle.cancel()
    assert moved.task_id == handle.id


async def test_pause_and_resume_while_queued(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    origin.add_file("busy.bin", blob(1 * MiB, seed=9))
    origin.set_default("busy.bin", Fault(rate_bytes_per_s=2 * MiB))
    data = blob(256 * KiB, seed=10)
    origin.add_file("q.bin", data)
    async with DownloadManager(
        one_at_a_time(), download_config=config(), state_dir=state_dir
    ) as mgr:
        busy = mgr.add(origin.url("busy.bin"), tmp_path / "busy.bin")
        queued = mgr.add(origin.url("q.bin"), tmp_path / "q.bin")
        queued.pause()
        await busy.wait()
        # The slot is free but a paused download does not take it.
        await mgr.join()
        assert origin.requests_for("q.bin") == []
        assert queued.info().state is State.PAUSED
        queued.resume()
        assert (await queued.wait()).sha256 == sha(data)


# ---------------------------------------------------------------------- cancel


async def test_cancel_removes_partial_data_and_leaves_others_alone(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    keep = blob(2 * MiB, seed=11)
    for name, seed in (("x.bin", 12), ("y.bin", 13), ("keep.bin", 11)):
        origin.add_file(name, keep if name == "keep.bin" else blob(2 * MiB, seed=seed))
        origin.set_default(name, Fault(rate_bytes_per_s=1 * MiB))
    async with DownloadManager(download_config=config(**SPLIT), state_dir=state_dir) as mgr:
        rec = Recorder(mgr)
        running = mgr.add(origin.url("x.bin"), tmp_path / "x.bin")
        paused = mgr.add(origin.url("y.bin"), tmp_path / "y.bin")
        other = mgr.add(origin.url("keep.bin"), tmp_path / "keep.bin")
        await origin.wait_bytes_async("x.bin", 256 * KiB)
        await origin.wait_bytes_async("y.bin", 256 * KiB)
        paused.pause()
        await rec.wait_state(paused.id, State.PAUSED)
        assert (tmp_path / "y.bin.modelhaul.part").exists()

        running.cancel()
        paused.cancel()
        for handle in (running, paused):
            with pytest.raises(ModelhaulError) as caught:
                await asyncio.wait_for(handle.wait(), 1.0)
            assert caught.value.category == "cancelled"
            assert handle.info().state is State.CANCELLED
        x_served = origin.bytes_served("x.bin")
        assert (await other.wait()).sha256 == sha(keep)
        await origin.wait_idle_async()
        assert origin.bytes_served("x.bin") - x_served <= 2 * (1 * MiB // 20)
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "home")
    assert leftovers == ["keep.bin"]
    assert rec.states(other.id) == [State.QUEUED, State.RUNNING, State.VERIFYING, State.COMPLETED]


async def test_cancel_a_queued_download_makes_no_request(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    origin.add_file("busy.bin", blob(512 * KiB, seed=14))
    origin.add_file("never.bin", blob(512 * KiB, seed=15))
    async with DownloadManager(
        one_at_a_time(), download_config=config(), state_dir=state_dir
    ) as mgr:
        busy = mgr.add(origin.url("busy.bin"), tmp_path / "busy.bin")
        never = mgr.add(origin.url("never.bin"), tmp_path / "never.bin")
        never.cancel()
        never.cancel()  # twice is harmless
        with pytest.raises(ModelhaulError) as caught:
            await never.wait()
        assert caught.value.category == "cancelled"
        await busy.wait()
    assert origin.requests_for("never.bin") == []


# ---------------------------------------------------------------------- identical targets


async def test_identical_adds_share_one_transfer(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(2 * MiB, seed=16)
    origin.add_file("d.bin", data)
    origin.set_default("d.bin", Fault(rate_bytes_per_s=4 * MiB))
    async with DownloadManager(download_config=config(), state_dir=state_dir) as mgr:
        first = mgr.add(origin.url("d.bin"), tmp_path / "d.bin")
        second = mgr.add(origin.url("d.bin"), tmp_path / "d.bin")
        third = mgr.add(origin.url("d.bin"), tmp_path / "d.bin", sha256=sha(data))
        assert first.id == second.id == third.id
        results = await asyncio.gather(first.wait(), second.wait(), third.wait())
    assert {r.sha256 for r in results} == {sha(data)}
    assert origin.bytes_served("d.bin") == len(data)
    assert len(mgr.tasks()) == 1


async def test_same_sha256_is_fetched_once_for_two_paths(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(2 * MiB, seed=17)
    origin.add_file("m.bin", data)
    origin.add_file("mirror.bin", data)
    origin.set_default("m.bin", Fault(rate_bytes_per_s=4 * MiB))
    async with DownloadManager(download_config=config(), state_dir=state_dir) as mgr:
        first = mgr.add(origin.url("m.bin"), tmp_path / "one" / "m.bin", sha256=sha(data))
        second = mgr.add(origin.url("mirror.bin"), tmp_path / "two" / "m.bin", sha256=sha(data))
        assert first.id == second.id
        await asyncio.gather(first.wait(), second.wait())
        # Adding it once more after completion costs nothing either.
        third = mgr.add(origin.url("m.bin"), tmp_path / "three.bin", sha256=sha(data))
        await third.wait()
    for path in ("one/m.bin", "two/m.bin", "three.bin"):
        assert (tmp_path / path).read_bytes() == data
    assert origin.bytes_served("m.bin") + origin.bytes_served("mirror.bin") == len(data)


# ---------------------------------------------------------------------- bandwidth


async def test_a_global_limit_change_shows_in_measured_throughput(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(24 * MiB, seed=18)
    origin.add_file("g.bin", data)
    mconf = ManagerConfig(rate_bytes_per_s=1 * MiB)
    dconf = config(connections=4, chunk_bytes=1 * MiB)
    async with DownloadManager(mconf, download_config=dconf, state_dir=state_dir) as mgr:
        handle = mgr.add(origin.url("g.bin"), tmp_path / "g.bin")

        def done() -> int:
            return handle.info().bytes_done

        slow = await rate_over(done, 1.0)
        mgr.set_limit(4 * MiB)
        assert mgr.rate_limit == 4 * MiB
        await asyncio.sleep(0.5)  # "within a second": measure after half of it
        fast = await rate_over(done, 1.0)
        mgr.set_limit(None)
        await asyncio.wait_for(handle.wait(), 20)
    assert 0.5 * MiB < slow < 1.5 * MiB, slow / MiB
    assert 2.5 * MiB < fast < 5.5 * MiB, fast / MiB


async def test_a_task_limit_change_shows_in_measured_throughput(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(16 * MiB, seed=19)
    origin.add_file("t.bin", data)
    dconf = config(connections=2, chunk_bytes=1 * MiB)
    async with DownloadManager(download_config=dconf, state_dir=state_dir) as mgr:
        handle = mgr.add(origin.url("t.bin"), tmp_path / "t.bin", rate_limit=4 * MiB)
        assert handle.info().rate_limit == 4 * MiB

        def done() -> int:
            return handle.info().bytes_done

        fast = await rate_over(done, 1.0)
        handle.set_limit(1 * MiB)
        assert handle.info().rate_limit == 1 * MiB
        await asyncio.sleep(0.5)
        slow = await rate_over(done, 1.0)
        handle.set_limit(None)
        await asyncio.wait_for(handle.wait(), 20)
    assert 2.5 * MiB < fast < 5.5 * MiB, fast / MiB
    assert 0.4 * MiB < slow < 1.6 * MiB, slow / MiB


async def test_a_global_cap_is_shared_fairly(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    """A file on many connections must not crowd out one on a single connection."""
    sizes = {"big.bin": 48 * MiB, "mid.bin": 24 * MiB, "small.bin": 12 * MiB}
    for i, (name, size) in enumerate(sizes.items()):
        origin.add_file(name, blob(size, seed=20 + i))
    cap = 3 * MiB
    async with DownloadManager(
        ManagerConfig(rate_bytes_per_s=cap), download_config=config(), state_dir=state_dir
    ) as mgr:
        handles = {n: mgr.add(origin.url(n), tmp_path / n) for n in sizes}
        await asyncio.sleep(1.0)  # let automatic mode settle on its connection counts
        before = {n: h.info().bytes_done for n, h in handles.items()}
        t0 = time.monotonic()
        await asyncio.sleep(2.0)  # a measuring window
        elapsed = time.monotonic() - t0
        rates = {n: (h.info().bytes_done - before[n]) / elapsed for n, h in handles.items()}
        for h in handles.values():
            h.cancel()
    fair = cap / len(sizes)
    shares = {n: round(r / fair, 2) for n, r in rates.items()}
    assert all(share >= 0.5 for share in shares.values()), shares
    assert sum(rates.values()) < cap * 1.2, shares


async def test_bandwidth_a_slow_download_leaves_unused_goes_to_the_others(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    origin.add_file("fast.bin", blob(32 * MiB, seed=23))
    origin.add_file("slow.bin", blob(8 * MiB, seed=24))
    origin.set_default("slow.bin", Fault(rate_bytes_per_s=256 * KiB))
    cap = 3 * MiB
    async with DownloadManager(
        ManagerConfig(rate_bytes_per_s=cap), download_config=config(), state_dir=state_dir
    ) as mgr:
        fast = mgr.add(origin.url("fast.bin"), tmp_path / "fast.bin")
        slow = mgr.add(origin.url("slow.bin"), tmp_path / "slow.bin")
        await asyncio.sleep(0.5)
        rate = await rate_over(lambda: fast.info().bytes_done, 1.5)
        fast.cancel()
        slow.cancel()
    assert rate > 0.7 * (cap - 256 * KiB), rate / MiB


async def test_a_capped_download_moves_steadily_with_the_default_buffers(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    origin.add_file("lumps.bin", blob(32 * MiB, seed=29))
    async with DownloadManager(
        ManagerConfig(rate_bytes_per_s=1 * MiB),
        download_config=DownloadConfig(retry=RetryPolicy(initial_delay_s=0.01)),
        state_dir=state_dir,
    ) as mgr:
        handle = mgr.add(origin.url("lumps.bin"), tmp_path / "lumps.bin")
        await asyncio.sleep(1.0)
        rate = await rate_over(lambda: handle.info().bytes_done, 2.5)
        handle.cancel()
    assert 0.4 * MiB < rate < 1.6 * MiB, rate / MiB


# ---------------------------------------------------------------------- events

_NEXT: dict[State | None, set[State]] = {
    None: {State.QUEUED, State.RUNNING, State.PAUSED},
    State.QUEUED: {State.RUNNING, State.PAUSED, State.CANCELLED},
    State.RUNNING: {State.PAUSED, State.VERIFYING, State.COMPLETED, State.FAILED, State.CANCELLED},
    State.VERIFYING: {State.COMPLETED, State.FAILED, State.PAUSED, State.CANCELLED},
    State.PAUSED: {State.QUEUED, State.CANCELLED},
    State.FAILED: {State.QUEUED},
    State.COMPLETED: set(),
    State.CANCELLED: set(),
}


def check_event_order(events: list[TaskEvent]) -> None:
    """Each task's state events follow the state machine; progress only while running,
    never going backwards within a run; no event at all after a final state."""
    state: dict[str, State | None] = {}
    last_done: dict[str, int] = {}
    for i, event in enumerate(events):
        where = f"event {i}: {event.kind} {event.task_id} {event.state}"
        if event.kind == "total":
            assert event.task_id == ""
            continue
        current = state.get(event.task_id)
        if event.kind == "state":
            if event.state is current:
                continue  # a repeated state (a priority change) is not a transition
            assert event.state in _NEXT[current], f"{where}: after {current}"
            state[event.task_id] = event.state
            if event.state is State.RUNNING:
                last_done[event.task_id] = 0
        else:
            assert event.kind == "progress", where
            assert current is State.RUNNING, f"{where}: progress while {current}"
            assert event.progress is not None
            assert event.bytes_done >= last_done[event.task_id], where
            last_done[event.task_id] = event.bytes_done


async def test_events_arrive_in_a_valid_order(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    for name in ("done.bin", "paused.bin", "cancelled.bin"):
        origin.add_file(name, blob(2 * MiB, seed=len(name)))
        origin.set_default(name, Fault(rate_bytes_per_s=2 * MiB))
    async with DownloadManager(download_config=config(**SPLIT), state_dir=state_dir) as mgr:
        rec = Recorder(mgr)
        done = mgr.add(origin.url("done.bin"), tmp_path / "done.bin")
        paused = mgr.add(origin.url("paused.bin"), tmp_path / "paused.bin")
        cancelled = mgr.add(origin.url("cancelled.bin"), tmp_path / "cancelled.bin")
        failed = mgr.add(origin.url("missing.bin"), tmp_path / "missing.bin")
        await origin.wait_bytes_async("paused.bin", 512 * KiB)
        await origin.wait_bytes_async("cancelled.bin", 512 * KiB)
        paused.pause()
        cancelled.cancel()
        await rec.wait_state(paused.id, State.PAUSED)
        paused.resume()
        await asyncio.gather(done.wait(), paused.wait(), return_exceptions=True)
        for h in (cancelled, failed):
            with pytest.raises(ModelhaulError):
                await h.wait()
        mark = rec.mark()
        await origin.wait_idle_async()
    check_event_order(rec.events)
    assert rec.states(done.id)[-1] is State.COMPLETED
    assert rec.states(paused.id)[-1] is State.COMPLETED
    assert rec.states(cancelled.id)[-1] is State.CANCELLED
    assert rec.states(failed.id)[-1] is State.FAILED
    failed_event = [e for e in rec.events if e.task_id == failed.id][-1]
    assert failed_event.error is not None and failed_event.error["category"] == "not_found"
    done_event = [e for e in rec.events if e.task_id == done.id][-1]
    assert done_event.result is not None and done_event.result["size"] == 2 * MiB
    assert all(e.kind == "total" for e in rec.events[mark:])
    totals = [e for e in rec.events if e.kind == "total"]
    assert totals, "no aggregate progress"
    assert totals[-1].state is State.COMPLETED


async def test_progress_is_throttled_and_carries_speed_and_eta(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(3 * MiB, seed=25)
    origin.add_file("s.bin", data)
    origin.set_default("s.bin", Fault(rate_bytes_per_s=1 * MiB))
    async with DownloadManager(download_config=config(**SPLIT), state_dir=state_dir) as mgr:
        rec = Recorder(mgr)
        handle = mgr.add(origin.url("s.bin"), tmp_path / "s.bin")
        await handle.wait()
    progress = [e for e in rec.events if e.kind == "progress"]
    times = [e.time for e in progress]
    assert len(progress) >= 5
    for i, t in enumerate(times):
        in_one_second = sum(1 for u in times[i:] if u - t < 1.0)
        assert in_one_second <= 12, f"{in_one_second} progress events within a second"
    mid = progress[len(progress) // 2]
    assert mid.total == len(data)
    assert 0.5 * MiB < mid.speed_bytes_per_s < 6 * MiB
    assert mid.eta_s is not None and 0 < mid.eta_s < 10
    aggregate = [e for e in rec.events if e.kind == "total"]
    assert aggregate and max(e.bytes_done for e in aggregate) <= len(data)
    assert aggregate[-1].bytes_done == len(data)


async def test_the_event_iterator_sees_everything_from_its_creation(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    origin.add_file("e.bin", blob(256 * KiB, seed=26))
    async with DownloadManager(download_config=config(), state_dir=state_dir) as mgr:
        events = mgr.events()
        handle = mgr.add(origin.url("e.bin"), tmp_path / "e.bin")
        seen: list[TaskEvent] = []
        async with asyncio.timeout(10):
            async for event in events:
                seen.append(event)
                if event.kind == "state" and event.state.final:
                    break
        await handle.wait()
        other = mgr.events()
    states = [e.state for e in seen if e.kind == "state"]
    assert states == [State.QUEUED, State.RUNNING, State.VERIFYING, State.COMPLETED]
    # Closing the manager ends every iterator.
    async with asyncio.timeout(5):
        async for _ in other:
            pass


async def test_close_ends_waits_and_keeps_partial_data(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    origin.add_file("c.bin", blob(4 * MiB, seed=27))
    origin.set_default("c.bin", Fault(rate_bytes_per_s=1 * MiB))
    async with DownloadManager(download_config=config(), state_dir=state_dir) as mgr:
        handle = mgr.add(origin.url("c.bin"), tmp_path / "c.bin")
        waiter = asyncio.create_task(handle.wait())
        await origin.wait_bytes_async("c.bin", 256 * KiB)
    with pytest.raises(ModelhaulError) as caught:
        await asyncio.wait_for(waiter, 5)
    assert caught.value.category == "cancelled"
    assert handle.info().state is State.PAUSED
    assert (tmp_path / "c.bin.modelhaul.part").exists()
    assert (tmp_path / "c.bin.modelhaul.journal").exists()
    with pytest.raises(RuntimeError):
        mgr.add(origin.url("c.bin"), tmp_path / "c.bin")
