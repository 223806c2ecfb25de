"""DownloadHandle: what ``DownloadManager.add`` returns, to steer and await one download."""

from __future__ import annotations

from typing import Protocol

from ..events import Result
from .tasks import TaskInfo


class Steered(Protocol):
    """What a handle steers: the manager, seen only through the calls a handle makes (so this
    module need not import the manager's, which imports it)."""

    def pause(self, task_id: str) -> None: ...
    def resume(self, task_id: str) -> None: ...
    def cancel(self, task_id: str) -> None: ...
    def set_priority(self, task_id: str, priority: int) -> None: ...
    def set_task_limit(self, task_id: str, rate_bytes_per_s: float | None) -> None: ...
    def info(self, task_id: str) -> TaskInfo: ...
    async def wait(self, task_id: str) -> Result: ...


class DownloadHandle:
    """What ``add`` returns: steer and await one download."""

    def __init__(self, manager: Steered, task_id: str) -> None:
        self._manager = manager
        self.id = task_id

    def __repr__(self) -> str:
        return f"DownloadHandle({self.id!r})"

    def pause(self) -> None:
        self._manager.pause(self.id)

    def resume(self) -> None:
        self._manager.resume(self.id)

    def cancel(self) -> None:
        self._manager.cancel(self.id)

    def set_priority(self, priority: int) -> None:
        self._manager.set_priority(self.id, priority)

    def set_limit(self, rate_bytes_per_s: float | None) -> None:
        self._manager.set_task_limit(self.id, rate_bytes_per_s)

    def info(self) -> TaskInfo:
        return self._manager.info(self.id)

    async def wait(self) -> Result:
        """The result once completed; raises the categorised error, or Cancelled."""
        return await self._manager.wait(self.id)
