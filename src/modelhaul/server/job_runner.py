"""The service's downloads in the manager: adding (a URL, or a model pull into the store),
restoring them from the queue after a restart, starting their manager tasks, and recording how
they end.

A *download* is what a client asked for: one URL (one manager task), or one model (``hf://`` or
a manifest) that becomes one task per missing file. ``JobRunner`` is a part of ``Service``
(service.py), which composes it with the event fan-out.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import Category, InvalidInput, ModelhaulError
from ..events import FileEvent, State, TaskEvent
from ..manager.tasks import TaskInfo
from ..policy.paths import plan_paths
from ..policy.urls import check_url
from ..policy.validate import check_sha256
from ..sources.hf import parse_hf_uri
from ..store.inventory import lru_suggestion
from ..store.pull import ModelPuller
from .jobs import Job, cancelled_error, check_priority, same_target
from .persist import JobRow
from .resolve import check_manifest_path, is_manifest_path, parse_inline_manifest, resolve_spec
from .security import resolve_folder, resolve_local_path, resolve_output
from .words import SERVICE_WORDS

if TYPE_CHECKING:
    from ..manager.downloads import DownloadManager
    from .config import ServiceConfig
    from .persist import QueueDB

log = logging.getLogger(__name__)


class JobRunner:
    """Adds, restores, starts and finishes downloads."""

    # State and methods of the other parts: Service sets these up and has manager, db, view and
    # _spawn and refresh_store; EventFanout has _publish*, _replay_orphans.
    config: ServiceConfig
    manager: DownloadManager
    db: QueueDB
    download_dir: Path
    _puller: ModelPuller | None
    _jobs: dict[str, Job]
    _by_task: dict[str, set[str]]
    _orphans: dict[str, list[TaskEvent]]
    _publish_pending: set[str]
    _closing: bool

    # ------------------------------------------------------------------ adding

    # The request's fields by name, as the route's body names them: alike other signatures
    # in shape only.
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

    # Keyword calls alike others' (the manager's download, the routes') in shape only: a Job
    # is rebuilt from its saved row, field by field.
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
            self._finish(job, "failed", error=exc.to_dict(SERVICE_WORDS))

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
            if exc.category is Category.CANCELLED and job.cancel_requested:
                self._finish(job, "cancelled", error=cancelled_error(job))
            else:
                outcome = "cancelled" if exc.category is Category.CANCELLED else "failed"
                self._finish(job, outcome, error=exc.to_dict(SERVICE_WORDS))
        except asyncio.CancelledError:
            if job.cancel_requested:
                self._finish(job, "cancelled", error=cancelled_error(job))
            raise
        except Exception as exc:  # a bug must not leave the download "running" forever
            log.exception("model pull %s failed", job.id)
            error = ModelhaulError(f"internal error: {type(exc).__name__}: {exc}")
            self._finish(job, "failed", error=error.to_dict(SERVICE_WORDS))
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
            words=SERVICE_WORDS,
            db_path=self.config.store_db,
            lock_dir=self.config.state_dir / "locks",
        )

    def _on_model_file(self, job: Job, event: FileEvent) -> None:
        task_id = event.download_id
        if task_id is None:
            return
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

    # ------------------------------------------------------------------ ending

    def _finish_url(self, job: Job, info: TaskInfo) -> None:
        if info.state is State.COMPLETED:
            self._finish(job, "completed", result=info.result)
        elif info.state is State.CANCELLED:
            self._finish(job, "cancelled", error=cancelled_error(job))
        else:
            failure = info.failure
            self._finish(job, "failed", error=failure.to_dict(SERVICE_WORDS) if failure else None)

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
