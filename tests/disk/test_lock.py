"""disk.lock: the one async file lock; above all, a cancelled acquire never leaves it held."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from filelock import FileLock
from filelock import Timeout as LockTimeout

from modelhaul.disk.lock import AsyncFileLock


def free(path: Path) -> bool:
    """True if another holder could take the lock at once (and gives it back)."""
    probe = FileLock(str(path), thread_local=False)
    try:
        probe.acquire(timeout=0)
    except LockTimeout:
        return False
    probe.release()
    return True


async def test_acquires_at_once_when_free_and_releases_on_exit(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "a.lock"  # the folder is created
    waits: list[int] = []
    async with AsyncFileLock(path, on_wait=lambda: waits.append(1)) as lock:
        assert not free(path)
        assert not lock.waited
    assert free(path)
    assert waits == []


async def test_waits_for_another_holder_without_blocking_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "b.lock"
    holder = FileLock(str(path), thread_local=False)
    holder.acquire()
    waits: list[int] = []
    lock = AsyncFileLock(path, on_wait=lambda: waits.append(1), poll_s=0.05)
    task = asyncio.create_task(lock.acquire())
    ticks = 0
    for _ in range(10):  # the loop keeps running while the acquire waits
        await asyncio.sleep(0.01)
        ticks += 1
    assert not task.done() and ticks == 10
    holder.release()
    await asyncio.wait_for(task, 5)
    assert lock.waited and waits == [1]
    assert not free(path)
    lock.release()
    assert free(path)


async def test_a_cancelled_acquire_never_leaves_the_lock_held(tmp_path: Path) -> None:
    """The waiting thread obtains the lock after the cancel; it must give it back."""
    path = tmp_path / "c.lock"
    holder = FileLock(str(path), thread_local=False)
    holder.acquire()
    lock = AsyncFileLock(path, poll_s=1.0)
    task = asyncio.create_task(lock.acquire())
    await asyncio.sleep(0.1)  # now blocked in its thread, for up to a second
    task.cancel()
    # Freed while the thread still waits: the thread gets the lock after the cancel.
    threading.Timer(0.1, holder.release).start()
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the acquire was not cancelled")
    for _ in range(100):
        await asyncio.sleep(0.02)
        if free(path):
            break
    assert free(path)


async def test_many_cancelled_acquires_leave_the_lock_free(tmp_path: Path) -> None:
    path = tmp_path / "d.lock"
    holder = FileLock(str(path), thread_local=False)
    holder.acquire()
    locks = [AsyncFileLock(path, poll_s=0.3) for _ in range(4)]
    tasks = [asyncio.create_task(lk.acquire()) for lk in locks]
    await asyncio.sleep(0.05)
    for t in tasks:
        t.cancel()
    holder.release()
    await asyncio.gather(*tasks, return_exceptions=True)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if free(path):
            break
    assert free(path)
