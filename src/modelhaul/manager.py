"""Many downloads at once: a priority queue, limits, pause/resume/cancel, and events.

The manager owns one Downloader (one connection pool, one bandwidth bucket) and runs each file
in its own asyncio task, so pausing or cancelling one never disturbs another. Every method that
steers (add, pause, resume, cancel, set_priority, set_limit) returns at once and must be called
on the manager's event loop; ``sync.SyncDownloadManager`` makes them callable from any thread.

Scheduling: the highest priority first, a file already started before a new one of the same
priority, then first come first served. Small files (known to be under ``small_file_bytes``)
may run beside the large ones, since for them the round trip, not bandwidth, is the cost.

Bandwidth: under a global cap every running file gets its own bucket at a max-min fair share
(``policy.fairshare``), rebalanced twice a second, so a file on many connections cannot crowd
out one on a single connection, and what a slow file leaves unused goes to the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import itertools
import logging
import math
import os
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Self

from .config import DownloadConfig, ManagerConfig
from .engine.downloader import Downloader, TargetPaths, discard_partial, plan_paths
from .errors import Cancelled, DiskFull, ModelhaulError, PermissionDenied, TargetConflict
from .events import Progress, Result, State, TaskEvent
from .http.session import Transport
from .policy.fairshare import estimate_demand, water_fill
from .policy.ratelimit import TokenBucket
from .policy.urls import check_url

log = logging.getLogger(__name__)

EventCallback = Callable[[TaskEvent], None]
_ACTIVE = (State.RUNNING, State.VERIFYING)
_TOTAL_EVERY_S = 0.1
_QUEUE_MAX = 10_000
_REBALANCE_EVERY_S = 0.5


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A snapshot of one managed download."""

    id: str
    url: str
    path: str | None
    state: State
    priority: int
    bytes_done: int
    total: int | None
    speed_bytes_per_s: float
    eta_s: float | None
    rate_limit: float | None
    error: dict[str, str] | None
    result: dict[str, object] | None
    connections: int = 0  # open right now; known from the last progress tick
    bytes_received: int = 0  # over the network for this download, in this manager


class _TaskBucket(TokenBucket):
    """One download's bucket. It counts the bytes that passed and notes whether a connection
    had to wait, which tells the fair-share rebalance whether the download wants more."""

    def __init__(self, rate_bytes_per_s: float | None) -> None:
        super().__init__(rate_bytes_per_s)
        self.passed = 0
        self.waiting = 0  # connections parked in acquire() right now
        self.waited = False  # some connection had to wait since the last rebalance

    async def acquire(self, n: int) -> None:
        started = time.monotonic()
        self.waiting += 1
        try:
            await super().acquire(n)
        finally:
            self.waiting -= 1
        if time.monotonic() - started > 0.001:
            self.waited = True
        self.passed += n

    def wanted_more(self) -> bool:
        """A connection waited since the last call (or waits now, maybe for a large chunk)."""
        wanted, self.waited = self.waited or self.waiting > 0, False
        return wanted


class EventStream:
    """Every event from its creation on, in order; ends when the manager closes.

    Progress events are dropped, never state events, if the reader lags far behind.
    """

    def __init__(self, streams: list[EventStream]) -> None:
        self._queue: asyncio.Queue[TaskEvent | None] = asyncio.Queue()
        self._streams = streams
        streams.append(self)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> TaskEvent:
        event = await self._queue.get()
        if event is None:
            self.close()
            raise StopAsyncIteration
        return event

    def put_nowait(self, event: TaskEvent) -> None:
        if self._queue.qsize() < _QUEUE_MAX or event.kind != "progress":
            self._queue.put_nowait(event)

    def end_nowait(self) -> None:
        self._queue.put_nowait(None)

    def close(self) -> None:
        """Stop receiving events (the iterator still yields what it already holds)."""
        if self in self._streams:
            self._streams.remove(self)

    async def aclose(self) -> None:
        self.close()


