"""Events out of the manager: callbacks, event streams, and the aggregate of all downloads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection

from ..events import EventKind, Progress, State, TaskEvent
from .tasks import ACTIVE, Task

log = logging.getLogger(__name__)

EventCallback = Callable[[TaskEvent], None]
_QUEUE_MAX = 10_000
_TOTAL_EVERY_S = 0.1


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
        if self._queue.qsize() < _QUEUE_MAX or event.kind is not EventKind.PROGRESS:
            self._queue.put_nowait(event)

    def end_nowait(self) -> None:
        self._queue.put_nowait(None)

    def close(self) -> None:
        """Stop receiving events (the iterator still yields what it already holds)."""
        if self in self._streams:
            self._streams.remove(self)

    async def aclose(self) -> None:
        self.close()


class Fanout:
    """Hands every event to each subscribed callback and open stream."""

    def __init__(self) -> None:
        self._callbacks: list[EventCallback] = []
        self._streams: list[EventStream] = []
        self._last_total = 0.0

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def stream(self) -> EventStream:
        return EventStream(self._streams)

    def end_streams(self) -> None:
        for stream in list(self._streams):
            stream.end_nowait()

    def listened(self) -> bool:
        """Whether anyone hears events: if not, none need be built (a ``get -q`` of many
        small files builds none of its four or more per file)."""
        return bool(self._callbacks or self._streams)

    def total_due(self) -> bool:
        """Whether progress may carry an aggregate now: one per _TOTAL_EVERY_S at most."""
        now = time.monotonic()
        if now - self._last_total < _TOTAL_EVERY_S:
            return False
        self._last_total = now
        return True

    def publish(self, event: TaskEvent) -> None:
        for cb in list(self._callbacks):
            try:
                cb(event)
            except Exception:  # a broken subscriber must not break downloads
                log.exception("event callback failed")
        for stream in list(self._streams):
            stream.put_nowait(event)


def progress_event(task: Task, p: Progress) -> TaskEvent:
    return TaskEvent(
        EventKind.PROGRESS,
        task.id,
        task.state,
        time.time(),
        progress=p,
        bytes_done=p.bytes_done,
        total=p.total,
        speed_bytes_per_s=p.speed_bytes_per_s,
        eta_s=p.eta_s,
    )


def state_event(task: Task) -> TaskEvent:
    # What task.info() says of these fields, without building the whole snapshot.
    result, error = task.result, task.error
    if result is not None:
        done: int = result.size
        total: int | None = result.size
    else:
        done, total = (task.last.bytes_done if task.last else 0), task.size
    return TaskEvent(
        EventKind.STATE,
        task.id,
        task.state,
        time.time(),
        error=error.to_dict() if error else None,
        failure=error,
        result=result.to_dict() if result else None,
        bytes_done=done,
        total=total,
    )


def total_event(tasks: Collection[Task], *, idle: bool) -> TaskEvent:
    """The aggregate of ``tasks``: bytes, speed and ETA over all but the failed and cancelled."""
    done = total = 0
    speed = 0.0
    unknown = False
    for t in tasks:
        if t.state in (State.CANCELLED, State.FAILED):
            continue
        size = t.result.size if t.result else t.size
        done += t.result.size if t.result else (t.last.bytes_done if t.last else 0)
        if size is None:
            unknown = True
        else:
            total += size
        if t.state in ACTIVE and t.last:
            speed += t.last.speed_bytes_per_s
    remaining = None if unknown else max(0, total - done)
    eta = remaining / speed if remaining is not None and speed > 0 else None
    if not idle:
        state = State.RUNNING
    elif any(t.state is State.PAUSED for t in tasks):
        state = State.PAUSED
    else:
        state = State.COMPLETED
    return TaskEvent(
        EventKind.TOTAL,
        "",
        state,
        time.time(),
        bytes_done=done,
        total=None if unknown else total,
        speed_bytes_per_s=speed,
        eta_s=eta,
    )
