"""Single flight: a blob missing from the store is fetched upstream once, by the engine through
the service's DownloadManager (segmented, resumable, verified), however many clients ask.

The first request for a blob starts a ``Flight``; later ones join it. A flight holds the blob's
lock (the one huggingface_hub and ``modelhaul pull`` take, so no other process fetches it at the
same time), hands the download to the manager, and once the blob is in place records it as a
pull would: LFS blobs were verified by the engine against their SHA-256 (chunk hashes recorded
for repairs), regular files are checked against their git blob id here. Readers learn the
manager's download id as soon as there is one, to follow the partial file as it grows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IntegrityError
from ..manager.downloads import DownloadManager
from ..policy.paths import part_paths
from ..policy.segments import Demand
from ..store.repo import BlobLock, RepoStore
from .hub import UpstreamFile


@dataclass(eq=False)
class Flight:
    """One blob on its way into the store."""

    repo: RepoStore
    file: UpstreamFile
    done: asyncio.Future[None]
    task_id: str | None = None  # the manager's download, once added
    # The ranges readers wait for (fetched first), and which bytes are written so far.
    demand: Demand = field(default_factory=Demand)

    @property
    def blob(self) -> Path:
        return self.repo.blob_path(self.file.facts.etag)

    @property
    def part(self) -> Path:
        return part_paths(self.blob)[0]

    async def wait(self) -> None:
        """Until the blob is in the store; raises what the fetch failed with."""
        await asyncio.shield(self.done)


class Flights:
    """The blobs being fetched, one flight each (keyed by repository folder and blob id)."""

    def __init__(self, manager_of: Callable[[], DownloadManager]) -> None:
        self._manager_of = manager_of
        self._flights: dict[tuple[str, str], Flight] = {}
        self._runners: set[asyncio.Task[None]] = set()

    def join(self, repo: RepoStore, file: UpstreamFile) -> Flight:
        """The flight of ``file``'s blob: the one under way, else a new one (never blocks)."""
        key = (str(repo.folder), file.facts.etag)
        flight = self._flights.get(key)
        if flight is not None:
            return flight
        loop = asyncio.get_running_loop()
        flight = Flight(repo=repo, file=file, done=loop.create_future())
        # Nobody may be waiting when it fails (every client gone): the failure is still seen.
        flight.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._flights[key] = flight
        runner = asyncio.create_task(self._fly(flight), name=f"mirror-{file.facts.etag[:12]}")
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)
        runner.add_done_callback(lambda _r: self._flights.pop(key, None))
        return flight

    async def _fly(self, flight: Flight) -> None:
        try:
            await self._fetch(flight)
        except asyncio.CancelledError:
            if not flight.done.done():
                flight.done.cancel()
            raise
        except Exception as exc:  # handed to every waiter
            if not flight.done.done():
                flight.done.set_exception(exc)
        else:
            flight.done.set_result(None)

    async def _fetch(self, flight: Flight) -> None:
        rs, facts = flight.repo, flight.file.facts
        await asyncio.to_thread(rs.prepare)
        async with BlobLock(rs.lock_path(facts.etag)):
            if await asyncio.to_thread(_in_store, rs, facts.etag):
                return
            handle = self._manager_of().add(
                flight.file.url,
                flight.blob,
                sha256=facts.etag if facts.lfs else None,
                expected_size=facts.size,
                headers=dict(flight.file.headers),
                demand=flight.demand,
            )
            flight.task_id = handle.id
            await handle.wait()
            if facts.lfs:
                await asyncio.to_thread(rs.record_download, facts.etag)
            elif not await asyncio.to_thread(rs.verify_blob, facts.etag, rehash=True):
                flight.blob.unlink(missing_ok=True)
                raise IntegrityError(
                    f"{flight.blob.name}: the upstream bytes do not match its git hash"
                )

    def of_task(self, task_id: str) -> Flight | None:
        """The flight whose download the manager knows as ``task_id`` (a few are under way)."""
        return next((f for f in self._flights.values() if f.task_id == task_id), None)

    async def close(self) -> None:
        for runner in self._runners:
            runner.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)


def _in_store(rs: RepoStore, etag: str) -> bool:
    """A blob the store holds whole: vouched for by its record, or hashed now."""
    if not rs.blob_path(etag).is_file():
        return False
    return rs.record(etag) is not None or rs.verify_blob(etag)


__all__ = ["Flight", "Flights"]