@dataclass(slots=True, eq=False)
class _Task:
    id: str
    url: str
    paths: TargetPaths
    dest: Path | None
    directory: Path | None
    sha256: str | None
    expected_size: int | None
    headers: dict[str, str]
    priority: int
    seq: int
    rate_limit: float | None  # the caller's cap for this download
    limiter: _TaskBucket  # at the lower of rate_limit and the fair share
    future: asyncio.Future[Result]
    state: State = State.QUEUED
    started_once: bool = False
    queue_stamp: int = 0  # which of its entries in the queue heap is current
    size: int | None = None
    runner: asyncio.Task[Result] | None = None
    pause_requested: bool = False
    cancel_requested: bool = False
    resume_requested: bool = False  # resume() came while a pause was winding down
    share: float | None = None  # fair share of the global cap, while running under one
    passed_mark: int = 0
    last: Progress | None = None
    # Bytes received over the network by the runs that ended (paused, failed) and this one:
    # a result counts all its runs in this manager, not only the last.
    received_before: int = 0
    received: int = 0
    error: ModelhaulError | None = None
    result: Result | None = None
    aliases: list[Path] = field(default_factory=list)


class DownloadHandle:
    """What ``add`` returns: steer and await one download."""

    def __init__(self, manager: DownloadManager, task_id: str) -> None:
        self._manager = manager
        self.id = task_id

    def __repr__(self) -> str:
        return f"DownloadHandle({self.id!r})"

    def pause(self) -> None:
        self._manager.pause(self.id)

    def resume(self) -> None:
        self._manager.resume(self.id)

    def cancel(self) -> None:
        self._manager.cancel(self.id)

    def set_priority(self, priority: int) -> None:
        self._manager.set_priority(self.id, priority)

    def set_limit(self, rate_bytes_per_s: float | None) -> None:
        self._manager.set_task_limit(self.id, rate_bytes_per_s)

    def info(self) -> TaskInfo:
        return self._manager.info(self.id)

    async def wait(self) -> Result:
        """The result once completed; raises the categorised error, or Cancelled."""
        return await self._manager.wait(self.id)


