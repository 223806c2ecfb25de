"""Which download starts next, and whether there is room for it.

The highest priority first, a file already started before a new one of the same priority,
then first come first served. Small files (known to be under ``small_file_bytes``) may run
beside the large ones, since for them the round trip, not bandwidth, is the cost.
"""

from __future__ import annotations

import asyncio
import heapq

from ..config import ManagerConfig
from ..events import State
from .tasks import ACTIVE, Task


class TaskQueue:
    """The queued and the active downloads, indexed by state so that scheduling and idleness
    cost O(1) per event, not O(tasks)."""

    def __init__(self, config: ManagerConfig) -> None:
        self.config = config
        self.queued: set[Task] = set()
        self.active: set[Task] = set()
        # Queued tasks by (priority, started before, arrival); stale entries are skipped.
        self._heap: list[tuple[int, int, int, int, Task]] = []
        # Until a file's size is known it is presumed as small as the last one probed.
        self.presume_small = False
        self._idle = asyncio.Event()
        self._idle.set()

    def idle(self) -> bool:
        return not self.queued and not self.active

    def became_idle(self) -> bool:
        """Note whether the queue is idle now; True only when it just became so."""
        if not self.idle():
            self._idle.clear()
            return False
        if self._idle.is_set():
            return False
        self._idle.set()
        return True

    async def wait_idle(self) -> None:
        """Wait until nothing is queued or running (paused downloads do not count)."""
        while not self.idle():
            self._idle.clear()
            await self._idle.wait()

    def index(self, task: Task) -> None:
        """Keep the state indexes in step with ``task.state``."""
        self.queued.discard(task)
        self.active.discard(task)
        if task.state is State.QUEUED:
            self.queued.add(task)
            self.push(task)
        elif task.state in ACTIVE:
            self.active.add(task)

    def push(self, task: Task) -> None:
        """(Re)place a queued task by its current priority."""
        # A heap, not a scan of every queued task per start: 300 files queued at once made
        # scheduling quadratic.
        task.queue_stamp += 1
        entry = (-task.priority, -int(task.started_once), task.seq, task.queue_stamp, task)
        heapq.heappush(self._heap, entry)

    def next_nowait(self) -> Task | None:
        """The queued task to start now, if there is one and room for it."""
        heap = self._heap
        while heap:
            entry = heap[0]
            best = entry[-1]
            if best not in self.queued or entry[3] != best.queue_stamp:
                heapq.heappop(heap)  # started, cancelled or re-prioritised since
                continue
            if not self._has_slot(best):
                return None
            return best
        return None

    def is_small(self, task: Task) -> bool:
        if task.size is not None:
            return task.size < self.config.small_file_bytes
        return self.presume_small

    def _has_slot(self, candidate: Task) -> bool:
        active = self.active
        cfg = self.config
        if not cfg.adaptive:
            return len(active) < cfg.max_active_files
        if len(active) >= max(cfg.max_small_files, cfg.max_active_files):
            return False
        if self.is_small(candidate):
            return True
        large = sum(1 for t in active if not self.is_small(t))
        return large < cfg.max_active_files
