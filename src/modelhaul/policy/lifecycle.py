"""AsyncResource: ``async with`` for an object that opens and closes (anyio's model).

Written once here, so the objects that hold connections (the downloader, the manager) name only
what they open and close.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncResource:
    """``open`` on entering ``async with``, ``aclose`` on leaving it, whatever happened."""

    async def open(self) -> None:
        """Acquire what the object needs before its first use; by default nothing."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
