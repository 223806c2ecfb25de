"""Blocking facade: the async core driven by an event loop in a background thread.

Every method may be called from any thread (a GUI, a web handler, a plain script). Calls are
marshalled onto the loop thread, so the async core keeps a single-threaded view of its state.
Event callbacks run on the loop thread: keep them short, or hand work to your own thread.

Nothing is written twice: ``SyncHandle`` is one generic wrapper that runs the public calls of
any object of the async core on the loop thread (coroutines become blocking calls with a
timeout), so the manager's and the download handle's calls are each written once, in the async
core. ``SyncDownloadManager`` adds only what the async manager cannot know: starting and
stopping its loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import os
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, ParamSpec, Self, TypeVar

from .config import DownloadConfig, ManagerConfig
from .engine.downloader import Downloader
from .engine.transfer import ProgressCallback
from .events import Result
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
        try:
            self.loop.run_forever()
        finally:
            self._shut_down()

    def _shut_down(self) -> None:
        """What ``asyncio.run`` does on its way out: cancel the tasks still pending and let
        them finish (a task left pending is destroyed with the loop, and says so), then close."""
        left = asyncio.all_tasks(self.loop)
        for task in left:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()

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
        except concurrent.futures.CancelledError:
            if self._stopped:  # cancelled by stop(), not by the coroutine itself
                raise RuntimeError("the loop thread stopped before answering") from None
            raise
        finally:
            # Given up (a timeout, or Ctrl-C while this thread waits): the coroutine is
            # cancelled, not left pending on the loop.
            future.cancel()
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
        self._thread.join(timeout=10)  # the thread cancels what is left and closes the loop
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


class SyncHandle(Generic[T]):
    """An object of the async core (a manager, a download handle) usable from any thread.

    The one generic handle: every public call of the wrapped object runs on the loop thread.
    A coroutine method becomes a blocking call that takes one more argument, ``timeout``
    (seconds; ``TimeoutError`` then, and the coroutine is cancelled; the download goes on). A
    download handle it returns comes back wrapped the same way, and so does a function (an
    unsubscriber). Once the loop thread has stopped, calls that change something raise
    ``RuntimeError``; reads (``READS``) answer directly, as nothing changes any more.

    Example::

        h = mgr.add(url, "model.bin")    # a SyncHandle of the download's DownloadHandle
        h.pause(); h.resume()
        result = h.wait(timeout=60)
    """

    READS = frozenset({"info", "tasks", "rate_limit"})
    # What only the loop's owner may call: the object's lifecycle, and async iteration.
    LOOP_ONLY = frozenset({"open", "aclose", "close", "events"})

    def __init__(self, thread: LoopThread, target: T) -> None:
        self._thread = thread
        self._target = target

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._target!r})"

    def __dir__(self) -> list[str]:
        public = (n for n in dir(self._target) if not n.startswith("_"))
        return sorted({*super().__dir__(), *public})

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks. Private names stay private, and looking
        # them up while the object is half made (copy, pickle) must not recurse.
        if name.startswith("_") or name in self.LOOP_ONLY:
            raise AttributeError(name)
        target = self._target
        if isinstance(inspect.getattr_static(target, name), property):
            return self._on_loop(name, lambda: getattr(target, name))()
        attr = getattr(target, name)
        if not callable(attr):
            return attr  # a plain value fixed at creation (a download's id)
        if inspect.iscoroutinefunction(attr):
            return self._blocking(attr)
        return self._on_loop(name, attr)

    def _on_loop(self, name: str, method: Callable[P, R]) -> Callable[P, Any]:
        @functools.wraps(method)
        def call(*args: P.args, **kwargs: P.kwargs) -> Any:
            if name in self.READS and self._thread.loop.is_closed():
                return method(*args, **kwargs)
            if self._thread.stopped:
                raise RuntimeError("the manager is closed")
            return self._wrap(self._thread.call(method, *args, **kwargs))

        return call

    def _blocking(self, method: Callable[..., Coroutine[Any, Any, R]]) -> Callable[..., Any]:
        signature = _with_timeout(inspect.signature(method))

        @functools.wraps(method)
        def wait(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            timeout = bound.arguments.pop("timeout", None)
            return self._wrap(self._thread.run(method(*bound.args, **bound.kwargs), timeout))

        wait.__signature__ = signature  # type: ignore[attr-defined]
        return wait

    def _wrap(self, result: R) -> R | SyncHandle[Any] | Callable[[], Any]:
        if isinstance(result, DownloadHandle):
            return SyncHandle(self._thread, result)
        if inspect.isfunction(result) or inspect.ismethod(result):
            return functools.partial(self._thread.call, result)
        return result


def _with_timeout(signature: inspect.Signature) -> inspect.Signature:
    """``signature`` with ``timeout: float | None = None`` after its positional parameters."""
    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind >= p.VAR_POSITIONAL), len(params))
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if at == len(params) else params[at].kind
    if kind is inspect.Parameter.VAR_POSITIONAL:
        kind = inspect.Parameter.KEYWORD_ONLY
    timeout = inspect.Parameter("timeout", kind, default=None, annotation="float | None")
    return signature.replace(parameters=[*params[:at], timeout, *params[at:]])


class SyncDownloadManager(SyncHandle[DownloadManager]):
    """``DownloadManager`` for threaded code: its calls, run on its own loop thread.

    ``add`` returns a ``SyncHandle`` of the download; ``wait`` and ``join`` block, with an
    optional ``timeout``; event callbacks (``subscribe``) run on the loop thread.

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
        # The arguments repeat DownloadManager's, so that this face is typed and documented.
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
