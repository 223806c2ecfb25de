"""The service: one DownloadManager, the model store, and a queue that survives restarts.

A *download* here is what a client asked for: one URL, or one model (``hf://`` or a manifest)
that becomes several files in the manager. Downloads have stable ids (the queue table's row
id), so an id a client holds means the same download after the service restarts; the manager's
task ids do not survive a restart and only appear as ``task`` inside forwarded events.

Everything runs on the event loop that serves HTTP, because the manager must be steered from
its own loop. Store scans and changes run in one dedicated thread: they walk directories, and
the store's SQLite connection belongs to the thread that opened it.

Events go to subscribers as JSON-ready dicts with a rising ``seq``. A subscriber first gets a
snapshot (``subscribe`` builds it and registers the subscriber without yielding to the loop,
so nothing falls between the snapshot and the first event), then:

    download   a download was added or changed state (its whole view)
    state      a file of a download changed state (the manager's event, ``id`` = download)
    progress   a file made progress (the manager's event plus the download's view), ~5/s
    total      all downloads together, ~4/s
    removed    a finished download was forgotten
    limit      the global speed limit changed
    store      the store's models, sizes and free space changed
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

from ..config import DownloadConfig, ManagerConfig
from ..engine.downloader import check_sha256, discard_partial, plan_paths
from ..errors import Cancelled, InvalidInput, ModelhaulError, PermissionDenied
from ..events import State, TaskEvent
from ..manager import DownloadManager, TaskInfo
from ..policy.urls import check_url
from ..policy.validate import REPO_TYPES, check_repo_id
from ..sources.hf import DEFAULT_ENDPOINT, parse_hf_uri
from ..store.inventory import GcResult, Inventory, lru_suggestion
from ..store.pull import ModelPuller
from ..store.statedb import StateDB
from .jobs import (
    Conflict,
    Job,
    NoSuchDownload,
    check_priority,
    job_view,
    same_target,
)
from .persist import JobRow, QueueDB
from .resolve import check_manifest_path, is_manifest_path, parse_inline_manifest, resolve_spec
from .security import resolve_folder, resolve_local_path, resolve_output
from .stream import EventStream, Subscription

log = logging.getLogger(__name__)
T = TypeVar("T")

_PROGRESS_EVERY_S = 0.2
_TOTAL_EVERY_S = 0.25
_RATE_KEY = "rate_bytes_per_s"
# How long a cancel waits for the transfer to stop and its partial data to go, so its answer
# can say "cancelled"; after that it answers with the state of the moment.
CANCEL_WAIT_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    """Where the service keeps things and how it downloads; read by the CLI at its edge.

    ``download_dir`` is the only place URL downloads may land; ``store_root`` is the Hugging
    Face cache the models go to.
    """

    download_dir: Path
    store_root: Path
    state_dir: Path
    store_db: Path
    queue_db: Path | None = None  # default: state_dir / "server-queue.sqlite"
    hf_endpoint: str = DEFAULT_ENDPOINT
    hf_token: str | None = None
    symlinks: bool = True
    manager: ManagerConfig = field(default_factory=ManagerConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    max_finished: int = 200

    def __post_init__(self) -> None:
        if self.max_finished < 0:
            raise ValueError(f"max_finished must be >= 0, got {self.max_finished!r}")

    @property
    def queue_path(self) -> Path:
        return self.queue_db or self.state_dir / "server-queue.sqlite"


class Service:
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
        self._inventory = Inventory(
            config.store_root, StateDB(config.store_db), lock_dir=config.state_dir / "locks"
        )
        self._store_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelhaul-store")
        self._store_lock: asyncio.Lock | None = None
        self._store: dict[str, Any] | None = None
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
                hint="Pass --download-dir (or MODELHAUL_DOWNLOAD_DIR) naming a writable folder.",
            ) from exc
        self.download_dir = cfg.download_dir.resolve()
        self._claim_state_dir()
        self._store_lock = asyncio.Lock()
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
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._store_pool, self._inventory.db.close)
        self._store_pool.shutdown(wait=False)
        if self._state_lock is not None:
            self._state_lock.release()
            self._state_lock = None

    def end_streams(self) -> None:
        """End every event stream, so long-lived responses finish and the server can stop."""
        self._stream.end_all_nowait()

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

    # ------------------------------------------------------------------ adding

    def add_url(
        self,
        url: str,
        *,
        out: str | None = None,
        folder: str | None = None,
        sha256: str | None = None,
        priority: int = 0,
        paused: bool = False,
        local: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """Queue a URL; returns (view, created).

        The file goes to ``out`` (a file) or into ``folder`` (named by the server), both
        relative to the download directory; with ``local`` (the caller is the service's own
        user on loopback, see ``AccessPolicy.trusts_paths_of``) either may also be absolute.
        Asking again for a URL and place that is still queued returns that download.

        Raises:
            InvalidInput: bad URL, checksum, priority, or a place the caller may not name.
        """
        check_url(url)
        sha256 = check_sha256(sha256)
        check_priority(priority)
        where, name, dest = self._destination(out, folder, local=local)
        request = {"url": url, "out": name, "dir": str(where), "sha256": sha256}
        for job in self._jobs.values():
            if job.kind == "url" and job.outcome is None and same_target(job.request, request):
                return self.view(job), False
        label = dest.name if dest is not None else plan_paths(url, None, where).dest.name
        job = self._new_job("url", request, label, priority, paused)
        try:
            self._start_url(job)
        except ModelhaulError:
            self._drop(job)
            raise
        self._publish_download(job)
        self._replay_orphans(job)
        return self.view(job), True

    def _destination(
        self, out: str | None, folder: str | None, *, local: bool
    ) -> tuple[Path, str | None, Path | None]:
        """Where a download goes: (its directory, its file name relative to that or None for
        the server's name, the file or None), checked now rather than when it starts."""
        if out is not None and Path(out).is_absolute() and local:
            if folder is not None:
                raise InvalidInput("give either an absolute 'out' or 'dir', not both")
            dest = resolve_local_path(out, where="out")
            return dest.parent, dest.name, dest
        if folder is None:
            where = self.download_dir
        elif Path(folder).is_absolute() and local:
            where = resolve_local_path(folder, where="dir", folder=True)
        else:
            where = resolve_folder(self.download_dir, folder)
        return where, out, (resolve_output(where, out) if out is not None else None)

    def add_model(
        self,
        *,
        source: str | None = None,
        manifest: dict[str, Any] | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        priority: int = 0,
        paused: bool = False,
        local: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """Queue a model pull into the store from ``source`` (hf://ORG/NAME[@REV], ORG/NAME, a
        manifest URL, or with ``local`` an absolute manifest path, as for ``add_url``) or an
        inline ``manifest``; returns (view, created).

        Raises:
            InvalidInput: neither or both given, or the source or manifest is invalid.
        """
        check_priority(priority)
        if (source is None) == (manifest is None):
            raise InvalidInput("give exactly one of 'source' and 'manifest'")
        request: dict[str, Any] = {"include": list(include or ()), "exclude": list(exclude or ())}
        if manifest is not None:
            spec = parse_inline_manifest(manifest)
            request["manifest"] = manifest
            label = spec.repo_id
        else:
            assert source is not None
            if source.startswith(("http://", "https://")):
                request["source"] = check_url(source)
                label = source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or source
            elif is_manifest_path(source):
                path = check_manifest_path(source, local=local)
                request["source"] = str(path)
                label = path.name
            else:
                ref = parse_hf_uri(source)
                request["source"] = str(ref)
                label = ref.repo_id
        for job in self._jobs.values():
            if job.kind == "model" and job.outcome is None and job.request == request:
                return self.view(job), False
        job = self._new_job("model", request, label, priority, paused)
        if not paused:
            self._start_model(job)
        self._publish_download(job)
        return self.view(job), True

    def _new_job(
        self, kind: str, request: dict[str, Any], label: str, priority: int, paused: bool
    ) -> Job:
        row = JobRow(kind=kind, request=request, label=label, priority=priority, paused=paused)
        job_id = str(self.db.insert(row))
        job = Job(job_id, kind, request, label, priority, row.created, paused=paused)
        self._jobs[job_id] = job
        return job

    def _drop(self, job: Job) -> None:
        self.db.delete(int(job.id))
        self._forget_nowait(job)

    def _forget_nowait(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        for tid in job.tasks:
            jobs = self._by_task.get(tid)
            if jobs is not None:
                jobs.discard(job.id)
                if not jobs:
                    del self._by_task[tid]

    def _restore(self, row: JobRow) -> None:
        assert row.id is not None
        job = Job(
            str(row.id),
            row.kind,
            row.request,
            row.label,
            row.priority,
            row.created,
            paused=row.paused,
            outcome=row.outcome,
            error=row.error,
            result=row.result,
            bytes_done=row.bytes_done,
            total=row.total,
        )
        self._jobs[job.id] = job
        if job.outcome is not None:
            job.ended.set()
            return
        try:
            if job.kind == "url":
                self._start_url(job)
                self._replay_orphans(job)
            elif not job.paused:
                self._start_model(job)
        except ModelhaulError as exc:
            self._finish(job, "failed", error=exc.to_dict())

    # ------------------------------------------------------------------ running

    def _url_target(self, job: Job) -> tuple[Path | None, Path]:
        folder = Path(job.request["dir"])
        out = job.request.get("out")
        return (resolve_output(folder, out) if out is not None else None), folder

    def _start_url(self, job: Job) -> None:
        dest, folder = self._url_target(job)
        handle = self.manager.add(
            job.request["url"],
            dest,
            directory=folder if dest is None else None,
            sha256=job.request.get("sha256"),
            priority=job.priority,
            paused=job.paused,
        )
        for old in job.tasks:
            self._by_task.get(old, set()).discard(job.id)
        job.tasks = []
        self._attach(job, handle.id)
        info = self.manager.info(handle.id)
        if info.state.final:  # the manager already had this file
            self._finish_url(job, info)

    def _attach(self, job: Job, task_id: str) -> None:
        if task_id not in job.tasks:
            job.tasks.append(task_id)
        self._by_task.setdefault(task_id, set()).add(job.id)

    def _replay_orphans(self, job: Job) -> None:
        """Forward the events a new file had before its download knew its task id.

        ``DownloadManager.add`` announces the task (queued, often running) before it returns
        the id, so those events arrive for a task no download claims yet.
        """
        for task_id in job.tasks:
            for ev in self._orphans.pop(task_id, ()):
                self._on_manager_event(ev)

    def _start_model(self, job: Job) -> None:
        job.cancel_requested = False
        job.runner = asyncio.create_task(self._run_model(job), name=f"modelhaul-pull-{job.id}")

    async def _run_model(self, job: Job) -> None:
        assert self._puller is not None
        try:
            spec = await resolve_spec(
                job.request,
                hf_endpoint=self.config.hf_endpoint,
                hf_token=self.config.hf_token,
                timeouts=self.config.download.timeouts,
            )
            spec = spec.select(job.request.get("include") or (), job.request.get("exclude") or ())
            if not spec.files:
                raise InvalidInput("no file of the model matches include/exclude")
            if job.label != spec.repo_id:
                job.label = spec.repo_id
                self.db.update(int(job.id), label=job.label)
            self._spawn(self.refresh_store())
            result = await self._puller.pull(
                spec,
                priority=job.priority,
                on_file=partial(self._on_model_file, job),
                free_hint=partial(self._free_hint, spec.repo_id),
            )
        except ModelhaulError as exc:
            if exc.category == "cancelled" and job.cancel_requested:
                self._finish(job, "cancelled", error=_cancelled(job))
            else:
                outcome = "cancelled" if exc.category == "cancelled" else "failed"
                self._finish(job, outcome, error=exc.to_dict())
        except asyncio.CancelledError:
            if job.cancel_requested:
                self._finish(job, "cancelled", error=_cancelled(job))
            raise
        except Exception as exc:  # a bug must not leave the download "running" forever
            log.exception("model pull %s failed", job.id)
            error = ModelhaulError(f"internal error: {type(exc).__name__}: {exc}")
            self._finish(job, "failed", error=error.to_dict())
        else:
            self._finish(job, "completed", result=result.to_dict())
        finally:
            job.runner = None
        if not self._closing:
            self._spawn(self.refresh_store())

    def _free_hint(self, repo_id: str, short: int) -> str:
        return lru_suggestion(
            self.config.store_root,
            short,
            db_path=self.config.store_db,
            lock_dir=self.config.state_dir / "locks",
        )

    def _on_model_file(self, job: Job, path: str, what: str) -> None:
        if not what.startswith("queued:"):
            return
        task_id = what.split(":", 1)[1]
        self._attach(job, task_id)
        self._replay_orphans(job)
        if job.paused:
            self.manager.pause(task_id)
        elif self.manager.info(task_id).priority != job.priority:
            self.manager.set_priority(task_id, job.priority)
        # A model may have thousands of files, all queued in one go: one event for them all.
        if job.id not in self._publish_pending:
            self._publish_pending.add(job.id)
            asyncio.get_running_loop().call_soon(self._publish_pending_nowait, job)

    def _publish_pending_nowait(self, job: Job) -> None:
        self._publish_pending.discard(job.id)
        self._publish_download(job)

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
        for info in self._infos(job):
            if not info.state.final:
                self.manager.pause(info.id)
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
            for info in self._infos(job):
                if not info.state.final:
                    self.manager.resume(info.id)
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
        live = [i for i in self._infos(job) if not i.state.final]
        for info in live:
            self.manager.cancel(info.id)
        if job.kind == "model":
            if job.runner is not None:
                job.runner.cancel()  # it records the outcome as it ends
            else:
                self._finish(job, "cancelled", error=_cancelled(job))
        elif not live and job.outcome != "cancelled":
            # Failed, or not in the manager: drop the partial data here.
            dest, folder = self._url_target(job)
            paths = plan_paths(job.request["url"], dest, folder)
            discard_partial(paths.dest, part=paths.part, journal=paths.journal)
            self._finish(job, "cancelled", error=_cancelled(job))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.ended.wait(), CANCEL_WAIT_S)
        return self.view(job)

    def set_priority(self, job_id: str, priority: int) -> dict[str, Any]:
        check_priority(priority)
        job = self._job(job_id)
        job.priority = priority
        self.db.update(int(job.id), priority=priority)
        for info in self._infos(job):
            if not info.state.final:
                self.manager.set_priority(info.id, priority)
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

    def snapshot(self) -> dict[str, Any]:
        return {
            "event": "snapshot",
            "seq": self._stream.seq,
            "downloads": self.downloads(),
            "limit": self.limit_view(),
            "store": self._store,
            "download_dir": str(self.download_dir),
        }

    def subscribe(self) -> Subscription:
        """A snapshot and then every later event; call ``close()`` when done."""
        if self._closing:
            raise RuntimeError("the service is stopping")
        return self._stream.subscribe_nowait(self.snapshot())

    # ------------------------------------------------------------------ events

    def _publish(self, event: dict[str, Any]) -> None:
        self._stream.publish_nowait(event)

    def _publish_download(self, job: Job) -> None:
        if not self._closing and job.id in self._jobs:
            self._publish({"event": "download", "download": self.view(job)})

    def _on_manager_event(self, ev: TaskEvent) -> None:
        if self._closing:
            return  # closing pauses everything; that is not the user's decision to record
        if ev.kind == "total":
            now = time.monotonic()
            if now - self._total_at >= _TOTAL_EVERY_S:
                self._total_at = now
                self._publish(ev.to_dict())
            return
        claimed = self._by_task.get(ev.task_id)
        if not claimed:
            if ev.kind == "state":
                if not self._orphans:  # kept for the current step of the loop only
                    asyncio.get_running_loop().call_soon(self._orphans.clear)
                self._orphans.setdefault(ev.task_id, []).append(ev)
            return
        for job_id in sorted(claimed, key=int):
            job = self._jobs.get(job_id)
            if job is None:
                continue
            if ev.kind == "state":
                self._publish({**ev.to_dict(), "id": job.id, "task": ev.task_id})
                if job.kind == "url" and ev.state.final and job.outcome is None:
                    self._finish_url(job, self.manager.info(ev.task_id))
                else:
                    self._publish_download(job)
            elif ev.kind == "progress":
                now = time.monotonic()
                if now - job.progress_at >= _PROGRESS_EVERY_S:
                    job.progress_at = now
                    self._publish(
                        {
                            **ev.to_dict(),
                            "id": job.id,
                            "task": ev.task_id,
                            "download": self.view(job),
                        }
                    )

    def _finish_url(self, job: Job, info: TaskInfo) -> None:
        if info.state is State.COMPLETED:
            self._finish(job, "completed", result=info.result)
        elif info.state is State.CANCELLED:
            self._finish(job, "cancelled", error=_cancelled(job))
        else:
            self._finish(job, "failed", error=info.error)

    def _finish(
        self,
        job: Job,
        outcome: str,
        *,
        error: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        job.ended.set()
        if job.id not in self._jobs:
            return
        view = self.view(job)
        job.outcome, job.error, job.result = outcome, error, result
        job.paused = False
        job.bytes_done, job.total = view["bytes_done"], view["total"]
        self.db.update(
            int(job.id),
            outcome=outcome,
            error=error,
            result=result,
            paused=False,
            bytes_done=job.bytes_done,
            total=job.total,
            label=job.label,
        )
        self._publish_download(job)
        for old in self.db.prune_finished(self.config.max_finished):
            gone = self._jobs.get(str(old))
            if gone is not None:
                self._forget_nowait(gone)
                self._publish({"event": "removed", "id": gone.id})

    # ------------------------------------------------------------------ the store

    async def _in_store_thread(self, fn: Callable[[Inventory], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store_pool, fn, self._inventory)

    async def refresh_store(self) -> dict[str, Any]:
        """Scan the store; tell subscribers if anything changed."""
        assert self._store_lock is not None
        async with self._store_lock:
            view = await self._in_store_thread(_store_view)
        if view != self._store:
            self._store = view
            if not self._closing:
                self._publish({"event": "store", "store": view})
        return view

    async def set_pinned(self, name: str, pinned: bool, repo_type: str = "model") -> dict[str, Any]:
        _check_model_ref(name, repo_type)
        await self._in_store_thread(lambda inv: inv.set_pinned(name, pinned, repo_type))
        view = await self.refresh_store()
        for m in view["models"]:
            if m["name"] == name and m["repo_type"] == repo_type:
                return dict(m)
        return {"name": name, "repo_type": repo_type, "pinned": pinned}

    async def remove_model(
        self,
        name: str,
        *,
        revision: str | None = None,
        repo_type: str = "model",
        force: bool = False,
    ) -> dict[str, Any]:
        _check_model_ref(name, repo_type)
        freed = await self._in_store_thread(
            lambda inv: inv.remove(name, revision, repo_type=repo_type, force=force)
        )
        await self.refresh_store()
        return {"name": name, "repo_type": repo_type, "revision": revision, "freed": freed}

    async def gc(
        self, max_size: int | None, *, dry_run: bool = False, partial_age_s: float = 7 * 86400
    ) -> dict[str, Any]:
        """Evict least recently used unpinned models to fit ``max_size``; never what a
        download in the queue is pulling."""
        keep = [j.label for j in self._jobs.values() if j.kind == "model" and j.outcome is None]

        def run(inv: Inventory) -> GcResult:
            return inv.gc(max_size, dry_run=dry_run, partial_age_s=partial_age_s, keep=keep)

        result = await self._in_store_thread(run)
        await self.refresh_store()
        return result.to_dict()


def _cancelled(job: Job) -> dict[str, Any]:
    """The error a cancelled download shows: what cancel did, not the engine's "kept" hint."""
    if job.kind == "url":
        what = "its partial data was deleted"
    else:
        what = "the partial data of its files in flight was deleted; finished files stay"
    return Cancelled(
        f"download {job.id} was cancelled; {what}", hint="Add it again to download it anew."
    ).to_dict()


def _store_view(inv: Inventory) -> dict[str, Any]:
    models = inv.scan()
    return {
        "root": str(inv.root),
        "models": [m.to_dict() for m in models],
        "used": inv.total_size(models),
        "free": inv.disk_free(),
    }


def _check_model_ref(name: str, repo_type: str) -> None:
    check_repo_id(name)
    if repo_type not in REPO_TYPES:
        raise InvalidInput(f"repo_type must be one of {', '.join(REPO_TYPES)}")
