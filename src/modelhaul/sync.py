"""Blocking facade: the async core driven by an event loop in a background thread.

Every method may be called from any thread (a GUI, a web handler, a plain script). Calls are
marshalled onto the loop thread, so the async core keeps a single-threaded view of its state.
Event callbacks run on the loop thread: keep them short, or hand work to your own thread.

Nothing is written twice: ``OnLoop`` wraps an object of the async core, and ``steer`` and
``read`` turn its methods into methods that run on the loop thread, so ``SyncHandle`` and
``SyncDownloadManager`` only name what they expose and write out what differs (blocking waits
with a timeout, handles wrapped for this thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar

from .config import DownloadConfig, ManagerConfig
from .engine.downloader import Downloader
from .engine.transfer import ProgressCallback
from .events import Result, TaskEvent
from .manager.downloads import DownloadManager
from .manager.handle import DownloadHandle

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


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

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call a plain function on the loop thread and return its result here."""
        if self.in_loop_thread():
            return fn(*args, **kwargs)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def invoke() -> None:
            try:
                result = fn(*args, **kwargs)
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

    # The parameters repeat Downloader.download's on purpose: this is its blocking face.
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


class OnLoop(Generic[T]):
    """An object of the async core, used from other threads through its loop thread."""

    def __init__(self, thread: LoopThread, target: T) -> None:
        self._thread = thread
        self._target = target

    def _call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        if self._thread.stopped:
            raise RuntimeError("the manager is closed")
        return self._thread.call(fn, *args, **kwargs)

    def _read(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        # Once the loop thread is gone nothing changes any more: answer directly.
        if self._thread.loop.is_closed():
            return fn(*args, **kwargs)
        return self._call(fn, *args, **kwargs)


def steer(method: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[OnLoop[Any], P], R]:
    """``method`` of the wrapped object, run on the loop thread; refused once it has stopped."""
    return _through(method, OnLoop._call)


def read(method: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[OnLoop[Any], P], R]:
    """``method`` of the wrapped object, run on the loop thread, or here once it has stopped."""
    return _through(method, OnLoop._read)


def _through(
    method: Callable[Concatenate[Any, P], R], run: Callable[..., Any]
) -> Callable[Concatenate[OnLoop[Any], P], R]:
    """``method`` of the wrapped object, handed to ``run`` (``OnLoop._call`` or ``_read``)."""
    name = method.__name__

    @functools.wraps(method)
    def on_loop(self: OnLoop[Any], /, *args: P.args, **kwargs: P.kwargs) -> R:
        # Looked up by name, so a subclass's override is the one that runs.
        result: R = run(self, getattr(self._target, name), *args, **kwargs)
        return result

    return on_loop


class SyncHandle(OnLoop[DownloadHandle]):
    """A download handle usable from any thread: ``DownloadHandle`` run on the loop thread."""

    def __init__(self, thread: LoopThread, handle: DownloadHandle) -> None:
        super().__init__(thread, handle)
        self.id = handle.id

    def __repr__(self) -> str:
        return f"SyncHandle({self.id!r})"

    pause = steer(DownloadHandle.pause)
    resume = steer(DownloadHandle.resume)
    cancel = steer(DownloadHandle.cancel)
    set_priority = steer(DownloadHandle.set_priority)
    set_limit = steer(DownloadHandle.set_limit)
    info = read(DownloadHandle.info)

    def wait(self, timeout: float | None = None) -> Result:
        """The result once completed; raises the categorised error, or Cancelled, or
        ``TimeoutError`` after ``timeout`` seconds."""
        return self._thread.run(self._target.wait(), timeout)


class SyncDownloadManager(OnLoop[DownloadManager]):
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
        thread = LoopThread("modelhaul-manager")
        self._close_lock = threading.Lock()

        async def make() -> DownloadManager:
            mgr = DownloadManager(config, download_config=download_config, state_dir=state_dir)
            await mgr.__aenter__()
            return mgr

        # A manager that does not start (an error, or Ctrl-C while this thread waits) stops
        # its loop thread; nothing is caught, so the interrupt or cancel goes on to the caller.
        with contextlib.ExitStack() as on_failure:
            on_failure.callback(thread.stop)
            super().__init__(thread, thread.run(make()))
            on_failure.pop_all()

    @property
    def manager(self) -> DownloadManager:
        """The async manager; call it only on its own loop thread."""
        return self._target

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
        # Written out, not steer()ed: the signature repeats DownloadManager.add's on purpose
        # (a typed, documented call for threaded code), and the handle is wrapped for this thread.
        handle = self._call(
            self.manager.add,
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
        return SyncHandle(self._thread, handle)

    # The same names as SyncHandle's on purpose: each facade names the calls of what it wraps.
    pause = steer(DownloadManager.pause)
    resume = steer(DownloadManager.resume)
    cancel = steer(DownloadManager.cancel)
    set_priority = steer(DownloadManager.set_priority)
    set_task_limit = steer(DownloadManager.set_task_limit)
    set_limit = steer(DownloadManager.set_limit)
    info = read(DownloadManager.info)
    tasks = read(DownloadManager.tasks)

    @property
    def rate_limit(self) -> float | None:
        """The global bandwidth cap in bytes per second (None: unlimited)."""
        return self._read(lambda: self.manager.rate_limit)

    def wait(self, task_id: str, timeout: float | None = None) -> Result:
        return self._thread.run(self.manager.wait(task_id), timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.run(self.manager.join(), timeout)

    def subscribe(self, callback: Callable[[TaskEvent], None]) -> Callable[[], None]:
        """``callback`` runs on the manager's loop thread."""
        unsubscribe = self._call(self.manager.subscribe, callback)
        return lambda: self._call(unsubscribe)
