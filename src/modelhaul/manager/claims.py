"""One file, one result; one blob, many names.

Which download will write (or wrote) each path, whether a new request may share a download,
and the second names a shared download's file is given.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from ..disk.partials import is_downloading, lock_file_for
from ..errors import DiskFull, ModelhaulError, PermissionDenied, TargetConflict
from ..events import State
from ..policy.paths import TargetPaths
from .tasks import Task

Key = TypeVar("Key")


class Claims:
    """The paths the manager's downloads hold, and what each download may be shared by."""

    def __init__(self) -> None:
        self._holders: dict[str, Task] = {}
        self._by_key: dict[tuple[str, ...], Task] = {}

    def share(self, keys: Iterable[tuple[str, ...]], task: Task) -> None:
        """Let later requests with any of ``keys`` share ``task``."""
        for key in keys:
            self._by_key[key] = task

    def sharable(self, keys: Iterable[tuple[str, ...]]) -> Task | None:
        """The download a request with ``keys`` may share, by the first key that has one."""
        for key in keys:
            existing = self._by_key.get(key)
            if existing is None or not reusable(existing):
                continue
            return existing
        return None

    def claim(self, task: Task, path: Path) -> None:
        """Hold ``path`` for ``task``, or refuse it: another download of this manager will
        write it, or wrote it and its file is still there. Names that come from the response
        are known only once it starts, so this is checked then, before anything is published.
        """
        key = os.path.normpath(path)
        holder = self._holders.get(key)
        # The same URL again is the same file (add() shares one download for it anyway).
        if holder is not None and holder.url != task.url and _holds(holder, key):
            raise TargetConflict.between(key, holder.url, task.url)
        self._holders[key] = task


def reusable(task: Task) -> bool:
    """Whether a new add() may share ``task``: running or queued, or completed with its file
    still in place (a deleted result must be fetched again, not reported done)."""
    if task.state in (State.FAILED, State.CANCELLED):
        return False
    if task.state is State.COMPLETED:
        if task.result is None:
            return False
        try:
            return Path(task.result.path).stat().st_size == task.result.size
        except OSError:
            return False
    return True


def _holds(task: Task, path: str) -> bool:
    """Whether ``task`` still stands for what ``path`` holds: unfinished, or completed there
    with its file in place (a failed or cancelled download published nothing)."""
    if task.state is State.COMPLETED:
        done = task.result
        return done is not None and os.path.normpath(done.path) == path and reusable(task)
    return task.state not in (State.FAILED, State.CANCELLED)


def materialize_aliases(task: Task) -> None:
    """Give a completed download's file the other names its sharers asked for."""
    if task.result is None or not task.aliases:
        return
    source = Path(task.result.path)
    for alias in task.aliases:
        # A file already there is replaced unless it is this one: another file left at the
        # path would be reported as this download's result.
        if alias == source or _same_file(alias, source):
            continue
        try:
            _link_or_copy(source, alias)
        except OSError as exc:
            raise _alias_error(exc, alias) from exc
    task.aliases.clear()


def _link_or_copy(source: Path, alias: Path) -> None:
    alias.parent.mkdir(parents=True, exist_ok=True)
    # A name no one can guess: copyfile() follows a symlink planted at a fixed temporary name,
    # which carried the file's bytes over whatever it pointed at.
    tmp = alias.with_name(f".{alias.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, alias)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _alias_error(exc: OSError, alias: Path) -> ModelhaulError:
    """The error for a second name that could not be written, told by that name (never by
    the temporary file it was made through)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(
            f"the disk is full while writing {alias}", hint=f"Free space in {alias.parent}."
        )
    return PermissionDenied(f"cannot write {alias}: {exc.strerror or exc}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def locked_among(lock_dir: Path, targets: Iterable[tuple[Key, TargetPaths]]) -> list[Key]:
    """The keys of the ``targets`` some process holds the download lock of.

    The lock folder is listed once: with no lock file in it (a fresh state directory, or lists
    of small files, which take no lock) ``targets`` is not even iterated.
    """
    try:
        held = set(os.listdir(lock_dir))
    except OSError:
        return []
    if not held:
        return []
    return [
        key
        for key, paths in targets
        if lock_file_for(lock_dir, paths.part).name in held and is_downloading(lock_dir, paths.part)
    ]