class DownloadManager:
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
        dc = download_config or DownloadConfig()
        per_file = min(dc.segments.max_connections, self.config.max_connections_per_host)
        dc = replace(dc, segments=replace(dc.segments, max_connections=per_file))
        if dc.segments.connections is not None:
            conns = min(dc.segments.connections, per_file)
            dc = replace(dc, segments=replace(dc.segments, connections=conns))
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
        self._rate_limit: float | None = self.config.rate_bytes_per_s or dc.rate.rate_bytes_per_s
        self._tasks: dict[str, _Task] = {}
        # Indexes by state, so scheduling and idleness cost O(1) per event, not O(tasks).
        self._queued: set[_Task] = set()
        # Queued tasks by (priority, started before, arrival); stale entries are skipped.
        self._queue_heap: list[tuple[int, int, int, int, _Task]] = []
        self._active: set[_Task] = set()
        self._by_key: dict[tuple[str, ...], _Task] = {}
        # Which download will write (or wrote) each path: one file, one result.
        self._claims: dict[str, _Task] = {}
        self._seq = itertools.count()
        self._callbacks: list[EventCallback] = []
        self._streams: list[EventStream] = []
        self._presume_small = False
        self._last_total = 0.0
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._rebalancer: asyncio.Task[None] | None = None
        self._measured_at = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self._transport.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Pause everything still running (partial data kept) and release connections.

        Whoever still waits for an unfinished download gets ``Cancelled``; event streams end.
        """
        if self._closed:
            return
        self._closed = True
        if self._rebalancer is not None:
            self._rebalancer.cancel()
        runners = []
        for task in self._tasks.values():
            if task.runner is not None and not task.runner.done():
                task.pause_requested = True
                task.resume_requested = False
                task.runner.cancel()
                runners.append(task.runner)
        for runner in runners:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
        await asyncio.sleep(0)  # let the runners' done callbacks record their states
        for task in self._tasks.values():
            if task.state is State.QUEUED:
                self._set_state(task, State.PAUSED)
            if not task.future.done():
                task.future.set_exception(
                    Cancelled(f"the manager closed before download {task.id} finished")
                )
        for stream in list(self._streams):
            stream.end_nowait()
        await self._transport.close()

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
    ) -> DownloadHandle:
        """Queue a download and return its handle at once.

        Adding the same URL and target again (or the same expected SHA-256 for another path)
        returns the existing download: the bytes are fetched once.
        """
        if self._closed:
            raise RuntimeError("the manager is closed")
        check_url(url)
        from .engine.downloader import check_sha256

        sha256 = check_sha256(sha256)
        paths = plan_paths(url, dest, directory)
        # One partial file is one transfer, whatever checksum each caller knows; one checksum
        # is one blob, wherever each caller wants it.
        keys: list[tuple[str, ...]] = [("target", url, str(paths.part))]
        if sha256:
            keys.insert(0, ("sha256", sha256))
        for key in keys:
            existing = self._by_key.get(key)
            if existing is None or not _reusable(existing):
                continue
            alias = existing.paths.dest != paths.dest and not paths.name_pending
            if alias:
                existing.aliases.append(paths.dest)
            if existing.state is not State.COMPLETED:
                return DownloadHandle(self, existing.id)
            self._materialize_aliases(existing)
            return self._add_done(existing, paths.dest if alias else None, priority, rate_limit)
        task = self._new_task(
            url,
            paths,
            dest=None if dest is None else Path(dest),
            directory=None if directory is None else Path(directory),
            sha256=sha256,
            expected_size=expected_size,
            headers=dict(headers or {}),
            priority=priority,
            rate_limit=rate_limit,
        )
        for key in keys:
            self._by_key[key] = task
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
    ) -> _Task:
        seq = next(self._seq)
        task = _Task(
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
            limiter=_TaskBucket(rate_limit),
            future=asyncio.get_running_loop().create_future(),
            size=expected_size,
        )
        task.future.add_done_callback(_mark_retrieved)
        self._tasks[task.id] = task
        return task

    def _add_done(
        self, done: _Task, alias: Path | None, priority: int, rate_limit: float | None
    ) -> DownloadHandle:
        """A new download of a file this manager already completed: done at once, with a
        result of its own that says so (nothing was transferred for it)."""
        assert done.result is not None
        result = replace(
            done.result,
            path=str(alias or done.result.path),
            elapsed_s=0.0,
            attempts=0,
            resumed_from=done.result.size,
            bytes_transferred=0,
            already_complete=True,
        )
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

    def _get(self, task_id: str) -> _Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise KeyError(f"no download with id {task_id!r}") from None

    def pause(self, task_id: str) -> None:
        """Stop the download's connections, keep its partial data and journal, free its slot."""
        task = self._get(task_id)
        if task.state is State.QUEUED:
            self._set_state(task, State.PAUSED)
        elif task.state in _ACTIVE and task.runner is not None:
            task.pause_requested = True
            task.resume_requested = False
            task.runner.cancel()

    def resume(self, task_id: str) -> None:
        """Queue a paused (or failed) download again; it continues from its journal."""
        task = self._get(task_id)
        if self._closed:
            return
        if task.state in _ACTIVE and task.pause_requested and not task.cancel_requested:
            # Still winding down: queue it again as soon as it has stopped.
            task.resume_requested = True
        elif task.state is State.PAUSED:
            self._set_state(task, State.QUEUED)
            self._schedule()
        elif task.state is State.FAILED:
            # A failed download may be retried: it gets a fresh future.
            task.future = asyncio.get_running_loop().create_future()
            task.future.add_done_callback(_mark_retrieved)
            task.error = None
            self._set_state(task, State.QUEUED)
            self._schedule()

    def cancel(self, task_id: str) -> None:
        task = self._get(task_id)
        if task.state.final:
            return
        if task.state in _ACTIVE and task.runner is not None:
            task.cancel_requested = True
            task.runner.cancel()
            return
        self._finish_cancelled(task)

    def set_priority(self, task_id: str, priority: int) -> None:
        task = self._get(task_id)
        task.priority = priority
        if task in self._queued:
            self._push_queued(task)
        self._publish_state(task)
        self._schedule()

    def set_task_limit(self, task_id: str, rate_bytes_per_s: float | None) -> None:
        """Cap one download (None: no cap of its own); effective at once while it runs."""
        task = self._get(task_id)
        _check_rate(rate_bytes_per_s)
        task.rate_limit = rate_bytes_per_s
        self._rebalance()

    def set_limit(self, rate_bytes_per_s: float | None) -> None:
        """Change the global bandwidth cap (None: unlimited); effective within a fraction of
        a second for running downloads."""
        _check_rate(rate_bytes_per_s)
        self._rate_limit = rate_bytes_per_s
        self._rebalance()

    @property
    def rate_limit(self) -> float | None:
        """The global bandwidth cap in bytes per second (None: unlimited)."""
        return self._rate_limit

    def pause_all(self) -> None:
        for task_id in list(self._tasks):
            self.pause(task_id)

    # ------------------------------------------------------------------ observing

    def info(self, task_id: str) -> TaskInfo:
        task = self._get(task_id)
        p = task.last
        return TaskInfo(
            id=task.id,
            url=task.url,
            path=str(task.result.path if task.result else task.paths.dest),
            state=task.state,
            priority=task.priority,
            bytes_done=task.result.size if task.result else (p.bytes_done if p else 0),
            total=task.result.size if task.result else task.size,
            speed_bytes_per_s=p.speed_bytes_per_s if p and task.state in _ACTIVE else 0.0,
            eta_s=p.eta_s if p and task.state in _ACTIVE else None,
            rate_limit=task.rate_limit,
            error=task.error.to_dict() if task.error else None,
            result=task.result.to_dict() if task.result else None,
            connections=p.connections if p and task.state in _ACTIVE else 0,
            bytes_received=(
                task.result.bytes_transferred
                if task.result
                else task.received_before + task.received
            ),
        )

    def tasks(self) -> list[TaskInfo]:
        return [self.info(t) for t in self._tasks]

    async def wait(self, task_id: str) -> Result:
        return await asyncio.shield(self._get(task_id).future)

    async def join(self) -> None:
        """Wait until nothing is queued or running (paused downloads do not count)."""
        while not self._idle_now():
            self._idle.clear()
            await self._idle.wait()

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback`` on the manager's loop for every event; returns an unsubscriber."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def events(self) -> EventStream:
        """Every event from this call on, in order, until the manager closes.

        Progress events may be dropped if you lag far behind; state events never are.

        Example::

            async for event in mgr.events():
                if event.kind == "state" and event.task_id == h.id and event.state.final:
                    break
        """
        stream = EventStream(self._streams)
        if self._closed:
            stream.end_nowait()
        return stream

    # ------------------------------------------------------------------ scheduling

    def _idle_now(self) -> bool:
        return not self._queued and not self._active

    def _index(self, task: _Task) -> None:
        """Keep the state indexes in step with ``task.state``."""
        self._queued.discard(task)
        self._active.discard(task)
        if task.state is State.QUEUED:
            self._queued.add(task)
            self._push_queued(task)
        elif task.state in _ACTIVE:
            self._active.add(task)

    def _is_small(self, task: _Task) -> bool:
        if task.size is not None:
            return task.size < self.config.small_file_bytes
        return self._presume_small

    def _has_slot(self, candidate: _Task) -> bool:
        active = self._active
        cfg = self.config
        if not cfg.adaptive:
            return len(active) < cfg.max_active_files
        if len(active) >= max(cfg.max_small_files, cfg.max_active_files):
            return False
        if self._is_small(candidate):
            return True
        large = sum(1 for t in active if not self._is_small(t))
        return large < cfg.max_active_files

    def _schedule(self) -> None:
        if self._closed:
            return
        heap = self._queue_heap
        while heap:
            entry = heap[0]
            best = entry[-1]
            if best not in self._queued or entry[3] != best.queue_stamp:
                heapq.heappop(heap)  # started, cancelled or re-prioritised since
                continue
            if not self._has_slot(best):
                break
            self._start(best)

    def _push_queued(self, task: _Task) -> None:
        # A heap, not a scan of every queued task per start: 300 files queued at once made
        # scheduling quadratic.
        task.queue_stamp += 1
        entry = (-task.priority, -int(task.started_once), task.seq, task.queue_stamp, task)
        heapq.heappush(self._queue_heap, entry)

    def _start(self, task: _Task) -> None:
        task.pause_requested = task.cancel_requested = False
        task.started_once = True
        task.received_before += task.received
        task.received = 0
        # A fresh bucket: connections of a paused run booked bytes they never received, and a
        # bucket never gives bookings back, so the old one would hold the new run back.
        task.limiter = _TaskBucket(task.rate_limit)
        self._set_state(task, State.RUNNING)
        task.runner = asyncio.create_task(self._run(task), name=f"modelhaul-{task.id}")
        task.runner.add_done_callback(lambda r, t=task: self._on_runner_done(t, r))

    async def _run(self, task: _Task) -> Result:
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
            on_target=lambda path: self._claim(task, path),
        )
        if task.received_before:
            result = replace(
                result, bytes_transferred=task.received_before + result.bytes_transferred
            )
        task.result = result
        self._materialize_aliases(task)
        return result

    def _on_runner_done(self, task: _Task, runner: asyncio.Task[Result]) -> None:
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
                err = exc if isinstance(exc, ModelhaulError) else _wrap(exc)
                task.error = err
                self._set_state(task, State.FAILED)
                if not task.future.done():
                    task.future.set_exception(err)
        self._schedule()

    def _finish_cancelled(self, task: _Task) -> None:
        with contextlib.suppress(OSError):
            discard_partial(task.paths.dest, part=task.paths.part, journal=task.paths.journal)
        self._set_state(task, State.CANCELLED)
        if not task.future.done():
            task.future.set_exception(Cancelled(f"download {task.id} was cancelled"))
        self._schedule()

    def _claim(self, task: _Task, path: Path) -> None:
        """Hold ``path`` for ``task``, or refuse it: another download of this manager will
        write it, or wrote it and its file is still there. Names that come from the response
        are known only once it starts, so this is checked then, before anything is published.
        """
        key = os.path.normpath(path)
        holder = self._claims.get(key)
        # The same URL again is the same file (add() shares one download for it anyway).
        if holder is not None and holder.url != task.url and _holds(holder, key):
            raise TargetConflict.between(key, holder.url, task.url)
        self._claims[key] = task

    def _materialize_aliases(self, task: _Task) -> None:
        if task.result is None:
            return
        source = Path(task.result.path)
        for alias in task.aliases:
            # A file already there is replaced unless it is this one: another file left at the
            # path would be reported as this download's result.
            if alias == source or _same_file(alias, source):
                continue
            try:
                _link_or_copy(source, alias)
            except OSError as exc:
                raise _alias_error(exc, alias) from exc
        task.aliases.clear()

    # ------------------------------------------------------------------ events

    def _on_phase(self, task: _Task, phase: str, size: int | None) -> None:
        if phase == "probed":
            task.size = size
            if size is not None:
                self._presume_small = size < self.config.small_file_bytes
            self._schedule()
        elif phase == "verifying" and task.state is State.RUNNING:
            self._set_state(task, State.VERIFYING)

    def _on_progress(self, task: _Task, p: Progress) -> None:
        task.received = p.bytes_received
        if task.state not in _ACTIVE:
            return
        task.last = p
        task.size = p.total
        self._publish(
            TaskEvent(
                "progress",
                task.id,
                task.state,
                time.time(),
                progress=p,
                bytes_done=p.bytes_done,
                total=p.total,
                speed_bytes_per_s=p.speed_bytes_per_s,
                eta_s=p.eta_s,
            )
        )
        now = time.monotonic()
        if now - self._last_total >= _TOTAL_EVERY_S:
            self._last_total = now
            self._publish(self._total_event())

    def _total_event(self) -> TaskEvent:
        done = total = 0
        speed = 0.0
        unknown = False
        for t in self._tasks.values():
            if t.state in (State.CANCELLED, State.FAILED):
                continue
            size = t.result.size if t.result else t.size
            done += t.result.size if t.result else (t.last.bytes_done if t.last else 0)
            if size is None:
                unknown = True
            else:
                total += size
            if t.state in _ACTIVE and t.last:
                speed += t.last.speed_bytes_per_s
        remaining = None if unknown else max(0, total - done)
        eta = remaining / speed if remaining is not None and speed > 0 else None
        if not self._idle_now():
            state = State.RUNNING
        elif any(t.state is State.PAUSED for t in self._tasks.values()):
            state = State.PAUSED
        else:
            state = State.COMPLETED
        return TaskEvent(
            "total",
            "",
            state,
            time.time(),
            bytes_done=done,
            total=None if unknown else total,
            speed_bytes_per_s=speed,
            eta_s=eta,
        )

    def _set_state(self, task: _Task, state: State) -> None:
        was_running = task.state is State.RUNNING
        task.state = state
        self._index(task)
        self._publish_state(task)
        if was_running != (state is State.RUNNING):
            task.share = None  # until measured, a download is presumed to want a full share
            task.passed_mark = task.limiter.passed
            if self.rate_limit is not None:
                self._rebalance()
            elif task.limiter.rate_bytes_per_s != task.rate_limit:
                task.limiter.set_rate(task.rate_limit)
        if not self._idle_now():
            self._idle.clear()
        elif not self._idle.is_set():
            self._idle.set()
            self._publish(self._total_event())  # the last word on the aggregate

    def _publish_state(self, task: _Task) -> None:
        info = self.info(task.id)
        self._publish(
            TaskEvent(
                "state",
                task.id,
                task.state,
                time.time(),
                error=info.error,
                result=info.result,
                bytes_done=info.bytes_done,
                total=info.total,
            )
        )

    def _publish(self, event: TaskEvent) -> None:
        for cb in list(self._callbacks):
            try:
                cb(event)
            except Exception:  # a broken subscriber must not break downloads
                log.exception("event callback failed")
        for stream in list(self._streams):
            stream.put_nowait(event)

    # ------------------------------------------------------------------ bandwidth

    def _rebalance(self, *, measure: bool = False) -> None:
        """Set each download's bucket: its own cap, or under a global cap its max-min fair
        share; with ``measure``, first learn who used less than offered and did not wait."""
        running = [t for t in self._tasks.values() if t.state is State.RUNNING]
        cap = self.rate_limit
        if cap is None:
            # Only tasks still holding a share need their own cap back; touching every task on
            # every state change made a queue of n files cost O(n^2).
            for task in self._tasks.values():
                if task.share is not None or task.limiter.rate_bytes_per_s != task.rate_limit:
                    task.share = None
                    task.limiter.set_rate(task.rate_limit)
            return
        floor = cap / (4 * max(1, len(running)))
        now = time.monotonic()
        elapsed = now - self._measured_at
        if measure:
            self._measured_at = now
        demands: list[float | None] = []
        for task in running:
            demand: float | None = None
            if measure and elapsed > 0:
                used = (task.limiter.passed - task.passed_mark) / elapsed
                waited = task.limiter.wanted_more()
                demand = estimate_demand(used, task.share, waited=waited, floor=floor)
                task.passed_mark = task.limiter.passed
            if task.rate_limit is not None:
                demand = task.rate_limit if demand is None else min(demand, task.rate_limit)
            demands.append(demand)
        for task, share in zip(running, water_fill(cap, demands), strict=True):
            task.share = max(share, 1.0)
            task.limiter.set_rate(task.share)
        if running and self._rebalancer is None and not self._closed:
            self._rebalancer = asyncio.get_running_loop().create_task(
                self._rebalance_while_capped(), name="modelhaul-rebalance"
            )

    async def _rebalance_while_capped(self) -> None:
        self._measured_at = time.monotonic()
        try:
            while True:
                await asyncio.sleep(_REBALANCE_EVERY_S)
                if self.rate_limit is None or not any(
                    t.state is State.RUNNING for t in self._tasks.values()
                ):
                    return
                self._rebalance(measure=True)
        finally:
            self._rebalancer = None


