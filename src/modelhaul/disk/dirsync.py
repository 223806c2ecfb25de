"""Group commit of folder fsyncs: renames into one folder made durable together.

A rename is durable once its folder is fsynced after it. Many small files finishing at once
would each pay a folder fsync (a journal commit of its own); here a rename waits for the first
fsync of its folder that starts after it, and the threads that wait together share it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)
class _Folder:
    started: int = 0  # fsyncs begun
    done: int = 0  # the last fsync finished
    running: bool = False


class FolderSyncs:
    """Shares folder fsyncs between the threads that need one; called from worker threads.

    Args:
        sync: makes a folder's entries durable (an fsync of the folder).
    """

    def __init__(self, sync: Callable[[Path], None]) -> None:
        self._sync = sync
        self._cond = threading.Condition()
        self._folders: dict[Path, _Folder] = {}
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Threads waiting for an fsync another thread runs."""
        with self._cond:
            return self._waiting

    def sync_after_rename(self, folder: Path) -> None:
        """Return once an fsync of ``folder`` that started after this call has finished."""
        with self._cond:
            state = self._folders.setdefault(folder, _Folder())
            # One already running may have begun before the rename: the next one counts.
            need = state.started + 1
            while state.done < need:
                if state.running:
                    self._waiting += 1
                    try:
                        self._cond.wait()
                    finally:
                        self._waiting -= 1
                    continue
                state.running = True
                state.started += 1
                number = state.started
                self._cond.release()
                try:
                    self._sync(folder)
                finally:
                    self._cond.acquire()
                    state.running = False
                    state.done = number
                    self._cond.notify_all()
            if state.done == state.started and self._folders.get(folder) is state:
                del self._folders[folder]  # idle: forget it (targets spread over many folders)


__all__ = ["FolderSyncs"]
