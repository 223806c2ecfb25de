"""DownloadHandle: what ``DownloadManager.add`` returns, to steer and await one download."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..events import Result
from .tasks import TaskInfo

if TYPE_CHECKING:
    from .downloads import DownloadManager


class DownloadHandle:
    """What ``add`` returns: steer and await one download."""

    def __init__(self, manager: DownloadManager, task_id: str) -> None:
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
