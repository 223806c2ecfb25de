"""A partial download's lock and leftovers: whether someone holds it, and throwing it away.

Where the partial data and journal live is pure arithmetic (``policy.paths``); the faces ask
these questions through the manager (``DownloadManager.is_downloading`` / ``discard_partial``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

from filelock import FileLock
from filelock import Timeout as LockTimeout

from ..policy.paths import PART_SUFFIX, part_paths
from .files import Buffer, commit_file, pwritev_all
from .journal import Journal


def lock_file_for(lock_dir: Path, part: Path) -> Path:
    """The cross-process lock a download of ``part`` holds (one per partial file)."""
    digest = hashlib.sha256(str(part).encode()).hexdigest()[:32]
    return lock_dir / f"{digest}.lock"


def is_downloading(lock_dir: Path, part: Path) -> bool:
    """True while some process holds the download lock of ``part``."""
    path = lock_file_for(lock_dir, part)
    if not path.exists():
        return False
    lock = FileLock(str(path), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except LockTimeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


def discard_partial(dest: Path, *, part: Path | None = None, journal: Path | None = None) -> None:
    """Remove the partial data and journal of a target (what cancel means)."""
    default_part, default_journal = part_paths(dest)
    (part or default_part).unlink(missing_ok=True)
    Journal(journal or default_journal).remove()


__all__ = [
    "create_private",
    "discard_partial",
    "is_downloading",
    "lock_file_for",
    "publish_private",
]


# A partial file of one process alone: "<name>.<pid>-<6 hex>.modelhaul.part".
_PRIVATE = re.compile(r"\.\d+-[0-9a-f]{6}" + re.escape(PART_SUFFIX) + "$")


def private_part(part: Path) -> Path:
    """A partial file beside ``part`` for this process alone (same suffix, so ``doctor`` and
    ``gc`` see one left by a crash). Its owner holds it with ``hold_private``."""
    stem = part.name.removesuffix(PART_SUFFIX)
    return part.with_name(f"{stem}.{os.getpid()}-{secrets.token_hex(3)}{PART_SUFFIX}")


def hold_private(fd: int) -> bool:
    """Lock an open private partial file for as long as the descriptor lives, so
    ``sweep_orphans`` knows its owner is alive (whatever pid namespace it runs in); whether
    the file is still ours. False when a sweep took it between its creation and this lock
    (the caller makes another). Where the filesystem has no locks the sweeper cannot lock
    either, and leaves every file be."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a sweep holds it: it is about to go
    except OSError:
        return True  # no locks here: no sweep either
    return os.fstat(fd).st_nlink > 0


def create_private(shared: Path) -> tuple[int, Path]:
    """A new partial file beside ``shared`` for this process alone, open and held
    (``hold_private``): its descriptor and path.

    Raises:
        OSError: it could not be created.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in range(3):
        part = private_part(shared)
        fd = os.open(part, flags, 0o664)
        # Lost only when a sweep took the new file before the lock: take another name (a
        # third loss would fail at the rename, with the error of a file gone from under us).
        if hold_private(fd) or attempt == 2:
            break
        os.close(fd)
    return fd, part


def publish_private(
    shared: Path, dest: Path, pieces: Sequence[tuple[int, Sequence[Buffer]]]
) -> None:
    """Write a verified file held in memory (``pieces``: offset and buffers) to a new partial
    file of this process alone beside ``shared``, fsync it and rename it to ``dest``; blocking
    (a writer thread's job). That partial file never outlives a failure.

    Raises:
        OSError: creating, writing (WriteFailed) or committing failed.
    """
    fd, part = create_private(shared)
    published = False
    try:
        for offset, bufs in pieces:
            pwritev_all(fd, bufs, offset)
        commit_file(fd, part, dest)
        published = True
    finally:
        os.close(fd)
        if not published:
            # On a read-only or full filesystem the unlink may fail too: the first error is
            # the one to tell.
            with contextlib.suppress(OSError):
                part.unlink(missing_ok=True)


def sweep_orphans(directory: Path) -> int:
    """Remove the private partial files in ``directory`` that no live process holds (one
    killed mid-download left them; nobody would resume them); how many went.

    A file is taken only once its lock could be had: its owner holds the lock from just after
    creating it to after the rename that publishes it, so a file in use, or just published,
    is never touched; an owner that lost its new file in between sees so (``hold_private``)
    and makes another. Errors skip the file: this is housekeeping, never a reason to fail a
    download.
    """
    removed = 0
    try:
        entries = os.scandir(directory)
    except OSError:
        return 0
    with entries:
        for entry in entries:
            if entry.name.endswith(PART_SUFFIX) and _PRIVATE.search(entry.name):
                removed += _remove_if_orphan(entry.path)
    return removed


def _remove_if_orphan(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
        return 1
    except OSError:  # held by a live process (EWOULDBLOCK), gone already, or not ours
        return 0
    finally:
        os.close(fd)
