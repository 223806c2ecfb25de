"""Blocking facade: the async core driven by an event loop in a background thread.

Every method may be called from any thread (a GUI, a web handler, a plain script). Calls are
marshalled onto the loop thread, so the async core keeps a single-threaded view of its state.
Event callbacks run on the loop thread: keep them short, or hand work to your own thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from .config import DownloadConfig, ManagerConfig
from .engine.downloader import Downloader, ProgressCallback
from .events import Result, TaskEvent
from .manager.downloads import DownloadManager
from .manager.tasks import TaskInfo

T = TypeVar("T")


class LoopThread:
    """An event loop running forever in a daemon thread.

    A call from another thread always returns: with the result, with the exception, or with
    ``RuntimeError`` once the loop has stopped; it never waits for a loop that is gone.
    """

    def __init__(self, name: str = "modelhaul-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._stopped = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop and wait for its result here.

        Raises:
            TimeoutError: not done within ``timeout`` seconds; the coroutine is cancelled.
            RuntimeError: the loop has stopped, or this is the loop thread itself (waiting
                there for the loop would wait forever).
        """
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError(
                "a blocking call on the manager's own thread would deadlock; "
                "from an event callback, use the non-blocking calls (pause, resume, ...)"
            )
        with self._lock:
            if self._stopped:
                coro.close()
                raise RuntimeError("the loop thread has stopped")
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self._pending.add(future)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise
        finally:
            with self._lock:
                self._pending.discard(future)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Call a plain function on the loop thread and return its result here."""
        if self.in_loop_thread():
            return fn(*args)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def invoke() -> None:
            try:
                result = fn(*args)
            except Exception as exc:  # delivered to the calling thread
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(exc)
            else:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_result(result)

        with self._lock:
            if self._stopped:
                raise RuntimeError("the loop thread has stopped")
            self.loop.call_soon_threadsafe(invoke)
            self._pending.add(future)
        try:
            return future.result()
        finally:
            with self._lock:
                self._pending.discard(future)

    def stop(self) -> None:
        """Stop the loop and its thread; calls still waiting get ``RuntimeError``.

        Calling it again does nothing.
        """
        if self.in_loop_thread():
            raise RuntimeError("the loop thread cannot stop itself")
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()
        with self._lock:
            stranded = list(self._pending)
        for future in stranded:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(RuntimeError("the loop thread stopped before answering"))


def download(
    url: str,
    path: str | os.PathLike[str] | None = None,
    *,
    directory: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    config: DownloadConfig | None = None,
    on_progress: ProgressCallback | None = None,
    headers: Mapping[str, str] | None = None,
    state_dir: Path | None = None,
) -> Result:
    """Download one URL, blocking; see ``Downloader.download`` for the behaviour.

    Example::

        result = modelhaul.download(url, "model.safetensors", sha256=digest)
    """

    async def go() -> Result:
        async with Downloader(config, state_dir=state_dir) as dl:
            if path is None and directory is None:
                folder: str | os.PathLike[str] | None = "."
            else:
                folder = directory
            return await dl.download(
                url,
                path,
                directory=folder,
                sha256=sha256,
                on_progress=on_progress,
                headers=headers,
            )

    runner = LoopThread("modelhaul-download")
    try:
        return runner.run(go())
    finally:
        runner.stop()


class SyncHandle:
    """A download handle usable from any thread."""

    def __init__(self, owner: SyncDownloadManager, task_id: str) -> None:
        self._owner = owner
        self.id = task_id

    def __repr__(self) -> str:
        return f"SyncHandle({self.id!r})"

    def pause(self) -> None:
        self._owner.pause(self.id)

    def resume(self) -> None:
        self._owner.resume(self.id)

    def cancel(self) -> None:
        self._owner.cancel(self.id)

    def set_priority(self, priority: int) -> None:
        self._owner.set_priority(self.id, priority)

    def set_limit(self, rate_bytes_per_s: float | None) -> None:
        self._owner.set_task_limit(self.id, rate_bytes_per_s)

    def info(self) -> TaskInfo:
        return self._owner.info(self.id)

    def wait(self, timeout: float | None = None) -> Result:
        return self._owner.wait(self.id, timeout)


class SyncDownloadManager:
    """``DownloadManager`` for threaded code.

    Example::

        with SyncDownloadManager() as mgr:
            h = mgr.add(url, "model.bin")
            h.pause(); h.resume()
            print(h.wait().sha256)
    """

    def __init__(
        self,
        config: ManagerConfig | None = None,
        *,
        download_config: DownloadConfig | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self._thread = LoopThread("modelhaul-manager")
        self._close_lock = threading.Lock()

        async def make() -> DownloadManager:
            mgr = DownloadManager(config, download_config=download_config, state_dir=state_dir)
            await mgr.__aenter__()
            return mgr

        # A manager that does not start (an error, or Ctrl-C while this thread waits) stops
        # its loop thread; nothing is caught, so the interrupt or cancel goes on to the caller.
        with contextlib.ExitStack() as on_failure:
            on_failure.callback(self._thread.stop)
            self.manager = self._thread.run(make())
            on_failure.pop_all()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Pause what still runs (partial data kept), wake every waiting thread with
        ``Cancelled``, and stop the loop thread. Calling it again does nothing."""
        if self._thread.in_loop_thread():
            raise RuntimeError("close the manager from your own thread, not an event callback")
        with self._close_lock:
            if self._thread.stopped:
                return
            try:
                self._thread.run(self.manager.close())
            finally:
                self._thread.stop()

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._thread.stopped:
            raise RuntimeError("the manager is closed")
        return self._thread.call(fn, *args)

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        # Once the loop thread is gone nothing changes any more: answer directly.
        if self._thread.loop.is_closed():
            return fn(*args)
        return self._call(fn, *args)

    def add(
        self,
        url: str,
        dest: str | os.PathLike[str] | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        sha256: str | None = None,
        expected_size: int | None = None,
        priority: int = 0,
        rate_limit: float | None = None,
        headers: Mapping[str, str] | None = None,
        paused: bool = False,
    ) -> SyncHandle:
        """Queue a download and return its handle at once; see ``DownloadManager.add``."""
        handle = self._call(
            lambda: self.manager.add(
                url,
                dest,
                directory=directory,
                sha256=sha256,
                expected_size=expected_size,
                priority=priority,
                rate_limit=rate_limit,
                headers=headers,
                paused=paused,
            )
        )
        return SyncHandle(self, handle.id)

    def pause(self, task_id: str) -> None:
        self._call(self.manager.pause, task_id)

    def resume(self, task_id: str) -> None:
        self._call(self.manager.resume, task_id)

    def cancel(self, task_id: str) -> None:
        self._call(self.manager.cancel, task_id)

    def set_priority(self, task_id: str, priority: int) -> None:
        self._call(self.manager.set_priority, task_id, priority)

    def set_task_limit(self, task_id: str, rate_bytes_per_s: float | None) -> None:
        self._call(self.manager.set_task_limit, task_id, rate_bytes_per_s)

    def set_limit(self, rate_bytes_per_s: float | None) -> None:
        self._call(self.manager.set_limit, rate_bytes_per_s)

    @property
    def rate_limit(self) -> float | None:
        """The global bandwidth cap in bytes per second (None: unlimited)."""
        return self._read(lambda: self.manager.rate_limit)

    def info(self, task_id: str) -> TaskInfo:
        return self._read(self.manager.info, task_id)

    def tasks(self) -> list[TaskInfo]:
        return self._read(self.manager.tasks)

    def wait(self, task_id: str, timeout: float | None = None) -> Result:
        return self._thread.run(self.manager.wait(task_id), timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.run(self.manager.join(), timeout)

    def subscribe(self, callback: Callable[[TaskEvent], None]) -> Callable[[], None]:
        """``callback`` runs on the manager's loop thread."""
        unsubscribe = self._call(self.manager.subscribe, callback)
        return lambda: self._call(unsubscribe)
