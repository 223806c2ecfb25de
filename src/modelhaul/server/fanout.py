"""The service's side of its event stream: the snapshot a subscriber starts with, and the
manager's events turned into the service's (``stream.py`` holds the subscribers and ``seq``).

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
    mirror     the Hub mirror's traffic per model: bytes served, bytes fetched upstream

``EventFanout`` is a part of ``Service`` (service.py), which composes it with the job runner; it
uses their state, as the one object they make.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..events import EventKind, TaskEvent
from .jobs import Job
from .stream import EventStream, Subscription
from .words import SERVICE_WORDS

if TYPE_CHECKING:
    from ..manager.downloads import DownloadManager
    from .store_ops import StoreOperations

_PROGRESS_EVERY_S = 0.2
_TOTAL_EVERY_S = 0.25


class EventFanout:
    """Snapshots, subscriptions, and the manager's events forwarded per download."""

    # State and methods of the other parts: Service sets these up; JobRunner has _finish_url;
    # Service has manager, view, downloads and limit_view.
    manager: DownloadManager
    _stream: EventStream
    _jobs: dict[str, Job]
    _by_task: dict[str, set[str]]
    _orphans: dict[str, list[TaskEvent]]
    _publish_pending: set[str]
    _total_at: float
    _closing: bool
    _store: StoreOperations
    download_dir: Path
    # The Hub mirror's traffic, as it last told it (replaced whole, never changed in place).
    _mirror_traffic: tuple[dict[str, Any], ...] = ()

    def snapshot(self) -> dict[str, Any]:
        return {
            "event": "snapshot",
            "seq": self._stream.seq,
            "downloads": self.downloads(),
            "limit": self.limit_view(),
            "store": self._store.view,
            "download_dir": str(self.download_dir),
            "mirror": list(self._mirror_traffic),
        }

    def publish_mirror_traffic(self, models: list[dict[str, Any]]) -> None:
        """The mirror's bytes served and fetched per model changed (at most a few times a
        second: the mirror coalesces)."""
        self._mirror_traffic = tuple(models)
        if not self._closing:
            self._publish({"event": "mirror", "models": models})

    def subscribe(self) -> Subscription:
        """A snapshot and then every later event; call ``close()`` when done."""
        if self._closing:
            raise RuntimeError("the service is stopping")
        return self._stream.subscribe_nowait(self.snapshot())

    def end_streams(self) -> None:
        """End every event stream, so long-lived responses finish and the server can stop."""
        self._stream.end_all_nowait()

    def _publish(self, event: dict[str, Any]) -> None:
        self._stream.publish_nowait(event)

    def _publish_download(self, job: Job) -> None:
        if not self._closing and job.id in self._jobs:
            self._publish({"event": "download", "download": self.view(job)})

    def _on_manager_event(self, ev: TaskEvent) -> None:
        if self._closing:
            return  # closing pauses everything; that is not the user's decision to record
        if ev.kind is EventKind.TOTAL:
            now = time.monotonic()
            if now - self._total_at >= _TOTAL_EVERY_S:
                self._total_at = now
                self._publish(ev.to_dict())
            return
        claimed = self._by_task.get(ev.task_id)
        if not claimed:
            if ev.kind is EventKind.STATE:
                if not self._orphans:  # kept for the current step of the loop only
                    asyncio.get_running_loop().call_soon(self._orphans.clear)
                self._orphans.setdefault(ev.task_id, []).append(ev)
            return
        for job_id in sorted(claimed, key=int):
            job = self._jobs.get(job_id)
            if job is None:
                continue
            if ev.kind is EventKind.STATE:
                self._publish({**ev.to_dict(SERVICE_WORDS), "id": job.id, "task": ev.task_id})
                if job.kind == "url" and ev.state.final and job.outcome is None:
                    self._finish_url(job, self.manager.info(ev.task_id))
                else:
                    self._publish_download(job)
            elif ev.kind is EventKind.PROGRESS:
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

    def _replay_orphans(self, job: Job) -> None:
        """Forward the events a new file had before its download knew its task id.

        ``DownloadManager.add`` announces the task (queued, often running) before it returns
        the id, so those events arrive for a task no download claims yet.
        """
        for task_id in job.tasks:
            for ev in self._orphans.pop(task_id, ()):
                self._on_manager_event(ev)

    def _publish_pending_nowait(self, job: Job) -> None:
        self._publish_pending.discard(job.id)
        self._publish_download(job)
