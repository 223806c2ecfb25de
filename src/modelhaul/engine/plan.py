"""The plan of a download: its partial file and journal, preallocation, the segment schedule.

Journal policy lives here: when a journal is loaded, saved (small files are not), dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import time

from ..config import SegmentPolicy
from ..disk.files import os_error, preallocate
from ..disk.journal import JournalState
from ..errors import DiskFull, ModelhaulError, human_bytes
from ..policy.segments import SegmentScheduler
from ..remedies import Remedy
from .pools import JOURNAL_POOL
from .transfer import Transfer

_JOURNAL_MIN_BYTES = 2 * 1024 * 1024
# A segment younger than this is not stolen from, nor one that will be done within it: on a
# fast link the victim's server has already sent what the thief would ask for again.
_STEAL_AFTER_S = 0.25


def open_part(t: Transfer) -> None:
    """Load the journal if it belongs to this download, else start afresh; open the partial
    file (never through a symbolic link)."""
    loaded = t.facts.journal.load()
    exists = t.facts.part.is_file() and not t.facts.part.is_symlink()
    if (
        loaded
        and exists
        # Bytes of a body of unknown length (chunked, content-encoded) cannot be resumed;
        # treated as held, they would collide with the next probe's range.
        and loaded.size is not None
        and (
            loaded.url == t.facts.url
            or (t.facts.expected_sha256 and loaded.sha256 == t.facts.expected_sha256)
        )
    ):
        t.state = loaded
        t.state.url = t.facts.url
        t.state.sha256 = t.facts.expected_sha256
        t.journal_written = True
    else:
        if loaded is not None or exists:
            t.facts.journal.remove()
        t.state = JournalState(url=t.facts.url, size=None, sha256=t.facts.expected_sha256)
    _open_fd(t, exclusive=False)
    if not t.state.done:
        os.ftruncate(t.fd, 0)


def open_fresh_part(t: Transfer, *, exclusive: bool = False) -> None:
    """Open the partial file empty, keeping the state the probe found (it ran before the file
    was opened: nothing is resumed). ``exclusive``: the file must be new (a name of this
    process alone)."""
    _open_fd(t, exclusive=exclusive)
    if not exclusive:
        os.ftruncate(t.fd, 0)


def _open_fd(t: Transfer, *, exclusive: bool) -> None:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_EXCL if exclusive else 0)
    try:
        # O_NOFOLLOW: a symlink planted at the partial path must not redirect our writes.
        # 0o664 with the user's umask: never world-writable.
        t.fd = os.open(t.facts.part, flags, 0o664)
    except OSError as exc:
        raise os_error(exc, t.facts.part, t.dest) from exc


def journaled(size: int | None) -> bool:
    """Whether a file of ``size`` bytes keeps a journal (a smaller one restarts instead)."""
    return size is None or size >= _JOURNAL_MIN_BYTES


def may_split(segments: SegmentPolicy) -> bool:
    """Whether the first request may ask for a range (more than one connection allowed)."""
    n = segments.connections
    return n is None or n > 1


def plan_segments(t: Transfer, seg_cfg: SegmentPolicy) -> None:
    """The first connection count and the scheduler of the file's chunks, once its size is known."""
    assert t.size is not None
    fixed = seg_cfg.connections
    if fixed is not None:
        t.target = fixed
    elif t.size < seg_cfg.min_split_bytes:
        t.target = 1
    else:
        t.target = min(seg_cfg.initial_connections, seg_cfg.max_connections)
    conns = fixed or seg_cfg.max_connections
    chunk = t.size if t.target == 1 else seg_cfg.chunk_for(t.size, conns)
    t.sched = SegmentScheduler(
        t.size,
        t.state.done,
        chunk_bytes=chunk,
        min_steal_bytes=seg_cfg.min_steal_bytes,
        align=64 * 1024,
        steal_after_s=_STEAL_AFTER_S,
        demand=t.facts.demand,
    )
    if t.facts.demand is not None:
        t.facts.demand.attach(t.state.done, lambda: _on_want(t))


