"""Folder fsyncs shared between files that finish together, never one that began too early."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from modelhaul.disk.dirsync import FolderSyncs


def _wait_until(predicate: object, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_waiters_share_the_next_fsync_and_never_the_running_one(tmp_path: Path) -> None:
    started: list[int] = []
    finished: list[int] = []
    gate = threading.Event()

    def sync(folder: Path) -> None:
        assert folder == tmp_path
        started.append(len(started))
        if len(started) == 1:
            assert gate.wait(10)
        finished.append(started[-1])

    syncs = FolderSyncs(sync)
    seen: dict[str, int] = {}

    def rename_then_sync(name: str) -> None:
        began = len(started)  # syncs begun before this "rename"
        syncs.sync_after_rename(tmp_path)
        # Returns only after a sync that began after the call had finished.
        seen[name] = max(finished) - began

    first = threading.Thread(target=rename_then_sync, args=("first",))
    first.start()
    _wait_until(lambda: len(started) == 1)
    others = [threading.Thread(target=rename_then_sync, args=(f"o{i}",)) for i in range(5)]
    for t in others:
        t.start()
    _wait_until(lambda: syncs.waiting == 5)  # all five renamed while the first fsync ran
    gate.set()
    for t in [first, *others]:
        t.join(10)
        assert not t.is_alive()
    # The five waited for a second fsync (the running one may have begun before their
    # renames) and shared it.
    assert len(started) == 2
    assert all(v >= 0 for v in seen.values()) and len(seen) == 6


def test_one_caller_syncs_at_once(tmp_path: Path) -> None:
    calls: list[Path] = []
    syncs = FolderSyncs(calls.append)
    syncs.sync_after_rename(tmp_path)
    syncs.sync_after_rename(tmp_path / "b")
    assert calls == [tmp_path, tmp_path / "b"]
    assert syncs.waiting == 0
