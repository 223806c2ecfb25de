"""File operations of a download: positional writes, preallocation, early writeback, the durable
commit, and the translation of OS errors into the library's errors (the one place that maps
errno)."""

from __future__ import annotations

import errno
import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import DiskFull, InvalidInput, ModelhaulError, PermissionDenied
from .dirsync import FolderSyncs

_PREALLOC_STEP = 64 * 1024 * 1024
_PREALLOC_CHEAP_S = 0.004  # ext4 reserves 64 MiB in well under a millisecond; tmpfs takes ~15

Buffer = bytes | bytearray | memoryview


class WriteFailed(OSError):
    """A write to the partial file failed (as opposed to a receive) after ``written`` bytes."""

    def __init__(self, cause: OSError, written: int) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.cause = cause
        self.written = written


def pwritev_all(fd: int, bufs: Sequence[Buffer], offset: int) -> int:
    """Write all of ``bufs`` at ``offset``; on failure raise WriteFailed, which says how many
    bytes did reach the file (a full disk takes part of a multi-MiB write)."""
    total = sum(map(len, bufs))
    written = 0
    try:
        written = os.pwritev(fd, bufs, offset)
        if written < total:  # short write: rare, finish it plainly
            view = memoryview(b"".join(bufs))[written:]
            while view:
                n = os.pwrite(fd, view, offset + written)
                written += n
                view = view[n:]
    except OSError as exc:
        raise WriteFailed(exc, written) from exc
    return written


def pwritev_locked(fd: int, lock: threading.Lock, bufs: Sequence[Buffer], offset: int) -> int:
    """pwritev_all under ``lock``: page-cache writes to one file take its inode lock, and
    several threads writing at once spin on it (measured: 0.2 CPU-s/GiB on tmpfs)."""
    with lock:
        return pwritev_all(fd, bufs, offset)


def preallocate(fd: int, size: int) -> None:
    """Reserve the file's blocks where that is cheap (ext4, xfs, btrfs: extents only).

    tmpfs, and glibc's fallback on filesystems without fallocate, zero-fill instead: about
    0.25 CPU-s per GiB that the writes then redo, while the first byte waits. The first piece
    shows which kind of filesystem this is; a slow one gets no more.
    """
    first = min(size, _PREALLOC_STEP)
    started = time.perf_counter()
    os.posix_fallocate(fd, 0, first)
    if size > first and time.perf_counter() - started < _PREALLOC_CHEAP_S:
        os.posix_fallocate(fd, first, size - first)


# <linux/fs.h>: start writing the range's dirty pages, without waiting for any of it.
_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range(2), resolved on first use (ctypes is not imported until then);
    None where the system has none (not Linux, or a libc without it)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def start_writeback(fd: int, offset: int, nbytes: int) -> bool:
    """Ask the kernel to start writing ``[offset, offset + nbytes)`` of ``fd`` to its disk, and
    return without waiting for it (it may block briefly while the device's queue is full).

    Pages stay cached, so a reader of the range (the hasher) still finds them in memory; only
    the final fsync is spared the work. A no-op returning False where the system cannot do
    it (no sync_file_range, or a filesystem that refuses it): the fsync then does it all.
    """
    fn = _sync_file_range()
    if fn is None:
        return False
    return nbytes <= 0 or fn(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE) == 0


def commit_file(fd: int, part: Path, dest: Path) -> None:
    """Make the verified partial file durable, then atomically the target."""
    os.fsync(fd)
    os.replace(part, dest)
    _FOLDER_SYNCS.sync_after_rename(dest.parent)  # shared by files finishing together


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable; a folder that cannot be opened or synced is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_FOLDER_SYNCS = FolderSyncs(fsync_dir)


def os_error(exc: OSError, path: Path, target: Path) -> ModelhaulError:
    """The error for ``exc`` on ``path`` (the target or its partial file or journal beside
    it), told as a failure to write ``target``: the user never asked for the internal files."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(
            f"the disk is full while writing {target}",
            hint=f"Free space in {path.parent} and run again: the partial data was kept.",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"cannot write {target}: {exc.strerror}")
    if exc.errno == errno.ELOOP:
        return PermissionDenied(
            f"refusing to write {target} through a symbolic link planted beside it",
            hint=f"Remove the symbolic link {path} (nothing was written through it), then run "
            "again.",
        )
    return PermissionDenied(f"cannot write {target}: {exc.strerror or exc}")


def make_folder(folder: Path) -> None:
    """Create the target's folder; one that is a file (or under one) is bad input."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.is_file()), folder)
        raise InvalidInput(
            f"{folder} is not a directory"
            + ("" if blocker == folder else f" ({blocker} is a file)"),
            hint="Choose a destination in a directory; a file is in the way.",
        ) from exc
    except OSError as exc:
        raise os_error(exc, folder, folder) from exc


__all__ = [
    "WriteFailed",
    "commit_file",
    "fsync_dir",
    "make_folder",
    "os_error",
    "preallocate",
    "pwritev_all",
    "pwritev_locked",
    "start_writeback",
]
