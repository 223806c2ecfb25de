"""The service's live events as the client reads them: Server-Sent Events parsed into dicts
(``iter_events``), and ``EventFollower``, which reads them in a thread and hands them to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

from .service import ServiceClient, ServiceUnreachable


def iter_events(resp: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    """Parse Server-Sent Events: each ``data:`` block as a JSON object."""
    data: list[str] = []
    for line in _lines(resp):
        if not line:
            if data:
                with contextlib.suppress(ValueError):
                    yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


def _lines(resp: http.client.HTTPResponse) -> Iterator[str]:
    # read1, not readline: http.client's readline on a chunked body waits for more data than
    # one event, so an event would sit in the buffer until the next keepalive.
    pending = b""
    while chunk := resp.read1(65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            yield raw.decode("utf-8", "replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", "replace").rstrip("\r")


class EventFollower:
    """The event stream read in a daemon thread and handed to the loop.

    A daemon thread, not the loop's executor: a blocked read must not keep the process alive
    after Ctrl-C.
    """

    def __init__(self, client: ServiceClient) -> None:
        self._client = client
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._resp: http.client.HTTPResponse | None = None
        self._closed = False

    async def start(self) -> dict[str, Any]:
        """Connect; returns the snapshot, so later events are exactly what happens next."""
        self._resp = await asyncio.to_thread(self._client.open_events)
        threading.Thread(target=self._read, name="modelhaul-events", daemon=True).start()
        first = await self.next()
        if first.get("event") != "snapshot":
            raise self._client.not_ours()
        return first

    def _read(self) -> None:
        assert self._resp is not None
        try:
            for event in iter_events(self._resp):
                if self._closed:
                    return
                self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
            error: BaseException = ServiceUnreachable(
                f"the service at {self._client.base_url} closed the event stream",
                hint="It may have stopped; downloads it had queued resume when it starts again.",
            )
        except Exception as exc:  # whatever a dropped stream raises, it ends here
            if self._closed:
                return
            error = self._client.unreachable(exc)
        finally:
            # Closed here, by the reading thread: closing from another thread would wait for
            # the read in progress (the buffer's lock), i.e. for the next event or keepalive.
            with contextlib.suppress(Exception):
                self._resp.close()
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
            self._loop.call_soon_threadsafe(self._queue.put_nowait, error)

    async def next(self) -> dict[str, Any]:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop listening; the reading thread ends with the next message."""
        self._closed = True
