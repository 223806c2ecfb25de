"""The one cross-process file lock of the library, acquired from asyncio without blocking it.

filelock does the locking; a waiting acquire runs in a thread for at most ``poll_s`` at a
time. Cancel-safe: a thread cannot be stopped, so a cancelled acquire leaves it running and
gives back whatever it obtains: a cancelled acquire never leaves the lock held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock
from filelock import Timeout as LockTimeout

from ..policy.lifecycle import AsyncResource


class AsyncFileLock(AsyncResource):
    """An exclusive lock on ``path`` held across processes, used as ``async with``.

    Args:
        path: the lock file (filelock creates it, and its folder when missing).
        on_wait: called once, if another holder makes this acquire wait.
        poll_s: how long one waiting attempt blocks its thread.

    Raises:
        OSError: the lock file cannot be created or opened.
    """

    def __init__(
        self, path: Path, *, on_wait: Callable[[], None] | None = None, poll_s: float = 0.5
    ) -> None:
        self.path = path
        # Not thread-local: it is acquired in a worker thread and released on the loop thread.
        self._lock = FileLock(str(path), thread_local=False)
        self._on_wait = on_wait
        self._poll_s = poll_s
        self.waited = False  # another holder made us wait: what it did may be done now

    def _acquire_within(self, timeout_s: float) -> bool:
        try:
            self._lock.acquire(timeout=timeout_s)
        except LockTimeout:
            return False
        return True

    def acquire_nowait(self) -> bool:
        """Take the lock if it is free now; whether it was. Never waits."""
        return self._acquire_within(0)

    async def acquire(self) -> None:
        """Wait until the lock is ours; cancelling the wait leaves it free."""
        if self._acquire_within(0):
            return
        self.waited = True
        if self._on_wait is not None:
            self._on_wait()
        while True:
            attempt = asyncio.ensure_future(asyncio.to_thread(self._acquire_within, self._poll_s))
            try:
                if await asyncio.shield(attempt):
                    return
            except asyncio.CancelledError:
                # The thread may still get the lock after we stopped waiting: give it back.
                attempt.add_done_callback(self._release_if_acquired)
                raise

    def _release_if_acquired(self, attempt: asyncio.Future[bool]) -> None:
        if not attempt.cancelled() and attempt.exception() is None and attempt.result():
            self._lock.release()

    def release(self) -> None:
        self._lock.release()

    @property
    def is_locked(self) -> bool:
        return self._lock.is_locked

    # ``async with``: AsyncResource enters by open and leaves by aclose, whatever happened.
    async def open(self) -> None:
        await self.acquire()

    async def aclose(self) -> None:
        self.release()


__all__ = ["AsyncFileLock"]
