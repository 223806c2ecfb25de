"""Finding the peer that sent wrong bytes, with the upstream as the only trusted witness.

A Hub file is vouched for by one digest, its SHA-256; the Hub publishes none per chunk. When a
file assembled from peers fails it, every byte a peer sent is suspect and every byte the
upstream sent is not. So the node keeps the partial file (the engine does, for downloads with
several sources), digests each range a peer sent as it arrived (``hold_ranges``), marks those
ranges missing in the journal, and lets the upstream alone send them again: the file is
SHA-256-verified as always. The ranges whose digests changed are the lies, and their peers
(``LieCheck.liars``) are left out of the rest of the pull. Only the bytes peers sent are fetched
again, never the whole file; an honest peer whose range shared no byte with a lie is not blamed.

The digests are xxh3-128 (not cryptographic: both sides of a comparison are bytes this node
holds, so nobody can choose a collision); they cost a read of the peers' ranges on this failure
path only.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import xxhash

from ..disk.journal import Journal, JournalState
from ..errors import Category, ModelhaulError
from ..events import FileCallback, FileEvent, FilePhase
from ..policy.paths import part_paths
from ..policy.ranges import RangeSet
from ..policy.slices import DropReason, Served, SliceRouter
from ..sources.model import ModelFile

_READ_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class LieCheck:
    """The ranges peers sent for one file, with the digest of each as it arrived."""

    served: tuple[Served, ...]
    digests: tuple[str, ...]

    def liars(self, blob: Path) -> dict[str, int]:
        """Each peer whose bytes differ from the verified ``blob``'s, with the size of its
        ranges that differ."""
        now = range_digests(blob, self.served)
        found: dict[str, int] = {}
        for s, before, after in zip(self.served, self.digests, now, strict=True):
            if before != after:
                found[s.peer] = found.get(s.peer, 0) + s.stop - s.start
        return found


async def hold_for_check(
    blob: Path, f: ModelFile, router: SliceRouter | None, failure: ModelhaulError
) -> LieCheck | None:
    """After a download of ``f`` through ``router`` failed: when it failed its SHA-256, hold
    what peers sent for the check (``hold_ranges``); else None."""
    if router is None or failure.category is not Category.INTEGRITY or f.sha256 is None:
        return None
    return await asyncio.to_thread(
        hold_ranges, blob, size=f.size, sha256=f.sha256, url=f.urls[0], served=router.served
    )


def hold_ranges(
    blob: Path, *, size: int, sha256: str, url: str, served: Sequence[Served]
) -> LieCheck | None:
    """Digest what peers sent into ``blob``'s partial file and mark it missing in the journal,
    so the next download of ``blob`` fetches only that; None (and nothing kept) when the
    partial file is not the one the peers wrote into."""
    part, journal = part_paths(blob)
    ranges = _merged(served, size)
    try:
        if not ranges or part.stat().st_size != size:
            raise FileNotFoundError(part)
        digests = range_digests(part, ranges)
    except OSError:
        part.unlink(missing_ok=True)
        Journal(journal).remove()
        return None
    missing = RangeSet((s.start, s.stop) for s in ranges)
    kept = RangeSet()
    pos = 0
    for start, stop in missing:
        kept.add(pos, start)
        pos = stop
    kept.add(pos, size)
    Journal(journal).save(JournalState(url=url, size=size, sha256=sha256, done=kept))
    return LieCheck(served=tuple(ranges), digests=tuple(digests))


def range_digests(path: Path, ranges: Sequence[Served]) -> list[str]:
    """The xxh3-128 of each range of ``path`` (flat memory)."""
    out: list[str] = []
    buf = bytearray(_READ_BYTES)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        for s in ranges:
            h = xxhash.xxh3_128()
            pos = s.start
            while pos < s.stop:
                n = os.preadv(fd, [view[: min(_READ_BYTES, s.stop - pos)]], pos)
                if n <= 0:
                    raise OSError(f"{path} ended at {pos}, before {s.stop}")
                h.update(view[:n])
                pos += n
            out.append(h.hexdigest())
    finally:
        os.close(fd)
    return out


async def drop_liars(
    router: SliceRouter | None,
    check: LieCheck | None,
    blob: Path,
    path: str,
    on_file: FileCallback | None,
) -> None:
    """Once ``blob`` is verified: leave out of the rest of the pull every peer whose bytes
    differ from its (``check``), then say which peers the download of ``path`` left out."""
    if router is not None and check is not None and blob.is_file():
        liars = await asyncio.to_thread(check.liars, blob)
        for peer, n in liars.items():
            detail = f"sent {n} bytes that differ from the upstream's (the file failed its SHA-256)"
            router.drop(peer, DropReason.LIED, detail)
    tell_dropped(router, path, on_file)


def tell_dropped(router: SliceRouter | None, path: str, on_file: FileCallback | None) -> None:
    """Say which peers the download of ``path`` left out, and why."""
    if router is not None and on_file is not None:
        for d in router.drops_here():
            reason = f"peer {d.peer}: {d.detail} (left out: {d.reason.value})"
            on_file(FileEvent(path=path, phase=FilePhase.MIRROR, reason=reason))


def _merged(served: Sequence[Served], size: int) -> list[Served]:
    """The served ranges in file order, clipped to the file; a range sent twice (a steal's
    overlap) is kept once, with the peer that sent it last."""
    by_start: dict[tuple[int, int], Served] = {}
    for s in served:
        stop = min(s.stop, size)
        if s.start < stop:
            by_start[(s.start, stop)] = Served(s.start, stop, s.peer)
    return [by_start[k] for k in sorted(by_start)]


__all__ = [
    "LieCheck",
    "drop_liars",
    "hold_for_check",
    "hold_ranges",
    "range_digests",
    "tell_dropped",
]
