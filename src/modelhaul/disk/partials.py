"""Where a download's partial data, journal and lock live, and whether someone holds them.

Pure path decisions plus the two small file-system questions every face asks about a partial
download (is a process on it? throw it away), so that faces need not import the engine.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from filelock import Timeout as LockTimeout

from ..errors import InvalidInput
from ..policy.headers import filename_from_url, sanitize_filename
from .journal import Journal

PART_SUFFIX = ".modelhaul.part"
JOURNAL_SUFFIX = ".modelhaul.journal"


def part_paths(dest: Path) -> tuple[Path, Path]:
    """Where the partial file and its journal live for a target path."""
    return dest.with_name(dest.name + PART_SUFFIX), dest.with_name(dest.name + JOURNAL_SUFFIX)


@dataclass(frozen=True, slots=True)
class TargetPaths:
    dest: Path  # a guess from the URL while name_pending
    part: Path
    journal: Path
    name_pending: bool


def plan_paths(
    url: str,
    dest: str | os.PathLike[str] | None,
    directory: str | os.PathLike[str] | None = None,
) -> TargetPaths:
    """Where a download's file, partial data and journal go, decided before any request."""
    if dest is not None:
        target = Path(dest).absolute()
        part, journal = part_paths(target)
        return TargetPaths(target, part, journal, False)
    if directory is None:
        raise InvalidInput("a download needs a destination file or directory")
    folder = Path(directory).absolute()
    # The name comes from the response; the partial file is named after the URL so that a
    # re-run finds it again before asking the server anything.
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return TargetPaths(
        folder / sanitize_filename(filename_from_url(url)),
        folder / f".modelhaul-{key}{PART_SUFFIX}",
        folder / f".modelhaul-{key}{JOURNAL_SUFFIX}",
        True,
    )


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
    "JOURNAL_SUFFIX",
    "PART_SUFFIX",
    "TargetPaths",
    "discard_partial",
    "is_downloading",
    "lock_file_for",
    "part_paths",
    "plan_paths",
]