def _on_want(t: Transfer) -> None:
    """A reader wants bytes: idle connections look again; with none idle, the segment in
    flight with the most left ends early, so its connection comes for them soon."""
    if t.sched is not None and t.alive <= len(t.sched.active):
        t.sched.make_room_nowait()
    changed, t.sched_changed = t.sched_changed, asyncio.Event()
    changed.set()


def prepare_file(t: Transfer, *, check_disk_space: bool) -> None:
    """Check the free space, size the partial file, reserve its blocks, save the journal."""
    if t.size is None:
        return
    try:
        allocated = os.fstat(t.fd).st_blocks * 512
    except OSError:
        allocated = 0
    needed = max(0, t.size - allocated)
    if check_disk_space and needed:
        check_free_space(t, needed)
    try:
        if os.fstat(t.fd).st_size > t.size:
            os.ftruncate(t.fd, t.size)
        if journaled(t.size):
            # A small file is written in a few writes at once: reserving its blocks first
            # would only add a metadata update (and the conversion of unwritten extents).
            preallocate(t.fd, t.size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise os_error(exc, t.facts.part, t.dest) from exc
        # Filesystems without fallocate still work; the space check above stands.
    save_journal(t)


def check_free_space(t: Transfer, needed: int) -> None:
    """Raise DiskFull when the partial file's folder has less than ``needed`` bytes free."""
    free = shutil.disk_usage(t.facts.part.parent).free
    if free < needed:
        raise DiskFull(
            f"not enough disk space for {t.dest.name}: needs {human_bytes(needed)} more, "
            f"{human_bytes(free)} free in {t.facts.part.parent}",
            need_bytes=needed,
            free_bytes=free,
            path=str(t.facts.part.parent),
            remedy=Remedy.FREE_SHORTFALL,
        )


def save_journal(t: Transfer) -> None:
    """Record what the partial file holds (small files are not journaled: they restart).

    The state is taken now; the file is written in JOURNAL_POOL. While an earlier save is
    still being written this one is left to the next trigger (``journal_dirty``); a save that
    failed raises here, at the next one, or where the journal is settled.
    """
    if t.writeback is not None:  # the ranges recorded final: start writing them to disk
        t.writeback.advance(t.state.done)
    if not journaled(t.size):
        # Refetching a small file costs less than journaling it; it restarts instead.
        t.journal_dirty = False
        return
    if t.journal_job is not None:
        if not t.journal_job.done():
            t.journal_dirty = True
            return
        _landed(t)
    job = JOURNAL_POOL.submit(t.facts.journal.write, t.facts.journal.encode(t.state))
    t.journal_job = job
    t.journal_written = True
    t.journal_dirty = False
    t.journal_saved_at = time.monotonic()


async def flush_journal(t: Transfer) -> None:
    """Save the journal and wait until it is written (the end of an attempt)."""
    await settle_journal(t)
    save_journal(t)
    await settle_journal(t)


async def settle_journal(t: Transfer) -> None:
    """Wait for the save being written, raising its error."""
    if t.journal_job is not None:
        with contextlib.suppress(OSError):  # raised by _landed, mapped
            await asyncio.wrap_future(t.journal_job)
        _landed(t)


def _landed(t: Transfer) -> None:
    job, t.journal_job = t.journal_job, None
    if job is None or (exc := job.exception()) is None:
        return
    if isinstance(exc, OSError):
        raise os_error(exc, t.facts.journal.path, t.dest) from exc
    raise exc


async def drop_journal(t: Transfer) -> None:
    """Remove the journal once any save of it has landed (it would bring it back)."""
    with contextlib.suppress(ModelhaulError):  # a failed save: the file is removed anyway
        await settle_journal(t)
    if t.journal_written:
        await asyncio.wrap_future(JOURNAL_POOL.submit(t.facts.journal.remove))
        t.journal_written = False


__all__ = [
    "check_free_space",
    "drop_journal",
    "flush_journal",
    "journaled",
    "may_split",
    "open_fresh_part",
    "open_part",
    "plan_segments",
    "prepare_file",
    "save_journal",
    "settle_journal",
]
