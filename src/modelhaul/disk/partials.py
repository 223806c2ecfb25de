"""A partial download's lock and leftovers: whether someone holds it, and throwing it away.

Where the partial data and journal live is pure arithmetic (``policy.paths``); the faces ask
these questions through the manager (``DownloadManager.is_downloading`` / ``discard_partial``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from filelock import FileLock
from filelock import Timeout as LockTimeout

from ..policy.paths import part_paths
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


__all__ = ["discard_partial", "is_downloading", "lock_file_for"]
