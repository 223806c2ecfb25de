"""Immutable progress and state records, and the enums their callbacks speak in.

The engine emits them; it never renders anything. Callbacks receive these values, never
strings to parse: ``on_phase(Phase, size)`` from one file's transfer, ``on_file(FileEvent)``
from a model pull, ``TaskEvent`` from the manager.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelhaulError
from .policy.slices import PeerDrop
from .remedies import Words


class State(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    VERIFYING = "verifying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (State.COMPLETED, State.FAILED, State.CANCELLED)


class Phase(enum.StrEnum):
    """A step of one file's transfer that its caller may act on."""

    PROBED = "probed"  # the size is known (None: the origin did not say)
    VERIFYING = "verifying"  # every byte is on disk; hashing and publishing follow


PhaseCallback = Callable[[Phase, int | None], None]  # (phase, the file's size)


class FilePhase(enum.StrEnum):
    """What happened to one file of a model pull."""

    QUEUED = "queued"  # handed to the manager as ``download_id``
    MIRROR = "mirror"  # a URL failed (``reason``); the next URL is tried
    WAITING = "waiting"  # another process fetches the same blob (``reason``)
    DONE = "done"  # the file is in the snapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEvent:
    """One file of a model pull changed phase.

    ``download_id`` is the manager's task id (set with ``QUEUED``), ``reason`` says why for
    ``MIRROR`` and ``WAITING``.
    """

    path: str
    phase: FilePhase
    download_id: str | None = None
    reason: str | None = None
    # With DONE: where the bytes came from (peers, issue 17), None when nothing was fetched.
    bytes_from_peers: int | None = None
    bytes_from_upstream: int | None = None
    # With DONE: the peers left out while fetching this file, and why (issue 17).
    dropped_peers: tuple[PeerDrop, ...] = ()

    def __post_init__(self) -> None:
        if (self.phase is FilePhase.QUEUED) != (self.download_id is not None):
            raise ValueError("download_id is set exactly for FilePhase.QUEUED")


FileCallback = Callable[[FileEvent], None]


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot of one transfer.

    ``bytes_done`` is what the file holds (resumed bytes included); ``bytes_received`` is what
    this transfer received over the network in this process. ``resumable`` is False once the
    origin ignored a Range request: partial data can never be resumed from it, so none is kept.
    """

    url: str
    path: str
    bytes_done: int
    total: int | None
    speed_bytes_per_s: float
    eta_s: float | None
    connections: int
    attempts: int
    resumed_from: int
    elapsed_s: float
    bytes_received: int = 0
    resumable: bool = True
    # Every byte before this offset is in the partial file and final for this attempt (the
    # journal's complete prefix): what a reader may serve before the download ends.
    bytes_final: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "progress",
            "url": self.url,
            "path": self.path,
            "bytes_done": self.bytes_done,
            "total": self.total,
            "speed": round(self.speed_bytes_per_s, 1),
            "eta": None if self.eta_s is None else round(self.eta_s, 1),
            "connections": self.connections,
            "attempts": self.attempts,
            "resumed_from": self.resumed_from,
            "elapsed": round(self.elapsed_s, 3),
            "bytes_received": self.bytes_received,
            "resumable": self.resumable,
        }


@dataclass(frozen=True, slots=True)
class Result:
    """What a finished download produced.

    ``size`` is the file's size; ``bytes_transferred`` is what was received over the network
    for it in this run (0 for a file already complete, the missing part after a resume).
    ``chunk_xxh3`` is the xxh3-128 of each ``chunk_bytes`` piece, from the same pass that
    computed ``sha256`` (empty when this run did not hash the file, e.g. already complete);
    the store records them for repair without reading the file again.
    """

    url: str
    path: str
    size: int
    sha256: str
    elapsed_s: float
    attempts: int
    resumed_from: int
    bytes_transferred: int
    etag: str | None = None
    already_complete: bool = False
    chunk_bytes: int = 0
    chunk_xxh3: tuple[str, ...] = field(default=(), repr=False)

    # The result line names its own fields: alike PullResult.to_dict in shape only.
    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "result",
            "status": "completed",
            "url": self.url,
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "elapsed": round(self.elapsed_s, 3),
            "attempts": self.attempts,
            "resumed_from": self.resumed_from,
            "bytes_transferred": self.bytes_transferred,
            "error": None,
        }


class EventKind(enum.StrEnum):
    """What a ``TaskEvent`` reports; the value is the ``event`` of its JSON form."""

    STATE = "state"  # one download changed state
    PROGRESS = "progress"  # one download received bytes
    TOTAL = "total"  # the sum over all downloads (``task_id`` empty)


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """Something happened to one managed download (``kind`` STATE or PROGRESS), or to all of
    them (``kind`` TOTAL, ``task_id`` empty)."""

    kind: EventKind
    task_id: str
    state: State
    time: float
    progress: Progress | None = None
    error: dict[str, str] | None = None
    result: dict[str, Any] | None = None
    bytes_done: int = 0
    total: int | None = None
    speed_bytes_per_s: float = 0.0
    eta_s: float | None = None
    failure: ModelhaulError | None = None  # the error itself, for a face to word (to_dict)

    def to_dict(self, words: Words | None = None) -> dict[str, Any]:
        """The JSON shape; an error in ``words`` (a face's), else in the library's."""
        out: dict[str, Any] = {
            "event": self.kind.value,
            "id": self.task_id,
            "state": self.state.value,
            "time": round(self.time, 3),
            "bytes_done": self.bytes_done,
            "total": self.total,
            "speed": round(self.speed_bytes_per_s, 1),
            "eta": None if self.eta_s is None else round(self.eta_s, 1),
        }
        if self.failure is not None and words is not None:
            out["error"] = self.failure.to_dict(words)
        elif self.error is not None:
            out["error"] = self.error
        if self.result is not None:
            out["result"] = self.result
        return out
