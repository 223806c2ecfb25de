"""The service: one DownloadManager, the model store, and a queue that survives restarts.

A *download* here is what a client asked for: one URL, or one model (``hf://`` or a manifest)
that becomes several files in the manager. Downloads have stable ids (the queue table's row
id), so an id a client holds means the same download after the service restarts; the manager's
task ids do not survive a restart and only appear as ``task`` inside forwarded events.

Everything runs on the event loop that serves HTTP, because the manager must be steered from
its own loop. Store scans and changes run in one dedicated thread: they walk directories, and
the store's SQLite connection belongs to the thread that opened it.

Events go to subscribers as JSON-ready dicts with a rising ``seq`` (the kinds are listed in
``fanout.py``). ``Service`` is composed of two parts, one module each: ``JobRunner``
(job_runner.py: adding, restoring, starting and finishing downloads) and ``EventFanout``
(fanout.py: snapshots, subscriptions, the manager's events per download); it holds a
``StoreOperations`` (store_ops.py: ls, pin, remove, gc); steering and the lifecycle are here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from filelock import FileLock, Timeout

from ..errors import InvalidInput, ModelhaulError, PermissionDenied
from ..events import State, TaskEvent
from ..manager.downloads import DownloadManager
from ..manager.tasks import TaskInfo
from ..policy.paths import plan_paths
from ..remedies import Remedy
from ..store.inventory import Inventory
from ..store.pull import ModelPuller
from ..store.statedb import StateDB
from .config import ServiceConfig
from .fanout import EventFanout
from .job_runner import JobRunner
from .jobs import Conflict, Job, NoSuchDownload, cancelled_error, check_priority, job_view
from .persist import QueueDB
from .store_ops import StoreOperations
from .stream import EventStream

_RATE_KEY = "rate_bytes_per_s"
# How long a cancel waits for the transfer to stop and its partial data to go, so its answer
# can say "cancelled"; after that it answers with the state of the moment.
CANCEL_WAIT_S = 10.0


class Service(JobRunner, EventFanout):
    """Owns the manager, the store and the queue; every method runs on the serving loop.

    Example::

        service = Service(config)
        await service.start()
        view, created = service.add_url("https://example.com/m.bin", out="m.bin")
        ...
        await service.close()
    """

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.download_dir = config.download_dir
        self._manager: DownloadManager | None = None
        self._puller: ModelPuller | None = None
        self._db: QueueDB | None = None
        self._store = StoreOperations(
            Inventory(
                config.store_root, StateDB(config.store_db), lock_dir=config.state_dir / "locks"
            ),
            self._store_changed,
        )
        self._jobs: dict[str, Job] = {}
        self._by_task: dict[str, set[str]] = {}
        self._stream = EventStream()
        self._background: set[asyncio.Task[Any]] = set()
        self._publish_pending: set[str] = set()
        self._orphans: dict[str, list[TaskEvent]] = {}
        self._total_at = 0.0
        self._closing = False
        self._state_lock: FileLock | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the queue and the manager, and resume what was unfinished (idempotent)."""
        if self._manager is not None:
            return
        cfg = self.config
        try:
            cfg.download_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PermissionDenied(
                f"cannot use the download directory {cfg.download_dir}: {exc.strerror or exc}",
                remedy=Remedy.DOWNLOAD_DIR,
            ) from exc
        self.download_dir = cfg.download_dir.resolve()
        self._claim_state_dir()
        self._store.start()
        self._db = QueueDB(cfg.queue_path)
        manager = DownloadManager(
            cfg.manager, download_config=cfg.download, state_dir=cfg.state_dir
        )
        await manager.__aenter__()
        self._manager = manager
        self._puller = ModelPuller(cfg.store_root, manager, symlinks=cfg.symlinks)
        stored_rate = self._db.get_setting(_RATE_KEY)
        if stored_rate is not None and stored_rate.isdigit() and int(stored_rate) > 0:
            manager.set_limit(int(stored_rate))
        manager.subscribe(self._on_manager_event)
        for row in self._db.load():
            self._restore(row)
        await self.refresh_store()

    def _claim_state_dir(self) -> None:
        """One service per state directory: two would both resume the same queue.

        An OS file lock, so a killed service leaves nothing to clean up.
        """
        state = self.config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(state / "server.lock"), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise ModelhaulError(
                f"another modelhaul service already runs with the state directory {state}",
                hint="Talk to that one ('modelhaul queue'), stop it, or give this one its own "
                "MODELHAUL_STATE_DIR.",
            ) from None
        self._state_lock = lock

    async def close(self) -> None:
        """Stop: unfinished downloads keep their partial data and stay queued for next time."""
        if self._closing:
            return
        self._closing = True
        self.end_streams()
        runners = [j.runner for j in self._jobs.values() if j.runner and not j.runner.done()]
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        if self._manager is not None:
            await self._manager.close()
        for t in self._background:
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._db is not None:
            self._db.close()
        await self._store.close()
        if self._state_lock is not None:
            self._state_lock.release()
            self._state_lock = None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def manager(self) -> DownloadManager:
        if self._manager is None:
            raise RuntimeError("the service is not started")
        return self._manager

    @property
    def db(self) -> QueueDB:
        if self._db is None:
            raise RuntimeError("the service is not started")
        return self._db

    # ------------------------------------------------------------------ steering

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NoSuchDownload(f"no download with id {job_id!r}")
        return job

    def pause(self, job_id: str) -> dict[str, Any]:
        job = self._job(job_id)
        if job.outcome is not None:
            raise Conflict(f"download {job_id} is {job.outcome}; there is nothing to pause")
        job.paused = True
        self.db.update(int(job.id), paused=True)
        for task_id in self._unfinished(job):
            self.manager.pause(task_id)
        self._publish_download(job)
        return self.view(job)

    def resume(self, job_id: str) -> dict[str, Any]:
        """Resume a paused download, or retry a failed one (only missing bytes are fetched)."""
        job = self._job(job_id)
        if job.outcome in ("completed", "cancelled"):
            raise Conflict(
                f"download {job_id} is {job.outcome}",
                hint="Add it again to download it anew.",
            )
        job.paused = False
        job.outcome = job.error = None
        job.ended.clear()
        self.db.update(int(job.id), paused=False, outcome=None, error=None)
        # Every task not done goes to the manager, whatever its state at this instant: one
        # whose pause is still winding down shows "running", and only the manager knows to
        # queue it again once it has stopped (a running task it leaves alone).
        if job.kind == "url":
            infos = self._infos(job)
            if infos and infos[0].state not in (State.COMPLETED, State.CANCELLED):
                self.manager.resume(infos[0].id)
            elif not infos:
                self._start_url(job)
        elif job.runner is None:
            self._start_model(job)  # a failed pull starts over; finished files are kept
        else:
            for task_id in self._unfinished(job):
                self.manager.resume(task_id)
        self._publish_download(job)
        return self.view(job)

    def retry(self, job_id: str) -> dict[str, Any]:
        """Run a failed download again, with the same source and destination.

        Raises:
            Conflict: the download has not failed (pause and resume steer the others).
        """
        job = self._job(job_id)
        if job.outcome != "failed":
            raise Conflict(
                f"download {job_id} is {self.view(job)['state']}; only a failed one can be retried",
                hint="Resume a paused download; add a finished one again to fetch it anew.",
            )
        return self.resume(job_id)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Stop a download for good and delete its partial data; the view once that is done
        (or after ``CANCEL_WAIT_S``, whatever it is then)."""
        job = self._job(job_id)
        if job.outcome in ("completed", "cancelled"):
            raise Conflict(f"download {job_id} is already {job.outcome}")
        job.cancel_requested = True
        live = self._unfinished(job)
        for task_id in live:
            self.manager.cancel(task_id)
        if job.kind == "model":
            if job.runner is not None:
                job.runner.cancel()  # it records the outcome as it ends
            else:
                self._finish(job, "cancelled", error=cancelled_error(job))
        elif not live and job.outcome != "cancelled":
            # Failed, or not in the manager: drop the partial data here.
            dest, folder = self._url_target(job)
            self.manager.discard_partial(plan_paths(job.request["url"], dest, folder))
            self._finish(job, "cancelled", error=cancelled_error(job))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.ended.wait(), CANCEL_WAIT_S)
        return self.view(job)

    def set_priority(self, job_id: str, priority: int) -> dict[str, Any]:
        check_priority(priority)
        job = self._job(job_id)
        job.priority = priority
        self.db.update(int(job.id), priority=priority)
        for task_id in self._unfinished(job):
            self.manager.set_priority(task_id, priority)
        self._publish_download(job)
        return self.view(job)

    def forget(self, job_id: str) -> None:
        """Remove a finished download from the list (its file stays)."""
        job = self._job(job_id)
        if job.outcome is None:
            raise Conflict(
                f"download {job_id} is not finished", hint="Cancel it first to remove it."
            )
        self._drop(job)
        self._publish({"event": "removed", "id": job.id})

    @property
    def rate_limit(self) -> int | None:
        rate = self.manager.rate_limit
        return None if rate is None else int(rate)

    def set_limit(self, rate_bytes_per_s: int | None) -> dict[str, Any]:
        """The global speed cap in bytes per second; None or 0 removes it."""
        if rate_bytes_per_s is not None and rate_bytes_per_s < 0:
            raise InvalidInput(f"rate must be >= 0, got {rate_bytes_per_s}")
        rate = rate_bytes_per_s or None
        self.manager.set_limit(rate)
        self.db.set_setting(_RATE_KEY, None if rate is None else str(rate))
        view = self.limit_view()
        self._publish({"event": "limit", **view})
        return view

    def limit_view(self) -> dict[str, Any]:
        return {"rate_bytes_per_s": self.rate_limit}

    # ------------------------------------------------------------------ observing

    def downloads(self) -> list[dict[str, Any]]:
        return [self.view(j) for j in self._jobs.values()]

    def download(self, job_id: str) -> dict[str, Any]:
        return self.view(self._job(job_id))

    def _unfinished(self, job: Job) -> list[str]:
        """The ids of the job's downloads still to steer (not completed, failed, cancelled)."""
        return [info.id for info in self._infos(job) if not info.state.final]

    def _infos(self, job: Job) -> list[TaskInfo]:
        if self._manager is None:
            return []
        out = []
        for tid in job.tasks:
            try:
                out.append(self._manager.info(tid))
            except KeyError:
                continue
        return out

    def view(self, job: Job) -> dict[str, Any]:
        """The JSON shape of one download, as the API and the events show it."""
        return job_view(job, self._infos(job))

    # ------------------------------------------------------------------ the store

    def _store_changed(self, view: dict[str, Any]) -> None:
        if not self._closing:
            self._publish({"event": "store", "store": view})

    async def refresh_store(self) -> dict[str, Any]:
        """Scan the store; tell subscribers if anything changed."""
        return await self._store.refresh()

    @property
    def store(self) -> StoreOperations:
        """The store's operations (pin, unpin, remove), for the store routes; ``gc`` stays
        here, since it must keep what the queue is pulling."""
        return self._store

    async def gc(
        self, max_size: int | None, *, dry_run: bool = False, partial_age_s: float = 7 * 86400
    ) -> dict[str, Any]:
        """Evict least recently used unpinned models to fit ``max_size``; never what a
        download in the queue is pulling."""
        keep = [j.label for j in self._jobs.values() if j.kind == "model" and j.outcome is None]
        return await self._store.gc(
            max_size, dry_run=dry_run, partial_age_s=partial_age_s, keep=keep
        )
