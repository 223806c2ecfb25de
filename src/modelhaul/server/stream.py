"""The service's event stream: every event gets a rising ``seq`` and goes to each subscriber's
own queue. A slow subscriber loses progress events first, never state; one that falls far
behind is ended, and it reconnects to a fresh snapshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

_SUB_SOFT_MAX = 2_000  # beyond this a subscriber gets no progress events until it catches up
_SUB_HARD_MAX = 20_000  # beyond this it is dropped (it reconnects and gets a new snapshot)


class Subscription:
    """One client's stream: ``snapshot``, then ``await next()`` until it returns None."""

    def __init__(self, snapshot: dict[str, Any], on_close: Callable[[Subscription], None]) -> None:
        self.snapshot = snapshot
        self.lagged = False
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._on_close = on_close

    def offer_nowait(self, event: dict[str, Any]) -> None:
        if self.lagged:
            return
        size = self._queue.qsize()
        if size >= _SUB_HARD_MAX:
            self.lagged = True
            self._queue.put_nowait(None)
        elif size < _SUB_SOFT_MAX or event["event"] not in ("progress", "total"):
            self._queue.put_nowait(event)

    def end_nowait(self) -> None:
        self._queue.put_nowait(None)

    async def next(self) -> dict[str, Any] | None:
        """The next event; None once the stream ended (service stopping, or ``lagged``)."""
        return await self._queue.get()

    def close(self) -> None:
        self._on_close(self)


class EventStream:
    """Subscribers and the sequence number; everything here runs on one event loop."""

    def __init__(self) -> None:
        self.seq = 0
        self._subs: set[Subscription] = set()

    def subscribe_nowait(self, snapshot: dict[str, Any]) -> Subscription:
        """Register a subscriber whose stream starts with ``snapshot``.

        Build the snapshot and call this without awaiting in between: then no event falls
        between the snapshot and the subscriber's first event.
        """
        sub = Subscription(snapshot, self._subs.discard)
        self._subs.add(sub)
        return sub

    def publish_nowait(self, event: dict[str, Any]) -> None:
        self.seq += 1
        event["seq"] = self.seq
        for sub in list(self._subs):
            sub.offer_nowait(event)

    def end_all_nowait(self) -> None:
        for sub in list(self._subs):
            sub.end_nowait()
        self._subs.clear()
