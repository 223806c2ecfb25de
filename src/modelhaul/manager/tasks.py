"""The manager's record of one download, and the snapshot of it that callers see."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ModelhaulError
from ..events import Progress, Result, State
from ..policy.paths import TargetPaths
from ..policy.segments import Demand
from ..policy.slices import RangeSources
from .limits import TaskBucket

ACTIVE = (State.RUNNING, State.VERIFYING)


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
    # The error itself: ``error`` is its JSON shape in the library's words; a face words it in
    # its own (``failure.to_dict(SERVICE_WORDS)``) from the structured fields.
    failure: ModelhaulError | None = None


@dataclass(slots=True, eq=False)
# A record of its own facts: its fields look like other records' (AvailabilityEvent) only
# in shape.
class Task:
    """One download as the manager tracks it; changed only on the manager's loop."""

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
    limiter: TaskBucket  # at the lower of rate_limit and the fair share
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
    demand: Demand | None = None  # ranges readers of the partial file wait for
    sources: RangeSources | None = None  # where each range comes from (peers), if not the URL
    known_absent: bool = False  # for its first run: Downloader.download's known_absent

    def take_known_absent(self) -> bool:
        """``known_absent`` for the run starting now: the first only (a paused or failed
        run may have left files behind, which later runs look for)."""
        known, self.known_absent = self.known_absent, False
        return known

    def stop_run(self) -> None:
        """Cancel the running download as a pause: its partial data and journal stay."""
        assert self.runner is not None
        self.pause_requested = True
        self.resume_requested = False
        self.runner.cancel()

    def info(self) -> TaskInfo:
        p = self.last
        active = self.state in ACTIVE
        return TaskInfo(
            id=self.id,
            url=self.url,
            path=str(self.result.path if self.result else self.paths.dest),
            state=self.state,
            priority=self.priority,
            bytes_done=self.result.size if self.result else (p.bytes_done if p else 0),
            total=self.result.size if self.result else self.size,
            speed_bytes_per_s=p.speed_bytes_per_s if p and active else 0.0,
            eta_s=p.eta_s if p and active else None,
            rate_limit=self.rate_limit,
            error=self.error.to_dict() if self.error else None,
            result=self.result.to_dict() if self.result else None,
            connections=p.connections if p and active else 0,
            bytes_received=(
                self.result.bytes_transferred
                if self.result
                else self.received_before + self.received
            ),
            failure=self.error,
        )


def new_future() -> asyncio.Future[Result]:
    """A future for a task's result (set with ``fail`` when the download fails)."""
    return asyncio.get_running_loop().create_future()


def as_error(exc: BaseException) -> ModelhaulError:
    """``exc`` as the error a task fails with: a ModelhaulError as it is, anything else
    told as unexpected (and kept as the cause)."""
    if isinstance(exc, ModelhaulError):
        return exc
    err = ModelhaulError(f"unexpected error: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def fail(future: asyncio.Future[Result], exc: BaseException) -> None:
    """Fail a task's future with ``exc``, counted as seen even if no one waits for it.

    (Marked here, not by a done callback: that cost a loop callback for every file.)
    """
    future.set_exception(exc)
    future.exception()


def completed_again(done: Result, alias: Path | None) -> Result:
    """The result of a new request for a file already completed (at ``alias``, if another
    name): done at once, and it says so (nothing was transferred for it)."""
    return replace(
        done,
        path=str(alias or done.path),
        elapsed_s=0.0,
        attempts=0,
        resumed_from=done.size,
        bytes_transferred=0,
        already_complete=True,
    )
