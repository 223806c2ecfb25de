"""The end of an attempt: verify the bytes, publish the file, or leave a resumable partial.

Write into a partial file beside the destination, verify, fsync, then ``os.replace`` into
place; only then remove the journal. A large file's ranges are handed to the disk as they
become final (disk.writeback, started here, advanced at each journal save), so the fsync after
the last byte waits for the last few MiB only. An attempt that ends otherwise keeps its partial
file and journal when a resume can use them, and removes them when not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

from ..config import DownloadConfig
from ..disk.files import Buffer, WriteFailed, commit_file, os_error
from ..disk.hashing import CHUNK_BYTES, FileDigest, PrefixHasher
from ..disk.partials import publish_private
from ..disk.writeback import EVERY_BYTES, Writeback
from ..errors import IntegrityError, ModelhaulError
from ..events import Phase, Result
from .plan import drop_journal, flush_journal, prepare_file, settle_journal
from .pools import WRITE_POOL
from .probe import Probe, close_probe
from .progress import emit_progress
from .stages import stage
from .transfer import Transfer

# Small files arriving in order are written and hashed on the loop: no thread hand-offs.
_INLINE_MAX_BYTES = 4 * 1024 * 1024


def start_writing(t: Transfer, first: Probe, config: DownloadConfig) -> None:
    """After the probe: size the partial file and start hashing its completed prefix (with
    the xxh3 of each chunk, if ``config.chunk_digests``)."""
    try:
        if t.facts.on_phase:
            t.facts.on_phase(Phase.PROBED, t.size)
        if t.memory is None:
            prepare_file(t, check_disk_space=config.check_disk_space)
            t.hasher = PrefixHasher(t.fd, chunks=config.chunk_digests)
            t.hash_resumed = t.state.done.prefix_end()
            t.hasher.advance(t.hash_resumed)
        t.resumed_from = t.bytes_done()
    except Exception:
        # No worker took the probe's response (a full disk, say): drop its connection,
        # or the server goes on sending into it for as long as the error lives.
        close_probe(first)
        raise
    if t.size is not None and t.size > EVERY_BYTES:
        # Large files are written back as their ranges become final: the fsync before the
        # rename then waits for little more than the last few MiB.
        t.writeback = Writeback(t.fd, t.size)
    if t.memory is not None:
        # A body held in memory is written, and so checked for space, by its publishing job:
        # no free-space check (it is smaller than 2 MiB) and no hashing here.
        return
    if t.size is not None and t.size <= _INLINE_MAX_BYTES and t.target == 1 and not t.state.done:
        # A file of one chunk needs no chunk digests (a repair refetches it whole); a larger
        # one gets them, when asked for, from the same inline pass as its SHA-256.
        chunked = config.chunk_digests and t.size > CHUNK_BYTES
        t.inline_hash = FileDigest() if chunked else hashlib.sha256()


async def verify(t: Transfer) -> tuple[int, str]:
    """The size and SHA-256 of the received file; a mismatch with the expected one removes it
    (kept when the bytes came from several sources: the caller sorts them out).

    Raises:
        IntegrityError: the digest is not the expected SHA-256.
    """
    size = t.size if t.size is not None else t.bytes_done()
    t.size = size
    # Landed before the hash: a run killed while hashing finds every byte journaled. The
    # hash thread reads on meanwhile.
    await flush_journal(t)
    emit_progress(t, force=True)
    if t.facts.on_phase:
        t.facts.on_phase(Phase.VERIFYING, size)
    stage("hashing")
    t.chunk_bytes, t.chunk_xxh3 = 0, ()
    if t.inline_hash is not None and t.inline_pos == size:
        digest = t.inline_hash.hexdigest()
        if isinstance(t.inline_hash, FileDigest):
            t.chunk_bytes, t.chunk_xxh3 = t.inline_hash.chunk_bytes, t.inline_hash.chunks()
    else:
        assert t.hasher is not None
        t.hasher.advance(t.state.done.prefix_end())
        digest = await t.hasher.digest(size)
        if size > CHUNK_BYTES:
            t.chunk_bytes, t.chunk_xxh3 = t.hasher.chunks()
    expected = t.facts.expected_sha256
    if expected and digest != expected:
        if t.facts.sources is None:
            await drop_journal(t)
            t.facts.part.unlink(missing_ok=True)
        # else kept (its journal says every byte is held): the caller finds which source
        # sent wrong bytes and refetches only theirs (fleet.liars).
        raise IntegrityError(
            f"SHA-256 mismatch for {t.dest.name}: expected {expected}, got {digest}"
        )
    return size, digest


async def publish(t: Transfer) -> None:
    """fsync the verified partial file, rename it into place, then drop its journal."""
    await _stop_writeback(t)  # what it had not started yet, the fsync writes
    # fsync, rename and the directory fsync block for milliseconds: off the loop, so many
    # small files publish in parallel and no other transfer stalls meanwhile.
    job = WRITE_POOL.submit(commit_file, t.fd, t.facts.part, t.dest)
    t.track(job)
    try:
        await asyncio.wrap_future(job)
    except OSError as exc:
        raise os_error(exc, t.dest, t.dest) from exc
    os.close(t.fd)
    t.fd = -1
    stage("renamed_before_journal_removal")
    await drop_journal(t)


async def publish_from_memory(
    t: Transfer, shared: Path, record: Callable[[int, str], None] | None
) -> tuple[int, str]:
    """Verify the body held in memory, write it to a partial file of this process alone
    beside ``shared``, fsync it, rename it into place and ``record(size, digest)`` it (if
    given): one thread job for all of it, so a small file's hashing and file system calls
    never run on the loop. Returns the size and SHA-256.

    Raises:
        IntegrityError: the digest is not the expected SHA-256 (nothing was written).
    """
    assert t.memory is not None
    size = t.size if t.size is not None else t.bytes_done()
    t.size = size
    emit_progress(t, force=True)
    if t.facts.on_phase:
        t.facts.on_phase(Phase.VERIFYING, size)
    stage("hashing")
    t.claim(t.dest)  # before anything is published there; the hash is the job's
    pieces, t.memory = t.memory, []  # the job owns them now
    job = WRITE_POOL.submit(
        _verify_publish, pieces, size, t.facts.expected_sha256, shared, t.dest, record
    )
    try:
        hasher = await asyncio.wrap_future(job)
    except WriteFailed as exc:
        raise os_error(exc.cause, shared, t.dest) from exc.cause
    except OSError as exc:
        raise os_error(exc, shared, t.dest) from exc
    t.chunk_bytes, t.chunk_xxh3 = 0, ()
    if isinstance(hasher, FileDigest):
        t.chunk_bytes, t.chunk_xxh3 = hasher.chunk_bytes, hasher.chunks()
    stage("renamed_before_journal_removal")
    return size, hasher.hexdigest()


def _verify_publish(
    pieces: list[tuple[int, list[Buffer]]],
    size: int,
    expected: str | None,
    shared: Path,
    dest: Path,
    record: Callable[[int, str], None] | None,
) -> Any:
    """The job of publish_from_memory, in a writer thread; returns the body's hasher."""
    hasher = FileDigest() if size > CHUNK_BYTES else hashlib.sha256()
    at = 0
    for offset, bufs in pieces:
        if offset != at:  # out of order (a second connection): hash it assembled
            hasher = FileDigest() if size > CHUNK_BYTES else hashlib.sha256()
            hasher.update(_assemble(pieces, size))
            break
        for b in bufs:
            hasher.update(b)  # large updates release the GIL: the loop runs meanwhile
            at += len(b)
    digest = hasher.hexdigest()
    if expected and digest != expected:
        raise IntegrityError(f"SHA-256 mismatch for {dest.name}: expected {expected}, got {digest}")
    publish_private(shared, dest, pieces)
    if record is not None:
        record(size, digest)
    return hasher


