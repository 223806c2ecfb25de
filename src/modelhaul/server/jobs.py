"""A download as the service sees it: what the client asked for, the user's last decision, the
manager tasks behind it, and the one JSON view that the API and every event show. No I/O.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ..errors import PERMANENT_CATEGORIES, Cancelled, Category, InvalidInput, ModelhaulError
from ..events import State
from ..manager.tasks import TaskInfo

PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
_ACTIVE = (State.RUNNING, State.VERIFYING)


class NoSuchDownload(ModelhaulError):
    category = Category.NOT_FOUND
    default_hint = "List the downloads with 'modelhaul queue'."


class Conflict(ModelhaulError):
    """The download is in a state where that action means nothing."""

    category = Category.CLIENT_ERROR


@dataclass(slots=True, eq=False)
class Job:
    """One download: a URL (one manager task) or a model pull (one task per missing file)."""

    id: str
    kind: str  # "url" | "model"
    request: dict[str, Any]
    label: str
    priority: int
    created: float
    paused: bool = False
    outcome: str | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    bytes_done: int = 0  # as last recorded; shown while no manager task backs the job
    total: int | None = None
    tasks: list[str] = field(default_factory=list)
    runner: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    # Set while the download has an outcome: cancel waits on it to answer with the result.
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    progress_at: float = 0.0


def job_state(job: Job, infos: list[TaskInfo]) -> str:
    """queued | running | paused | verifying | completed | failed | cancelled."""
    if job.outcome is not None:
        return job.outcome
    if job.kind == "url":
        if infos and not (job.paused and not infos[0].state.final):
            return infos[0].state.value
        # Paused is what the user decided: say so at once, while the transfer winds down.
        return "paused" if job.paused else "queued"
    if job.paused:
        return "paused"
    if any(i.state in _ACTIVE for i in infos):
        return "running"
    if infos and all(i.state is State.COMPLETED for i in infos):
        return "running"  # linking into the snapshot
    return "queued"


def job_view(job: Job, infos: list[TaskInfo]) -> dict[str, Any]:
    """The JSON shape of one download; ``infos`` are its manager tasks, if any are live."""
    state = job_state(job, infos)
    if infos:
        done = sum(i.bytes_done for i in infos)
        totals = [i.total for i in infos]
        total = None if any(t is None for t in totals) else sum(t or 0 for t in totals)
        speed = sum(i.speed_bytes_per_s for i in infos) if state == "running" else 0.0
        connections = sum(i.connections for i in infos) if state == "running" else 0
    else:
        done, total, speed, connections = job.bytes_done, job.total, 0.0, 0
    eta = (
        round(max(0, total - done) / speed, 1)
        if total is not None and speed > 0 and state == "running"
        else None
    )
    if job.kind == "url":
        source = job.request["url"]
        path = (job.result or {}).get("path") or (infos[0].path if infos else None)
    else:
        source = job.request.get("source") or f"manifest:{job.label}"
        path = (job.result or {}).get("path")
    return {
        "id": job.id,
        "kind": job.kind,
        "source": source,
        "name": job.label,
        "path": None if path is None else str(path),
        "state": state,
        "priority": job.priority,
        "bytes_done": done,
        "total": total,
        "speed": round(speed, 1),
        "eta": eta,
        "connections": connections,
        "files": len(job.tasks),
        "created": round(job.created, 3),
        "paused": job.paused,
        "error": job.error,
        "permanent": state == "failed" and _permanent(job.error),
        "already_present": _already_present(job),
        "result": job.result,
    }


def _permanent(error: dict[str, Any] | None) -> bool:
    """Whether the failure needs the user to change something before another attempt."""
    return error is not None and error.get("category") in PERMANENT_CATEGORIES


def _already_present(job: Job) -> bool:
    """A completed pull that fetched nothing: every file was in the store already."""
    result = job.result or {}
    return job.kind == "model" and job.outcome == "completed" and not result.get("fetched", True)


def same_target(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two URL requests name the same file (the same URL to the same place)."""
    return all(a.get(k) == b.get(k) for k in ("url", "out", "dir"))


def check_priority(priority: int) -> None:
    if isinstance(priority, bool) or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidInput(
            f"priority must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}, got {priority!r}"
        )


def cancelled_error(job: Job) -> dict[str, Any]:
    """The error a cancelled download shows: what cancel did, not the engine's "kept" hint."""
    if job.kind == "url":
        what = "its partial data was deleted"
    else:
        what = "the partial data of its files in flight was deleted; finished files stay"
    return Cancelled(
        f"download {job.id} was cancelled; {what}", hint="Add it again to download it anew."
    ).to_dict()
