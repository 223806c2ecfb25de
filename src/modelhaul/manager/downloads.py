"""DownloadManager: many downloads at once, each steered by its handle.

The manager owns one Downloader (one connection pool) and runs each file in its own asyncio
task, so pausing or cancelling one never disturbs another. Every method that steers (add,
pause, resume, cancel, set_priority, set_limit) returns at once and must be called on the
manager's event loop; ``sync.SyncDownloadManager`` makes them callable from any thread. Which
file starts next is ``queue``'s decision, bandwidth is ``limits``', events go out through
``fanout``, and ``claims`` keeps one file to one download.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from ..config import DownloadConfig, ManagerConfig
from ..disk.partials import discard_partial, is_downloading
from ..engine.downloader import Downloader
from ..errors import Cancelled
from ..events import Phase, Progress, Result, State, TaskEvent
from ..http.session import Transport
from ..policy.lifecycle import AsyncResource
from ..policy.paths import TargetPaths, plan_paths
from ..policy.ratelimit import TokenBucket
from ..policy.segments import Demand
from ..policy.slices import RangeSources
from ..policy.urls import check_url
from ..policy.validate import check_sha256
from .claims import Claims, Key, locked_among, materialize_aliases
from .fanout import EventCallback, EventStream, Fanout, progress_event, state_event, total_event
from .handle import DownloadHandle
from .limits import FairShare, TaskBucket, check_rate, within_host_limit
from .queue import TaskQueue
from .tasks import ACTIVE, Task, TaskInfo, as_error, completed_again, fail, new_future


class DownloadManager(AsyncResource):
    """Run many downloads under limits, with live control and events.

    Example::

        async with DownloadManager() as mgr:
            a = mgr.add(url_a, "a.bin", priority=10)
            b = mgr.add(url_b, "b.bin")
            b.pause()
            await a.wait()
    """

    def __init__(
        self,
        config: ManagerConfig | None = None,
        *,
        download_config: DownloadConfig | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.config = config or ManagerConfig()
        dc = within_host_limit(download_config or DownloadConfig(), self.config)
        transport = Transport.for_config(
            dc,
            limit=self.config.max_connections,
            limit_per_host=self.config.max_connections_per_host,
        )
        self.downloader = Downloader(
            dc,
            # The global cap is enforced by the downloads' own buckets, whose fair shares add
            # up to it: a shared bucket in front of them would queue first come, first served
            # again and hide from the rebalance which download is held back.
            limiter=TokenBucket(None),
            state_dir=state_dir,
            transport=transport,
        )
        self._transport = transport
        self._tasks: dict[str, Task] = {}
        self._queue = TaskQueue(self.config)
        self._bandwidth = FairShare(
            self._tasks, self.config.rate_bytes_per_s or dc.rate.rate_bytes_per_s
        )
        self._claims = Claims()
        self._seq = itertools.count()
        self._fanout = Fanout()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        await self._transport.open()

    async def aclose(self) -> None:
        """Pause everything still running (partial data kept) and release connections.

        Whoever still waits for an unfinished download gets ``Cancelled``; event streams end.
        """
        if self._closed:
            return
        self._closed = True
        self._bandwidth.close()
        runners = []
        for task in self._tasks.values():
            if task.runner is not None and not task.runner.done():
                task.stop_run()
                runners.append(task.runner)
        for runner in runners:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
        await asyncio.sleep(0)  # let the runners' done callbacks record their states
        for task in self._tasks.values():
            if task.state is State.QUEUED:
                self._set_state(task, State.PAUSED)
            if not task.future.done():
                closed = Cancelled(f"the manager closed before download {task.id} finished")
                fail(task.future, closed)
        self._fanout.end_streams()
        await self._transport.close()

    close = aclose  # the name the manager's callers have always used

    # ------------------------------------------------------------------ adding

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
        demand: Demand | None = None,
        sources: RangeSources | None = None,
        known_absent: bool = False,
    ) -> DownloadHandle:
        """Queue a download and return its handle at once.

        Adding the same URL and target again (or the same expected SHA-256 for another path)
        returns the existing download: the bytes are fetched once. ``demand``: ranges readers
        of the partial file wait for (a new download only), fetched before plan order.
        ``sources`` gives each range its own source (peers, ``policy.slices``); ``url`` still
        names the download. ``known_absent``: as Downloader.download's, for the first run.
        """
        # The target arguments repeat Downloader.download's: this is the manager's own call.
        if self._closed:
            raise RuntimeError("the manager is closed")
        check_url(url)
        sha256 = check_sha256(sha256)
        paths = plan_paths(url, dest, directory)
        # One partial file is one transfer, whatever checksum each caller knows; one checksum
        # is one blob, wherever each caller wants it.
        keys: list[tuple[str, ...]] = [("target", url, str(paths.part))]
        if sha256:
            keys.insert(0, ("sha256", sha256))
        existing = self._claims.sharable(keys)
        if existing is not None:
            alias = existing.paths.dest != paths.dest and not paths.name_pending
            if alias:
                existing.aliases.append(paths.dest)
            if existing.state is not State.COMPLETED:
                return DownloadHandle(self, existing.id)
            materialize_aliases(existing)
            return self._add_done(existing, paths.dest if alias else None, priority, rate_limit)
        task = self._new_task(
            url,
            paths,
            # (a Path is kept: building it again costs more than the rest of an add)
            dest=None if dest is None else _as_path(dest),
            directory=None if directory is None else _as_path(directory),
            sha256=sha256,
            expected_size=expected_size,
            headers=dict(headers or {}),
            priority=priority,
            rate_limit=rate_limit,
        )
        task.demand, task.sources, task.known_absent = demand, sources, known_absent
        self._claims.share(keys, task)
        self._set_state(task, State.PAUSED if paused else State.QUEUED)
        self._schedule()
        return DownloadHandle(self, task.id)

    def _new_task(
        self,
        url: str,
        paths: TargetPaths,
        *,
        dest: Path | None,
        directory: Path | None,
        sha256: str | None,
        expected_size: int | None,
        headers: dict[str, str],
        priority: int,
        rate_limit: float | None,
    ) -> Task:
        seq = next(self._seq)
        task = Task(
            id=f"d{seq + 1}",
            url=url,
            paths=paths,
            dest=dest,
            directory=directory,
            sha256=sha256,
            expected_size=expected_size,
            headers=headers,
            priority=priority,
            seq=seq,
            rate_limit=rate_limit,
            limiter=TaskBucket(rate_limit),
            future=new_future(),
            size=expected_size,
        )
        self._tasks[task.id] = task
        return task

    def _add_done(
        self, done: Task, alias: Path | None, priority: int, rate_limit: float | None
    ) -> DownloadHandle:
        """A new download of a file this manager already completed: done at once, with a
        result of its own that says so (nothing was transferred for it)."""
        assert done.result is not None
        result = completed_again(done.result, alias)
        task = self._new_task(
            done.url,
            done.paths,
            dest=alias or done.dest,
            directory=done.directory,
            sha256=result.sha256,
            expected_size=result.size,
            headers=done.headers,
            priority=priority,
            rate_limit=rate_limit,
        )
        task.result = result
        task.future.set_result(result)
        self._set_state(task, State.COMPLETED)
        return DownloadHandle(self, task.id)

    # ------------------------------------------------------------------ steering

    def handle(self, task_id: str) -> DownloadHandle:
        self._get(task_id)
        return DownloadHandle(self, task_id)

    def _get(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise KeyError(f"no download with id {task_id!r}") from None

    def pause(self, task_id: str) -> None:
        """Stop the download's connections, keep its partial data and journal, free its slot."""
        task = self._get(task_id)
        if task.state is State.QUEUED:
            self._set_state(task, State.PAUSED)
        elif task.state in ACTIVE and task.runner is not None:
            task.stop_run()

    def resume(self, task_id: str) -> None:
        """Queue a paused (or failed) download again; it continues from its journal."""
        task = self._get(task_id)
        if self._closed:
            return
        if task.state in ACTIVE and task.pause_requested and not task.cancel_requested:
            # Still winding down: queue it again as soon as it has stopped.
            task.resume_requested = True
        elif task.state is State.PAUSED:
            self._set_state(task, State.QUEUED)
            self._schedule()
        elif task.state is State.FAILED:
            # A failed download may be retried: it gets a fresh future.
            task.future = new_future()
            task.error = None
            self._set_state(task, State.QUEUED)
            self._schedule()

    def cancel(self, task_id: str) -> None:
        task = self._get(task_id)
        if task.state.final:
            return
        if task.state in ACTIVE and task.runner is not None:
            task.cancel_requested = True
            task.runner.cancel()
            return
        self._finish_cancelled(task)

    def set_priority(self, task_id: str, priority: int) -> None:
        task = self._get(task_id)
        task.priority = priority
        if task in self._queue.queued:
            self._queue.push(task)
        self._publish_state(task)
        self._schedule()

    def set_task_limit(self, task_id: str, rate_bytes_per_s: float | None) -> None:
        """Cap one download (None: no cap of its own); effective at once while it runs."""
        task = self._get(task_id)
        check_rate(rate_bytes_per_s)
        task.rate_limit = rate_bytes_per_s
        self._bandwidth.rebalance()

    def set_limit(self, rate_bytes_per_s: float | None) -> None:
        """Change the global bandwidth cap (None: unlimited); effective within a fraction of
        a second for running downloads."""
        check_rate(rate_bytes_per_s)
        self._bandwidth.set_limit(rate_bytes_per_s)

    @property
    def rate_limit(self) -> float | None:
        """The global bandwidth cap in bytes per second (None: unlimited)."""
        return self._bandwidth.rate_limit

    def pause_all(self) -> None:
        for task_id in list(self._tasks):
            self.pause(task_id)

    # ------------------------------------------------------------------ observing

    def info(self, task_id: str) -> TaskInfo:
        return self._get(task_id).info()

    def tasks(self) -> list[TaskInfo]:
        return [self.info(t) for t in self._tasks]

    async def wait(self, task_id: str) -> Result:
        return await asyncio.shield(self._get(task_id).future)

    def last_progress(self, task_id: str) -> Progress | None:
        """The last progress the download reported while it ran (None before any)."""
        return self._get(task_id).last

    async def join(self) -> None:
        """Wait until nothing is queued or running (paused downloads do not count)."""
        await self._queue.wait_idle()

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback`` on the manager's loop for every event; returns an unsubscriber."""
        return self._fanout.subscribe(callback)

    def events(self) -> EventStream:
        """Every event from this call on, in order, until the manager closes.

        Progress events may be dropped if you lag far behind; state events never are.

        Example::

            async for event in mgr.events():
                if event.kind is EventKind.STATE and event.task_id == h.id and event.state.final:
                    break
        """
        stream = self._fanout.stream()
        if self._closed:
            stream.end_nowait()
        return stream

    # ------------------------------------------------------------------ scheduling

    def _schedule(self) -> None:
        if self._closed:
            return
        while (task := self._queue.next_nowait()) is not None:
            self._start(task)

    def _start(self, task: Task) -> None:
        task.pause_requested = task.cancel_requested = False
        task.received_before += task.received
        task.received = 0
        if task.started_once or task.rate_limit is not None:
            # A fresh bucket: a paused run's connections booked bytes they never received (a
            # bucket never gives bookings back), and a capped one saved none up while queued.
            task.limiter = TaskBucket(task.rate_limit)
        task.started_once = True
        self._set_state(task, State.RUNNING)
        task.runner = asyncio.create_task(self._run(task), name=f"modelhaul-{task.id}")
        task.runner.add_done_callback(lambda r, t=task: self._on_runner_done(t, r))

    async def _run(self, task: Task) -> Result:
        result = await self.downloader.download(
            task.url,
            task.dest,
            directory=task.directory,
            sha256=task.sha256,
            expected_size=task.expected_size,
            headers=task.headers,
            limiters=(task.limiter,),
            on_progress=lambda p: self._on_progress(task, p),
            on_phase=lambda phase, size: self._on_phase(task, phase, size),
            on_target=lambda path: self._claims.claim(task, path),
            demand=task.demand,
            sources=task.sources,
            known_absent=task.take_known_absent(),
        )
        if task.received_before:
            result = replace(
                result, bytes_transferred=task.received_before + result.bytes_transferred
            )
        task.result = result
        materialize_aliases(task)
        return result

    def _on_runner_done(self, task: Task, runner: asyncio.Task[Result]) -> None:
        task.runner = None
        if runner.cancelled():
            if task.cancel_requested:
                self._finish_cancelled(task)
            else:
                self._set_state(task, State.PAUSED)
                if task.resume_requested and not self._closed:
                    task.resume_requested = False
                    self._set_state(task, State.QUEUED)
        else:
            exc = runner.exception()
            if exc is None:
                result = runner.result()
                task.result = result
                self._set_state(task, State.COMPLETED)
                if not task.future.done():
                    task.future.set_result(result)
            else:
                task.error = as_error(exc)
                self._set_state(task, State.FAILED)
                if not task.future.done():
                    fail(task.future, task.error)
        self._schedule()

    def _finish_cancelled(self, task: Task) -> None:
        with contextlib.suppress(OSError):
            self.discard_partial(task.paths)
        self._set_state(task, State.CANCELLED)
        if not task.future.done():
            fail(task.future, Cancelled(f"download {task.id} was cancelled"))
        self._schedule()

    # ------------------------------------------------------------------ partial files

    def is_downloading(self, paths: TargetPaths) -> bool:
        """True while some process (this one or another) holds the download lock of ``paths``."""
        return is_downloading(self.downloader.lock_dir, paths.part)

    def downloading_among(self, targets: Iterable[tuple[Key, TargetPaths]]) -> list[Key]:
        """The keys of the ``targets`` some process holds the download lock of."""
        return locked_among(self.downloader.lock_dir, targets)

    def discard_partial(self, paths: TargetPaths) -> None:
        """Delete the partial data and journal of ``paths`` (what cancelling it means)."""
        discard_partial(paths.dest, part=paths.part, journal=paths.journal)

    # ------------------------------------------------------------------ events

    def _on_phase(self, task: Task, phase: Phase, size: int | None) -> None:
        if phase is Phase.PROBED:
            task.size = size
            if size is not None:
                self._queue.presume_small = size < self.config.small_file_bytes
            self._schedule()
        elif phase is Phase.VERIFYING and task.state is State.RUNNING:
            self._set_state(task, State.VERIFYING)

    def _on_progress(self, task: Task, p: Progress) -> None:
        task.received = p.bytes_received
        if task.state not in ACTIVE:
            return
        task.last = p
        task.size = p.total
        if not self._fanout.listened():
            return
        self._publish(progress_event(task, p))
        if self._fanout.total_due():
            self._publish(total_event(self._tasks.values(), idle=self._queue.idle()))

    def _set_state(self, task: Task, state: State) -> None:
        was_running = task.state is State.RUNNING
        task.state = state
        self._queue.index(task)
        self._publish_state(task)
        if was_running != (state is State.RUNNING):
            self._bandwidth.running_changed(task)
        if self._queue.became_idle() and self._fanout.listened():
            # the last word on the aggregate
            self._publish(total_event(self._tasks.values(), idle=True))

    def _publish_state(self, task: Task) -> None:
        if self._fanout.listened():
            self._publish(state_event(task))

    def _publish(self, event: TaskEvent) -> None:
        self._fanout.publish(event)


def _as_path(path: str | os.PathLike[str]) -> Path:
    return path if isinstance(path, Path) else Path(path)