def _assemble(pieces: list[tuple[int, list[Buffer]]], size: int) -> bytearray:
    body = bytearray(size)
    for offset, bufs in pieces:
        for b in bufs:
            body[offset : offset + len(b)] = b
            offset += len(b)
    return body


def result_of(t: Transfer, size: int, digest: str) -> Result:
    """The Result of a published download."""
    return Result(
        url=t.facts.url,
        path=str(t.dest),
        size=size,
        sha256=digest,
        elapsed_s=time.monotonic() - t.facts.started,
        attempts=t.attempts,
        resumed_from=t.resumed_from,
        bytes_transferred=t.received,
        etag=t.state.etag,
        chunk_bytes=t.chunk_bytes,
        chunk_xxh3=t.chunk_xxh3,
    )


async def end_attempt(t: Transfer) -> None:
    """Whatever the outcome: stop hashing, close the partial file, keep it only if resumable."""
    if t.hasher is not None:
        await t.hasher.aclose()
        t.hasher = None
    await _stop_writeback(t)
    if t.fd < 0:
        return
    with contextlib.suppress(ModelhaulError):
        if t.facts.part.exists() and t.size is not None and t.state.done:
            await flush_journal(t)
        else:
            await settle_journal(t)
    # A cancelled await does not stop a write already running in its thread; it
    # must end before the descriptor number can be reused by another open file.
    wait_futures(list(t.writes))
    os.close(t.fd)
    t.fd = -1
    if not t.state.done or t.size is None or t.single:
        # Nothing worth resuming (without a size no range can be asked for, and
        # an origin that ignored Range answers the next run from byte 0 again):
        # leave no partial file behind.
        t.facts.part.unlink(missing_ok=True)
        await drop_journal(t)
    if t.received:
        # The last word on what this attempt received and whether it can resume,
        # for those who account across attempts (the manager, a pause, Ctrl-C).
        emit_progress(t, force=True)


async def _stop_writeback(t: Transfer) -> None:
    """Stop writing back early; its thread is done with the descriptor when this returns."""
    if t.writeback is not None:
        await t.writeback.aclose()
        t.writeback = None


__all__ = [
    "end_attempt",
    "publish",
    "publish_from_memory",
    "result_of",
    "start_writing",
    "verify",
]
