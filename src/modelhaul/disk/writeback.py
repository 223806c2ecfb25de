"""Writeback of a partial file's finished ranges while the transfer goes on.

Left alone, the kernel writes a file's dirty pages to disk only after 30 s or once dirty memory
passes its background threshold (10 % of memory by default), so a download of a few GiB leaves
most of its bytes for the fsync before the rename: the user waits for the disk after the last
byte arrived. Started as ranges become final, the writes overlap the transfer and the final
fsync has little left. Measured for 4 GiB to ext4 on a 2-core VM: at the last byte about 2 GiB
were still dirty and an fsync then took 0.9 s; written back early, about 25 MiB and 0.01 s, for
about 0.3 CPU-s spent in the writeback thread (work the kernel's flusher does otherwise).

Ranges are handed over every ``every_bytes`` (tens of MiB, never per write) from the loop, and
written back in one thread shared by the process: a write-back request may block while the
device queue is full, and nothing on the event loop may wait for a disk.
"""

from __future__ import annotations

import asyncio
import mmap
from concurrent.futures import Future, ThreadPoolExecutor

from ..policy.ranges import Range, RangeSet
from .files import start_writeback

EVERY_BYTES = 32 * 1024 * 1024
# One thread: the requests of all downloads only queue I/O, and the disk takes them in turn.
_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelhaul-writeback")


def unasked(done: RangeSet, asked: RangeSet) -> list[Range]:
    """The parts of ``done`` not in ``asked``, in order (both are short sorted lists)."""
    out: list[Range] = []
    prior = list(asked)
    for start, end in done:
        pos = start
        for a, b in prior:
            if b <= pos:
                continue
            if a >= end:
                break
            if a > pos:
                out.append((pos, a))
            pos = max(pos, b)
            if pos >= end:
                break
        if pos < end:
            out.append((pos, end))
    return out


class Writeback:
    """Start the kernel's writeback of ``[0, size)`` of ``fd`` as ``advance`` reports it final.

    ``advance`` is called from the event loop and never blocks; ``aclose`` must be awaited
    before the descriptor is closed.
    """

    def __init__(self, fd: int, size: int, *, every_bytes: int = EVERY_BYTES) -> None:
        self._fd = fd
        self._size = size
        self._every = every_bytes
        self._asked = RangeSet()  # handed to a job already
        self._jobs: set[Future[None]] = set()
        self.started_bytes = 0  # written back as asked (read by tests and measurements)
        self._working = True  # False once the system refused: the fsync does it all

    def advance(self, done: RangeSet) -> None:
        """``done`` holds final bytes; once ``every_bytes`` of them (or the whole file) are
        not yet written back, start that in the writeback thread. Never blocks."""
        if not self._working:
            return
        complete = done.covers(0, self._size)
        due = []
        for start, end in unasked(done, self._asked):
            if end < self._size:
                # A range's last page is still being written (its segment goes on): leave it
                # for later rather than write it twice.
                end -= end % mmap.PAGESIZE
            if end > start:
                due.append((start, end))
        if not due or (not complete and sum(e - s for s, e in due) < self._every):
            return
        for start, end in due:
            self._asked.add(start, end)
        job = _POOL.submit(self._run, due)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    def _run(self, ranges: list[Range]) -> None:
        for start, end in ranges:
            if not self._working:
                return
            if start_writeback(self._fd, start, end - start):
                self.started_bytes += end - start
            else:
                self._working = False

    async def wait_idle(self) -> None:
        """Wait until every range handed over so far was handed to the disk."""
        jobs = [asyncio.wrap_future(job) for job in list(self._jobs)]
        if jobs:
            await asyncio.wait(jobs)

    async def aclose(self) -> None:
        """Drop the requests not yet started; wait for the one running (it uses the fd)."""
        self._working = False
        running = [asyncio.wrap_future(job) for job in list(self._jobs) if not job.cancel()]
        if running:
            await asyncio.shield(asyncio.wait(running))


__all__ = ["EVERY_BYTES", "Writeback", "unasked"]
