"""Slice flights: a peer's share of a file, fetched upstream once and streamed as it arrives.

With ``modelhaul pull --peers`` each node asks a slice's owner for it (the request carries
``X-Modelhaul-Slice: SLICE_BYTES``, see ``policy.slices``). The owner must not fetch the whole
file for that (N nodes would cost N whole files upstream): it fetches only the slices it is
asked for, each once however many nodes ask at the same time (single flight per slice), into
its state directory, apart from the store's blobs (a slice is not a verified blob). Every reader
is served from the growing slice file as bytes arrive.

Access stays the mirror's: the route asks the upstream Hub about the file with the caller's
token first (``HubMirror.resolve``), and the slice is fetched with that caller's own credentials.
Nothing here is verified against the file's SHA-256 (a slice is not the file): the node that
assembles the file does that, and fetches what peers sent of a file that does not match again
from upstream (fleet.liars).

Slice files are scratch: a file's slices go once its blob is in this store (the mirror then
serves the blob, ``release``), and any slice nobody asked for in ``idle_s`` goes at the next
``sweep`` (run at most every ``SWEEP_EVERY_S`` as slices are asked for, the first time at the
first slice asked for after a start).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelhaulError, TransferError, TruncatedBody
from ..http.session import Transport, sleep_s
from ..policy.headers import parse_content_range
from ..policy.hubpaths import HubPath
from ..policy.retry import Retry
from ..policy.slices import slice_span
from .access import ACCEPT_TTL_S, token_key
from .bodies import SPAN_BYTES, BodyCut, FileSpan
from .hub import UpstreamFile

# The most bytes a slice request may cover, and the least: a node asking for 1-byte slices
# would make the owner keep a file per byte.
MIN_SLICE_BYTES = 64 * 1024
MAX_SLICE_BYTES = 4 * 1024**3
_READ_BYTES = 1024 * 1024
_MAX_KNOWN = 10_000
# A slice nobody asked for in this long is removed (the nodes of one pull ask for it within
# minutes of each other; a node that comes later costs the upstream that slice again).
SLICE_IDLE_S = 3600.0
SWEEP_EVERY_S = 60.0


def slice_bytes_of(header: str | None) -> int | None:
    """The slice size a request asks for (``X-Modelhaul-Slice``); None: not a slice request,
    or one out of bounds (then the whole-file flight serves it)."""
    if header is None or not header.strip().isdigit():
        return None
    n = int(header)
    return n if MIN_SLICE_BYTES <= n <= MAX_SLICE_BYTES else None


@dataclass(eq=False)
class SliceFlight:
    """One slice on its way from upstream into ``path`` (``.part`` until complete)."""

    path: Path
    start: int
    stop: int
    done: asyncio.Future[None]
    received: int = 0  # bytes written to the part file (from ``start``)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def part(self) -> Path:
        return self.path.with_name(self.path.name + ".part")

    def grew(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class SliceFlights:
    """The slices this mirror fetches or holds, under ``root`` (the service's state dir)."""

    def __init__(
        self,
        root: Path,
        *,
        stall_timeout_s: float = 30.0,
        retries: int = 3,
        idle_s: float = SLICE_IDLE_S,
    ) -> None:
        self.root = root
        self.idle_s = idle_s
        self._swept_at: float | None = None
        self.fetched_bytes = 0  # what slices cost the upstream since the start
        self._released: set[str] = set()  # files whose slices went (they are in the store)
        self._transport = Transport(stall_timeout_s=stall_timeout_s)
        self._retries = retries
        self._flights: dict[Path, SliceFlight] = {}
        self._runners: set[asyncio.Task[None]] = set()
        self._known: dict[tuple[str, HubPath], tuple[UpstreamFile, float]] = {}
        self._clock = time.monotonic

    def learn(self, hp: HubPath, auth: str | None, file: UpstreamFile) -> None:
        """The Hub just answered this caller about this file: remembered for ``ACCEPT_TTL_S``,
        as the mirror remembers whom the Hub accepted. A fleet asks for each file once per
        slice; without this every slice request would cost a request to the Hub (which
        rate-limits them)."""
        if len(self._known) >= _MAX_KNOWN:
            now = self._clock()
            self._known = {k: v for k, v in self._known.items() if v[1] > now}
        self._known[(token_key(auth), hp)] = (file, self._clock() + ACCEPT_TTL_S)

    def known(self, hp: HubPath, auth: str | None) -> UpstreamFile | None:
        """The file as the Hub described it to this caller lately, or None: ask the Hub."""
        hit = self._known.get((token_key(auth), hp))
        return hit[0] if hit is not None and hit[1] > self._clock() else None

    def path_of(self, sha256: str, slice_bytes: int, index: int) -> Path:
        return self.root / sha256 / f"{slice_bytes}-{index}"

    def join(self, file: UpstreamFile, slice_bytes: int, index: int) -> SliceFlight:
        """The flight of one slice: under way, already here, or started now (never blocks)."""
        facts = file.facts
        path = self.path_of(facts.etag, slice_bytes, index)
        flight = self._flights.get(path)
        if flight is not None:
            return flight
        self._sweep_soon()
        start, stop = slice_span(index, slice_bytes, facts.size)
        done = asyncio.get_running_loop().create_future()
        flight = SliceFlight(path=path, start=start, stop=stop, done=done)
        done.add_done_callback(lambda f: f.cancelled() or f.exception())  # seen if unawaited
        if _complete(path, stop - start, touch=True):
            flight.received = stop - start
            done.set_result(None)
            return flight
        self._flights[path] = flight
        runner = asyncio.create_task(self._fly(flight, file), name=f"slice-{path.name}")
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)
        runner.add_done_callback(lambda _r: self._flights.pop(path, None))
        return flight

    async def chunks(
        self, file: UpstreamFile, slice_bytes: int, start: int, end: int
    ) -> AsyncIterator[FileSpan]:
        """``[start, end)`` of the file, slice by slice, each as its bytes arrive."""
        pos = start
        while pos < end:
            flight = self.join(file, slice_bytes, pos // slice_bytes)
            upto = min(end, flight.stop)
            async for span in _read(flight, pos, upto):
                pos += span.count
                yield span

    async def _fly(self, flight: SliceFlight, file: UpstreamFile) -> None:
        try:
            await asyncio.to_thread(flight.path.parent.mkdir, parents=True, exist_ok=True)
            fd = os.open(flight.part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                await self._fetch(flight, file, fd)
            finally:
                os.close(fd)
            os.replace(flight.part, flight.path)
        except asyncio.CancelledError:
            flight.done.cancel()
            raise
        except (ModelhaulError, OSError) as exc:  # handed to every reader
            flight.part.unlink(missing_ok=True)
            flight.done.set_exception(exc)
        else:
            flight.done.set_result(None)
        finally:
            flight.grew()

    async def _fetch(self, flight: SliceFlight, file: UpstreamFile, fd: int) -> None:
        """Receive the slice into ``fd``, resuming after failures."""
        retry = Retry(total=self._retries, initial_s=0.2, max_s=2.0)
        while True:
            before = flight.received
            try:
                await self._receive(flight, file, fd)
                return
            except TransferError as exc:
                retry = retry.increment(exc, gained=flight.received > before)
                if not exc.retryable or retry.is_exhausted():
                    raise
                await sleep_s(retry.wait_s(getattr(exc, "retry_after_s", None)))

    async def _receive(self, flight: SliceFlight, file: UpstreamFile, fd: int) -> None:
        first = flight.start + flight.received
        headers = {**dict(file.headers), "Range": f"bytes={first}-{flight.stop - 1}"}
        resp = await self._transport.request("GET", file.url, headers=headers)
        try:
            cr = parse_content_range(resp.headers.get("Content-Range"))
            if resp.status != 206 or cr is None or cr.start != first or cr.total != file.facts.size:
                raise TransferError(f"the upstream did not send bytes {first}- of the slice")
            resp.set_read_size(_READ_BYTES)
            while flight.received < flight.stop - flight.start:
                data = await resp.read_chunk()
                if not data:
                    raise TruncatedBody("the upstream ended the slice early")
                data = data[: flight.stop - flight.start - flight.received]
                os.pwrite(fd, data, flight.received)  # the page cache: microseconds
                flight.received += len(data)
                self.fetched_bytes += len(data)
                flight.grew()
        finally:
            resp.close()

    def release(self, sha256: str) -> None:
        """The file ``sha256`` is in this store now: its slices are no longer needed (those
        under way finish for their readers and go at a later sweep)."""
        if sha256 in self._released:
            return
        self._released.add(sha256)
        busy = {p for p in self._flights if p.parent.name == sha256}
        self._spawn(asyncio.to_thread(_remove_slices, self.root / sha256, busy, None))

    async def sweep(self) -> int:
        """Remove every slice nobody asked for in ``idle_s``; the number of files removed."""
        self._swept_at = self._clock()
        busy = set(self._flights)
        oldest = time.time() - self.idle_s
        dirs = await asyncio.to_thread(
            lambda: list(self.root.iterdir()) if self.root.is_dir() else []
        )
        removed = 0
        for d in dirs:
            removed += await asyncio.to_thread(_remove_slices, d, busy, oldest)
        return removed

    def _sweep_soon(self) -> None:
        if self._swept_at is None or self._clock() - self._swept_at >= SWEEP_EVERY_S:
            self._swept_at = self._clock()
            self._spawn(self.sweep())

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(work, name="slice-sweep")
        self._runners.add(task)
        task.add_done_callback(self._runners.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # best effort

    async def close(self) -> None:
        for runner in self._runners:
            runner.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        await self._transport.close()


async def _read(flight: SliceFlight, pos: int, upto: int) -> AsyncIterator[FileSpan]:
    """``[pos, upto)`` (file offsets, inside the slice) as the flight makes them final; the
    spans' offsets are in the slice file."""
    fd: int | None = None
    try:
        while pos < upto:
            have = flight.start + flight.received
            if have > pos:
                if fd is None:
                    fd = _open_slice(flight)
                n = min(SPAN_BYTES, upto - pos, have - pos)
                yield FileSpan(fd, pos - flight.start, n)  # written: in the file
                pos += n
                continue
            if flight.done.done():
                await flight.done  # raises what the fetch failed with: the response is cut
                raise BodyCut(f"the slice {flight.path.name} is shorter than asked")
            await flight.changed.wait()
    finally:
        if fd is not None:
            os.close(fd)


def _open_slice(flight: SliceFlight) -> int:
    """The slice's file: the part file while in flight (the same inode once renamed)."""
    for path in (flight.part, flight.path):
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
    raise BodyCut(f"the slice file {flight.path.name} is gone")


def _complete(path: Path, size: int, *, touch: bool = False) -> bool:
    """Whether the slice file holds all ``size`` bytes; ``touch``: and mark it used now."""
    try:
        if path.stat().st_size != size:
            return False
        if touch:
            os.utime(path)  # the sweep's clock: one call per slice asked for
        return True
    except OSError:
        return False


def _remove_slices(folder: Path, busy: set[Path], older_than: float | None) -> int:
    """Remove the slice files in ``folder`` not in ``busy`` (and, with ``older_than``, last
    used before it), then the folder if empty; how many files went."""
    removed = 0
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for path in entries:
        live = path.with_name(path.name.removesuffix(".part"))
        if live in busy:
            continue
        try:
            if older_than is None or path.stat().st_mtime < older_than:
                path.unlink()
                removed += 1
        except OSError:
            continue
    with contextlib.suppress(OSError):
        folder.rmdir()  # only once empty
    return removed


__all__ = [
    "MAX_SLICE_BYTES",
    "MIN_SLICE_BYTES",
    "SLICE_IDLE_S",
    "SWEEP_EVERY_S",
    "SliceFlight",
    "SliceFlights",
    "slice_bytes_of",
]
