"""The blocking facade: plain threads steer downloads that run on the manager's loop thread.

These tests are synchronous on purpose, as an application using the facade is; the origin's
blocking waits are the right ones here.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import blob, sha
from helpers import small_steps_config as config
from modelhaul import sync
from modelhaul.config import ManagerConfig, MiB
from modelhaul.errors import InvalidInput, ModelhaulError
from modelhaul.events import State, TaskEvent
from modelhaul.manager.downloads import DownloadManager
from modelhaul.sync import LoopThread, SyncDownloadManager, download
from origin import Fault, Origin

KiB = 1024


def test_download_blocks_until_the_file_is_verified(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(1 * MiB, seed=1)
    origin.add_file("one.bin", data)
    result = download(
        origin.url("one.bin"), tmp_path / "one.bin", sha256=sha(data), state_dir=state_dir
    )
    assert result.sha256 == sha(data)
    assert (tmp_path / "one.bin").read_bytes() == data
    with pytest.raises(ModelhaulError) as caught:
        download(origin.url("none.bin"), tmp_path / "none.bin", state_dir=state_dir)
    assert caught.value.category == "not_found"


def test_every_call_works_from_other_threads(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    files = {f"t{i}.bin": blob(512 * KiB, seed=i) for i in range(8)}
    names = list(files)
    for name, data in files.items():
        origin.add_file(name, data)
        origin.set_default(name, Fault(rate_bytes_per_s=2 * MiB))
    events: list[TaskEvent] = []
    loop_threads: set[str] = set()

    def on_event(event: TaskEvent) -> None:
        loop_threads.add(threading.current_thread().name)
        events.append(event)

    with SyncDownloadManager(
        ManagerConfig(max_active_files=2, adaptive=False),
        download_config=config(),
        state_dir=state_dir,
    ) as mgr:
        mgr.subscribe(on_event)
        # Seven threads add at once, an eighth adds a duplicate; t7 comes last, surely queued.
        with ThreadPoolExecutor(max_workers=8) as pool:
            handles = list(pool.map(lambda n: mgr.add(origin.url(n), tmp_path / n), names[:7]))
            again = pool.submit(mgr.add, origin.url("t3.bin"), tmp_path / "t3.bin").result()
        handles.append(mgr.add(origin.url("t7.bin"), tmp_path / "t7.bin"))
        assert len({h.id for h in handles}) == 8
        assert again.id == handles[3].id
        by_name = dict(zip(names, handles, strict=True))

        def steer() -> None:
            by_name["t7.bin"].set_priority(10)
            by_name["t6.bin"].pause()
            by_name["t5.bin"].cancel()
            by_name["t4.bin"].set_limit(1 * MiB)
            mgr.set_limit(8 * MiB)
            by_name["t6.bin"].resume()

        steerer = threading.Thread(target=steer)
        steerer.start()
        steerer.join()
        assert by_name["t7.bin"].info().priority == 10
        assert by_name["t4.bin"].info().rate_limit == 1 * MiB
        assert mgr.rate_limit == 8 * MiB

        def finish(name: str) -> str:
            try:
                return by_name[name].wait(timeout=20).sha256
            except ModelhaulError as exc:
                return exc.category

        with ThreadPoolExecutor(max_workers=8) as pool:
            outcome = dict(zip(names, pool.map(finish, names), strict=True))
        mgr.join(timeout=10)
        infos = {i.id: i for i in mgr.tasks()}
    assert outcome.pop("t5.bin") == "cancelled"
    assert outcome == {name: sha(data) for name, data in files.items() if name != "t5.bin"}
    assert infos[by_name["t5.bin"].id].state is State.CANCELLED
    assert not (tmp_path / "t5.bin.modelhaul.part").exists()
    assert loop_threads == {"modelhaul-manager"}  # callbacks run on the loop thread
    # set_priority republished t7's state (queued); the next download to start was t7.
    t7 = by_name["t7.bin"].id
    marks = [i for i, e in enumerate(events) if e.kind == "state" and e.task_id == t7]
    assert [events[i].state for i in marks[:2]] == [State.QUEUED, State.QUEUED]
    starts = [
        e.task_id for e in events[marks[1] :] if e.kind == "state" and e.state is State.RUNNING
    ]
    assert starts[0] == t7
    for name in files:
        if name != "t5.bin":
            assert (tmp_path / name).read_bytes() == files[name]


def test_pause_from_another_thread_stops_the_origin(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(2 * MiB, seed=9)
    origin.add_file("p.bin", data)
    origin.set_default("p.bin", Fault(rate_bytes_per_s=1 * MiB))
    with SyncDownloadManager(download_config=config(), state_dir=state_dir) as mgr:
        handle = mgr.add(origin.url("p.bin"), tmp_path / "p.bin")
        origin.wait_bytes("p.bin", 256 * KiB)
        paused_at = time.monotonic()
        pauser = threading.Thread(target=handle.pause)
        pauser.start()
        pauser.join()
        origin.wait_idle(timeout=5)
        assert time.monotonic() - paused_at < 1.0
        served = origin.bytes_served("p.bin")
        with pytest.raises(TimeoutError):
            origin.wait_requests("p.bin", len(origin.requests_for("p.bin")) + 1, timeout=0.3)
        assert origin.bytes_served("p.bin") == served
        assert handle.info().state is State.PAUSED
        handle.resume()
        assert handle.wait(timeout=10).sha256 == sha(data)


def test_wait_with_a_timeout_leaves_the_download_running(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(1 * MiB, seed=10)
    origin.add_file("w.bin", data)
    origin.set_default("w.bin", Fault(rate_bytes_per_s=2 * MiB))
    with SyncDownloadManager(download_config=config(), state_dir=state_dir) as mgr:
        handle = mgr.add(origin.url("w.bin"), tmp_path / "w.bin")
        with pytest.raises(TimeoutError):
            handle.wait(timeout=0.05)
        assert handle.info().state is State.RUNNING
        assert handle.wait(timeout=10).sha256 == sha(data)


def test_errors_reach_the_calling_thread(tmp_path: Path, state_dir: Path) -> None:
    with SyncDownloadManager(state_dir=state_dir) as mgr:
        with pytest.raises(InvalidInput):
            mgr.add("ftp://example.invalid/x", tmp_path / "x")
        with pytest.raises(KeyError):
            mgr.pause("d404")
        for bad in (-1, 0, float("nan")):
            with pytest.raises(ValueError):
                mgr.set_limit(bad)
        assert mgr.rate_limit is None


def test_close_wakes_waiting_threads_and_is_idempotent(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    origin.add_file("c.bin", blob(2 * MiB, seed=11))
    origin.set_default("c.bin", Fault(rate_bytes_per_s=512 * KiB))
    mgr = SyncDownloadManager(download_config=config(), state_dir=state_dir)
    handle = mgr.add(origin.url("c.bin"), tmp_path / "c.bin")
    origin.wait_bytes("c.bin", 64 * KiB)
    outcome: list[str] = []

    def waiter() -> None:
        try:
            handle.wait()
            outcome.append("completed")
        except ModelhaulError as exc:
            outcome.append(exc.category)

    thread = threading.Thread(target=waiter)
    thread.start()
    mgr.close()
    thread.join(timeout=5)
    assert outcome == ["cancelled"]
    mgr.close()  # twice is harmless
    with mgr:  # and so is leaving a with block after close
        pass
    with pytest.raises(RuntimeError):
        mgr.add(origin.url("c.bin"), tmp_path / "c.bin")
    assert (tmp_path / "c.bin.modelhaul.part").exists()


def test_calls_racing_close_all_return(origin: Origin, tmp_path: Path, state_dir: Path) -> None:
    origin.add_file("race.bin", blob(2 * MiB, seed=13))
    origin.set_default("race.bin", Fault(rate_bytes_per_s=512 * KiB))
    mgr = SyncDownloadManager(download_config=config(), state_dir=state_dir)
    handle = mgr.add(origin.url("race.bin"), tmp_path / "race.bin")
    ended: list[str] = []
    go = threading.Barrier(5)

    def hammer() -> None:
        go.wait()
        while True:
            try:
                handle.set_priority(1)
                handle.pause()
                handle.resume()
            except RuntimeError:
                ended.append("closed")
                return

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    go.wait()
    mgr.close()
    for thread in threads:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in threads)
    assert ended == ["closed"] * 4
    # After close, reading still works (nothing can change any more).
    assert handle.info().state is State.PAUSED


def test_blocking_calls_on_the_loop_thread_fail_instead_of_deadlocking(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    origin.add_file("l.bin", blob(256 * KiB, seed=12))
    caught: list[BaseException] = []
    with SyncDownloadManager(download_config=config(), state_dir=state_dir) as mgr:

        def on_event(event: TaskEvent) -> None:
            if event.kind == "state" and event.state is State.RUNNING and not caught:
                try:
                    mgr.wait(event.task_id, timeout=1)
                except RuntimeError as exc:
                    caught.append(exc)

        mgr.subscribe(on_event)
        handle = mgr.add(origin.url("l.bin"), tmp_path / "l.bin")
        handle.wait(timeout=10)
    assert len(caught) == 1


def test_loop_thread_runs_coroutines_and_calls() -> None:
    runner = LoopThread("test-loop")
    try:

        async def answer() -> int:
            return 42

        assert runner.run(answer()) == 42
        assert runner.call(threading.current_thread) is not threading.current_thread()
        with pytest.raises(ZeroDivisionError):
            runner.call(lambda: 1 / 0)
    finally:
        runner.stop()
    runner.stop()


def new_loop_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.name == "modelhaul-manager" and t.is_alive()
    ]


def test_a_manager_that_cannot_start_stops_its_loop_thread(
    monkeypatch: pytest.MonkeyPatch, state_dir: Path
) -> None:
    class Unstartable(DownloadManager):
        async def __aenter__(self) -> DownloadManager:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(sync, "DownloadManager", Unstartable)  # a start-up failure on demand
    before = set(threading.enumerate())
    with pytest.raises(OSError, match="No space left"):
        SyncDownloadManager(state_dir=state_dir)
    assert new_loop_threads(before) == []


def test_ctrl_c_while_the_manager_starts_propagates_and_stops_its_loop_thread(
    monkeypatch: pytest.MonkeyPatch, state_dir: Path
) -> None:
    """An interrupt is not an error to handle: it reaches the caller, and no thread is left."""
    starting = threading.Event()

    class NeverStarts(DownloadManager):
        async def __aenter__(self) -> DownloadManager:
            starting.set()
            await asyncio.Event().wait()
            return self

    monkeypatch.setattr(sync, "DownloadManager", NeverStarts)
    main = threading.main_thread()
    assert threading.current_thread() is main, "signals reach the main thread only"

    def press_ctrl_c() -> None:
        if starting.wait(10):
            signal.pthread_kill(main.ident or 0, signal.SIGINT)

    before = set(threading.enumerate())
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press_ctrl_c)
    try:
        presser.start()
        with pytest.raises(KeyboardInterrupt):
            SyncDownloadManager(state_dir=state_dir)
    finally:
        presser.join()
        signal.signal(signal.SIGINT, previous)
    assert new_loop_threads(before) == []


def test_stopping_a_loop_thread_cancels_what_still_runs_on_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A coroutine still pending when the loop stops is cancelled and finished there, not left
    for the garbage collector ("Task was destroyed but it is pending!")."""
    runner = LoopThread("test-loop")
    started, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.run_coroutine_threadsafe(forever(), runner.loop)
    assert started.wait(10)
    runner.stop()
    gc.collect()
    assert cancelled.is_set()
    assert runner.loop.is_closed()
    assert "destroyed but it is pending" not in caplog.text
