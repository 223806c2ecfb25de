"""Model availability for applications: missing, partial, downloading, ready or corrupt.

An app serving a fallback while its model is missing subscribes here and switches to the real
model when the ``ready`` event arrives. ``ensure`` pulls only what is missing, and concurrent
callers for the same model share one pull.

Example::

    avail = ModelAvailability(cache_root, manager, resolver=hub_resolver(hub))
    avail.subscribe(lambda ev: print(ev.model, ev.state))
    path = await avail.ensure("org/model", retries=3)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import RetryPolicy
from ..errors import ModelhaulError
from ..events import EventKind, FileEvent, TaskEvent
from ..manager.downloads import DownloadManager
from ..sources.hf import HubSource, parse_hf_uri
from ..sources.model import ModelSpec
from .listing import local_files, resolve_local_commit
from .pull import ModelPuller
from .repo import RepoStore
from .statedb import StateDB
from .verify import check_file

log = logging.getLogger(__name__)

Resolver = Callable[[str, str, str | None], Awaitable[ModelSpec]]


class ModelState(enum.StrEnum):
    MISSING = "missing"
    PARTIAL = "partial"
    DOWNLOADING = "downloading"
    READY = "ready"
    CORRUPT = "corrupt"


@dataclass(frozen=True, slots=True)
class ModelStatus:
    model: str
    state: ModelState
    bytes_done: int = 0
    total: int | None = None
    path: str | None = None


@dataclass(frozen=True, slots=True)
class AvailabilityEvent:
    """A model changed state (or made progress while downloading)."""

    model: str
    state: ModelState
    time: float
    bytes_done: int = 0
    total: int | None = None
    path: str | None = None
    error: dict[str, str] | None = None
    attempt: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "event": "availability",
            "model": self.model,
            "state": self.state.value,
            "time": round(self.time, 3),
            "bytes_done": self.bytes_done,
            "total": self.total,
            "path": self.path,
            "error": self.error,
            "attempt": self.attempt,
        }


def hub_resolver(hub: HubSource) -> Resolver:
    async def resolve(repo_type: str, repo_id: str, revision: str | None) -> ModelSpec:
        from ..sources.hf import HubRef

        return await hub.resolve(HubRef(repo_id, revision, repo_type))

    return resolve


@dataclass(slots=True)
class _Pull:
    model: str
    future: asyncio.Future[Path]
    tasks: set[str]
    total: int
    done_bytes: int = 0
    runner: asyncio.Task[None] | None = None


class ModelAvailability:
    """Tracks and provides models for an application."""

    # Signature alike other constructors' (HttpError's) in shape only: its own collaborators.
    def __init__(
        self,
        root: Path,
        manager: DownloadManager,
        *,
        resolver: Resolver | None = None,
        db: StateDB | None = None,
        retry: RetryPolicy | None = None,
        symlinks: bool = True,
    ) -> None:
        self.root = root
        self.manager = manager
        self.puller = ModelPuller(root, manager, symlinks=symlinks)
        self._resolver = resolver
        self._db = db
        self._retry = retry or RetryPolicy()
        self._pulls: dict[str, _Pull] = {}
        self._task_model: dict[str, str] = {}
        self._callbacks: list[Callable[[AvailabilityEvent], None]] = []
        self._queues: list[asyncio.Queue[AvailabilityEvent]] = []
        self._last: dict[str, ModelState] = {}
        manager.subscribe(self._on_task_event)

    # ------------------------------------------------------------------ observing

    def status(self, model: str) -> ModelStatus:
        """The model's state now, from the store and any pull in this process."""
        repo_type, repo_id, revision = _parse(model)
        key = _key(repo_type, repo_id, revision)
        pull = self._pulls.get(key)
        if pull is not None:
            return ModelStatus(model, ModelState.DOWNLOADING, pull.done_bytes, pull.total)
        return self._stored_status(model, repo_type, repo_id, revision)

    def _stored_status(
        self, model: str, repo_type: str, repo_id: str, revision: str | None
    ) -> ModelStatus:
        rs = RepoStore(self.root, repo_id, repo_type)
        if not rs.folder.is_dir():
            return ModelStatus(model, ModelState.MISSING)
        try:
            commit = resolve_local_commit(rs, revision)
        except ModelhaulError:
            return ModelStatus(model, ModelState.PARTIAL if _has_blobs(rs) else ModelState.MISSING)
        files = local_files(rs, commit)
        if not files:
            return ModelStatus(model, ModelState.PARTIAL)
        facts = self._db.get(repo_type, repo_id) if self._db else None
        present = 0
        total = sum(max(f.size, 0) for f in files)
        complete = True
        for f in files:
            blob = rs.blob_path(f.blob_id)
            link = rs.snapshot_file(commit, f.path)
            if blob.is_file() and link.exists() and (f.size < 0 or blob.stat().st_size == f.size):
                present += max(f.size, 0)
            else:
                complete = False
        snapshot = str(rs.snapshot_dir(commit))
        if facts is not None and facts.corrupt:
            return ModelStatus(model, ModelState.CORRUPT, present, total, snapshot)
        if complete:
            return ModelStatus(model, ModelState.READY, total, total, snapshot)
        return ModelStatus(model, ModelState.PARTIAL, present, total, snapshot)

    def subscribe(self, callback: Callable[[AvailabilityEvent], None]) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    async def events(self) -> AsyncIterator[AvailabilityEvent]:
        queue: asyncio.Queue[AvailabilityEvent] = asyncio.Queue()
        self._queues.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.remove(queue)

    def touch(self, model: str) -> None:
        """Record that the app used the model now (for least-recently-used eviction)."""
        repo_type, repo_id, _rev = _parse(model)
        if self._db is not None:
            self._db.touch(repo_type, repo_id)

    # ------------------------------------------------------------------ providing

    async def ensure(
        self,
        model: str,
        *,
        retries: int = 0,
        update: bool = False,
        include: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
    ) -> Path:
        """The local snapshot path once the model is ready, pulling only what is missing.

        A model already complete in the store is returned without the network unless
        ``update``. Failed pulls are retried ``retries`` times with backoff; every attempt is
        visible as events. Concurrent callers of the same model share one pull.
        """
        repo_type, repo_id, revision = _parse(model)
        key = _key(repo_type, repo_id, revision)
        if not update and key not in self._pulls:
            current = self._stored_status(model, repo_type, repo_id, revision)
            if current.state is ModelState.READY and current.path:
                self.touch(model)
                self._emit(model, ModelState.READY, path=current.path, force=False)
                return Path(current.path)
        pull = self._pulls.get(key)
        if pull is None:
            loop = asyncio.get_running_loop()
            pull = _Pull(model=model, future=loop.create_future(), tasks=set(), total=0)
            pull.future.add_done_callback(_retrieve)
            self._pulls[key] = pull
            pull.runner = asyncio.create_task(
                self._run(model, key, pull, repo_type, repo_id, revision, retries, include, exclude)
            )
        return await asyncio.shield(pull.future)

    async def _run(
        self,
        model: str,
        key: str,
        pull: _Pull,
        repo_type: str,
        repo_id: str,
        revision: str | None,
        retries: int,
        include: tuple[str, ...],
        exclude: tuple[str, ...],
    ) -> None:
        attempt = 0
        try:
            while True:
                attempt += 1
                self._emit(model, ModelState.DOWNLOADING, attempt=attempt, force=True)
                try:
                    spec = await self._resolve(repo_type, repo_id, revision)
                    spec = spec.select(include, exclude)
                    pull.total = sum(f.size for f in spec.files)
                    result = await self.puller.pull(
                        spec, on_file=lambda event: self._on_file(key, model, event)
                    )
                except ModelhaulError as exc:
                    after = self._stored_status(model, repo_type, repo_id, revision).state
                    state = after if after is not ModelState.READY else ModelState.PARTIAL
                    self._emit(model, state, error=exc.to_dict(), attempt=attempt, force=True)
                    if attempt > retries:
                        pull.future.set_exception(exc)
                        return
                    await asyncio.sleep(self._retry.delay_s(attempt - 1))
                    continue
                if self._db is not None:
                    self._db.set_corrupt(repo_type, repo_id, False)
                self.touch(model)
                self._emit(
                    model,
                    ModelState.READY,
                    path=str(result.snapshot),
                    attempt=attempt,
                    bytes_done=pull.total,
                    total=pull.total,
                    force=True,
                )
                pull.future.set_result(result.snapshot)
                return
        except asyncio.CancelledError:
            if not pull.future.done():
                pull.future.cancel()
            raise
        finally:
            self._pulls.pop(key, None)
            for task_id in pull.tasks:
                self._task_model.pop(task_id, None)

    async def _resolve(self, repo_type: str, repo_id: str, revision: str | None) -> ModelSpec:
        if self._resolver is None:
            raise ModelhaulError("no source to fetch models from", hint="Pass a resolver.")
        return await self._resolver(repo_type, repo_id, revision)

    async def verify(self, model: str) -> bool:
        """Hash every file; marks the model corrupt (and emits) when any is bad."""
        repo_type, repo_id, revision = _parse(model)
        rs = RepoStore(self.root, repo_id, repo_type)
        commit = resolve_local_commit(rs, revision)
        bad = False
        for f in local_files(rs, commit):
            if await asyncio.to_thread(check_file, rs, commit, f) is not None:
                bad = True
        if self._db is not None:
            self._db.set_corrupt(repo_type, repo_id, bad)
        self._emit(model, ModelState.CORRUPT if bad else ModelState.READY, force=True)
        return not bad

    # ------------------------------------------------------------------ events

    def _on_file(self, key: str, model: str, event: FileEvent) -> None:
        task_id = event.download_id
        if task_id is not None:
            pull = self._pulls.get(key)
            if pull is not None:
                pull.tasks.add(task_id)
                self._task_model[task_id] = key

    def _on_task_event(self, ev: TaskEvent) -> None:
        key = self._task_model.get(ev.task_id)
        if key is None or ev.kind is not EventKind.PROGRESS:
            return
        pull = self._pulls.get(key)
        if pull is None:
            return
        done = 0
        for tid in pull.tasks:
            with contextlib.suppress(KeyError):
                done += self.manager.info(tid).bytes_done
        pull.done_bytes = done
        self._emit(pull.model, ModelState.DOWNLOADING, bytes_done=done, total=pull.total)

    def _emit(
        self,
        model: str,
        state: ModelState,
        *,
        force: bool = False,
        path: str | None = None,
        error: dict[str, str] | None = None,
        attempt: int = 0,
        bytes_done: int = 0,
        total: int | None = None,
    ) -> None:
        if not force and self._last.get(model) is state and state is not ModelState.DOWNLOADING:
            return
        self._last[model] = state
        event = AvailabilityEvent(
            model, state, time.time(), bytes_done, total, path, error, attempt
        )
        for cb in list(self._callbacks):
            try:
                cb(event)
            except Exception:  # a broken subscriber must not break the pull
                log.exception("availability callback failed")
        for q in self._queues:
            q.put_nowait(event)


def _parse(model: str) -> tuple[str, str, str | None]:
    ref = parse_hf_uri(model)
    return ref.repo_type, ref.repo_id, ref.revision


def _key(repo_type: str, repo_id: str, revision: str | None) -> str:
    rev = f"@{revision}" if revision else ""
    return f"{repo_type}|{repo_id}{rev}"


def _has_blobs(rs: RepoStore) -> bool:
    return rs.blobs.is_dir() and any(rs.blobs.iterdir())


def _retrieve(fut: asyncio.Future[Path]) -> None:
    if not fut.cancelled():
        fut.exception()