def _check_rate(rate_bytes_per_s: float | None) -> None:
    # Checked when called, not later inside a rebalance that a state change set off.
    if rate_bytes_per_s is not None and not (
        math.isfinite(rate_bytes_per_s) and rate_bytes_per_s > 0
    ):
        raise ValueError(
            f"rate_bytes_per_s must be a positive number or None, got {rate_bytes_per_s!r}"
        )


def _reusable(task: _Task) -> bool:
    """Whether a new add() may share ``task``: running or queued, or completed with its file
    still in place (a deleted result must be fetched again, not reported done)."""
    if task.state in (State.FAILED, State.CANCELLED):
        return False
    if task.state is State.COMPLETED:
        if task.result is None:
            return False
        try:
            return Path(task.result.path).stat().st_size == task.result.size
        except OSError:
            return False
    return True


def _holds(task: _Task, path: str) -> bool:
    """Whether ``task`` still stands for what ``path`` holds: unfinished, or completed there
    with its file in place (a failed or cancelled download published nothing)."""
    if task.state is State.COMPLETED:
        done = task.result
        return done is not None and os.path.normpath(done.path) == path and _reusable(task)
    return task.state not in (State.FAILED, State.CANCELLED)


def _link_or_copy(source: Path, alias: Path) -> None:
    alias.parent.mkdir(parents=True, exist_ok=True)
    # A name no one can guess: copyfile() follows a symlink planted at a fixed temporary name,
    # which carried the file's bytes over whatever it pointed at.
    tmp = alias.with_name(f".{alias.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, alias)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _alias_error(exc: OSError, alias: Path) -> ModelhaulError:
    """The error for a second name that could not be written, told by that name (never by
    the temporary file it was made through)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(
            f"the disk is full while writing {alias}", hint=f"Free space in {alias.parent}."
        )
    return PermissionDenied(f"cannot write {alias}: {exc.strerror or exc}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _mark_retrieved(fut: asyncio.Future[Result]) -> None:
    if not fut.cancelled():
        fut.exception()


def _wrap(exc: BaseException) -> ModelhaulError:
    err = ModelhaulError(f"unexpected error: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err
