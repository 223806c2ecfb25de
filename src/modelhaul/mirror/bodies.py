"""The bytes of one blob for one client: from the store, or from the partial file while the
engine still fetches it.

A reader of a blob in flight is served from the partial file as its bytes become final: the
engine's progress events carry the complete prefix (``Progress.bytes_final``), which
``PrefixWatch`` follows; a reader further on tells the flight's ``Demand`` which bytes it waits
for (the engine fetches them next) and reads them as soon as they are written. The last ``HOLD_BACK_BYTES`` wait until the download is verified
(SHA-256) and published; a failed download cuts the response short, so the client's size check
fails and it asks again. Bytes read from a partial file count only if that very file (the same
inode) became the blob: a download that restarted wrote a new file, and a reader that had already
sent bytes of the old one is cut short rather than sent a mix.

Bodies are ``FileSpan``s, not bytes: a span names bytes of an open file that are final, so the
server can hand them from the page cache to the socket (sendfile) without them passing through
Python; a server that cannot reads them (``span_bytes``). The reader owns the file until it asks
for the next span.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelhaulError
from ..events import EventKind, TaskEvent
from .flights import Flight

CHUNK_BYTES = 1024 * 1024
# The most one span covers: the traffic count (the web page) and a client that went away are
# seen once a span is sent; a span costs the server a few system calls, whatever its size.
SPAN_BYTES = 32 * 1024 * 1024
HOLD_BACK_BYTES = 64 * 1024
# A waiting reader asks the engine for this much from where it is, not for all it will read:
# a reader of the whole file must not make its far end urgent and starve a Range further on.
WANT_BYTES = 8 * 1024 * 1024
# A wait for the prefix to grow looks again this often, events or not (the partial file may
# appear before the first progress event, and a paused download sends none).
RECHECK_S = 0.5


class BodyCut(ModelhaulError):
    """A response must end before its length: the bytes behind it are not (or no longer) good."""


@dataclass(frozen=True, slots=True)
class FileSpan:
    """Bytes ``[offset, offset + count)`` of the open file ``fd``, all final (written, and good
    so far as the reader knows)."""

    fd: int
    offset: int
    count: int

    def __len__(self) -> int:
        return self.count


async def span_bytes(span: FileSpan) -> AsyncIterator[bytes]:
    """The bytes of ``span``, a chunk at a time (read in a thread), for a server that cannot
    send a file as it is."""
    pos, end = span.offset, span.offset + span.count
    while pos < end:
        data = await asyncio.to_thread(os.pread, span.fd, min(CHUNK_BYTES, end - pos), pos)
        if not data:
            raise BodyCut(f"the file ended at {pos}, before {end}")
        pos += len(data)
        yield data


class PrefixWatch:
    """The complete prefix of each download in progress, from the manager's progress events."""

    def __init__(self) -> None:
        self._final: dict[str, int] = {}
        self._changed: dict[str, asyncio.Event] = {}

    def on_event(self, event: TaskEvent) -> None:
        """A manager event (subscribe this to the manager); wakes the readers of its download."""
        if event.kind is EventKind.PROGRESS and event.progress is not None:
            self._final[event.task_id] = event.progress.bytes_final
        elif event.kind is EventKind.STATE and event.state.final:
            self._final.pop(event.task_id, None)
        else:
            return
        changed = self._changed.pop(event.task_id, None)
        if changed is not None:
            changed.set()

    def final(self, task_id: str | None) -> int:
        return self._final.get(task_id, 0) if task_id else 0

    async def wait_change(self, task_id: str | None, done: asyncio.Future[None]) -> None:
        """Until the download's prefix moves, it ends, or ``RECHECK_S`` passes."""
        waits: set[asyncio.Future[object]] = {done}  # type: ignore[arg-type]
        waiter = None
        if task_id is not None:
            changed = self._changed.setdefault(task_id, asyncio.Event())
            waiter = asyncio.ensure_future(changed.wait())
            waits.add(waiter)  # type: ignore[arg-type]
        try:
            await asyncio.wait(waits, timeout=RECHECK_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if waiter is not None:
                waiter.cancel()


async def file_chunks(path: Path, start: int, end: int) -> AsyncIterator[FileSpan]:
    """``[start, end)`` of a complete file, a span at a time."""
    fd = os.open(path, os.O_RDONLY)
    try:
        async for span in _spans_of(fd, start, end):
            yield span
    finally:
        os.close(fd)


async def _spans_of(fd: int, start: int, end: int) -> AsyncIterator[FileSpan]:
    if os.fstat(fd).st_size < end:
        raise BodyCut(f"the file is shorter than {end} bytes")
    for pos in range(start, end, SPAN_BYTES):
        yield FileSpan(fd, pos, min(SPAN_BYTES, end - pos))


async def flight_chunks(
    flight: Flight,
    watch: PrefixWatch,
    start: int,
    end: int,
    settled: asyncio.Future[None] | None = None,
) -> AsyncIterator[FileSpan]:
    """``[start, end)`` of a blob in flight: from its partial file as the prefix grows, the held
    back end (and anything left) once the blob is verified and in place, and (``settled``) the
    store's bookkeeping done, so a client that has the whole file finds it in the store too."""
    size = flight.file.facts.size
    fd: int | None = None
    pos = start
    wanted = -1  # where this reader last asked the engine to fetch from
    try:
        while pos < end and not flight.done.done():
            if fd is None:
                fd = _open_if_there(flight.part)
            final = max(watch.final(flight.task_id), flight.demand.final_end(pos))
            limit = min(final, size - HOLD_BACK_BYTES, end)
            if fd is not None and limit > pos:
                # The partial file has its full size from the start (preallocated): a final
                # byte is in it.
                span = FileSpan(fd, pos, min(SPAN_BYTES, limit - pos))
                pos += span.count
                yield span
                continue
            if wanted != pos:
                wanted = pos
                flight.demand.want(pos, min(end, pos + WANT_BYTES))
            await watch.wait_change(flight.task_id, flight.done)
        await flight.wait()  # raises what the download failed with: the response is cut
        if settled is not None:
            await asyncio.wait({settled})  # its failure is logged; the bytes are good
        if pos < end:
            async for span in _rest_from_blob(flight, fd, start, pos, end):
                yield span
    finally:
        if fd is not None:
            os.close(fd)


async def _rest_from_blob(
    flight: Flight, part_fd: int | None, start: int, pos: int, end: int
) -> AsyncIterator[FileSpan]:
    blob_fd = os.open(flight.blob, os.O_RDONLY)
    try:
        if pos > start and (
            part_fd is None or os.fstat(part_fd).st_ino != os.fstat(blob_fd).st_ino
        ):
            raise BodyCut(f"{flight.blob.name}: the partial file served so far was replaced")
        async for span in _spans_of(blob_fd, pos, end):
            yield span
    finally:
        os.close(blob_fd)


def _open_if_there(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


__all__ = [
    "CHUNK_BYTES",
    "HOLD_BACK_BYTES",
    "SPAN_BYTES",
    "BodyCut",
    "FileSpan",
    "PrefixWatch",
    "file_chunks",
    "flight_chunks",
    "span_bytes",
]
