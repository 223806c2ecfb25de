"""Blocking facade: the async core driven by an event loop in a background thread.

Every method may be called from any thread (a GUI, a web handler, a plain script). Calls are
marshalled onto the loop thread, so the async core keeps a single-threaded view of its state.
Event callbacks run on the loop thread: keep them short, or hand work to your own thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from .config import DownloadConfig, ManagerConfig
from .engine import Downloader, ProgressCallback
from .events import Result, TaskEvent
from .manager import DownloadManager, TaskInfo

T = TypeVar("T")


class LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self, name: str = "modelhaul-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop and wait for its result here."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Call a plain function on the loop thread and return its result here."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def invoke() -> None:
            try:
                fut.set_result(fn(*args))
            except Exception as exc:  # delivered to the calling thread
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(invoke)
        return fut.result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


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

        async def make() -> DownloadManager:
            mgr = DownloadManager(config, download_config=download_config, state_dir=state_dir)
            await mgr.__aenter__()
            return mgr

        self.manager = self._thread.run(make())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._thread.run(self.manager.close())
        self._thread.stop()

    def add(self, url: str, dest: str | os.PathLike[str] | None = None, **kw: Any) -> SyncHandle:
        handle = self._thread.call(lambda: self.manager.add(url, dest, **kw))
        return SyncHandle(self, handle.id)

    def pause(self, task_id: str) -> None:
        self._thread.call(self.manager.pause, task_id)

    def resume(self, task_id: str) -> None:
        self._thread.call(self.manager.resume, task_id)

    def cancel(self, task_id: str) -> None:
        self._thread.call(self.manager.cancel, task_id)

    def set_priority(self, task_id: str, priority: int) -> None:
        self._thread.call(self.manager.set_priority, task_id, priority)

    def set_task_limit(self, task_id: str, rate_bytes_per_s: float | None) -> None:
        self._thread.call(self.manager.set_task_limit, task_id, rate_bytes_per_s)

    def set_limit(self, rate_bytes_per_s: float | None) -> None:
        self._thread.call(self.manager.set_limit, rate_bytes_per_s)

    def info(self, task_id: str) -> TaskInfo:
        return self._thread.call(self.manager.info, task_id)

    def tasks(self) -> list[TaskInfo]:
        return self._thread.call(self.manager.tasks)

    def wait(self, task_id: str, timeout: float | None = None) -> Result:
        return self._thread.run(self.manager.wait(task_id), timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.run(self.manager.join(), timeout)

    def subscribe(self, callback: Callable[[TaskEvent], None]) -> Callable[[], None]:
        """``callback`` runs on the manager's loop thread."""
        unsubscribe = self._thread.call(self.manager.subscribe, callback)
        return lambda: self._thread.call(unsubscribe)
