"""Turns for receives held back by a receive cap (engine.hashlag), lowest file offset first.

While the hash trails, a download lets only a few receives run. Which held receive goes next
matters: the one nearest the completed prefix extends what the hash can read next, while one
further on only adds bytes the hash will not reach for a while, and leaves the chunks before
it half-received for the end of the download, where the hash waits for them. (Before this and
the hash's 4 MiB reads, traces of 4 GiB showed the hash idle for up to a second at the end;
which of the two removed that is not known.) Waking every held receive whenever one ended, as
before, also cost the event loop a coroutine turn per held receive, hundreds per 0.1 s on
4 GiB, while the hash thread waited for the GIL.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class ReceiveTurns:
    """The receives of one download waiting for a turn, handed out lowest offset first."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()  # equal offsets: first come, first served

    def __len__(self) -> int:
        return len(self._heap)

    async def wait(self, pos: int) -> None:
        """Wait to be woken (``wake``); the caller checks again whether it may go."""
        entry = (pos, next(self._order), asyncio.get_running_loop().create_future())
        heapq.heappush(self._heap, entry)
        try:
            await entry[2]
        finally:
            if entry in self._heap:  # not woken (cancelled, timed out): leave the queue
                self._heap.remove(entry)
                heapq.heapify(self._heap)

    def wake(self, n: int | None = None) -> None:
        """Wake the ``n`` waiting receives at the lowest offsets (None: every one)."""
        while self._heap and (n is None or n > 0):
            _, _, fut = heapq.heappop(self._heap)
            if fut.done():  # its task was cancelled and has not run its finally yet
                continue
            fut.set_result(None)
            if n is not None:
                n -= 1


__all__ = ["ReceiveTurns"]
