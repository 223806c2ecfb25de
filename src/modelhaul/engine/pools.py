"""The engine's thread pools, shared by every download of the process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from .cpus import RECEIVER_CPUS

# Writes to partial files and the fsync-and-rename of finished ones.
WRITE_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="modelhaul-write")
# Journal saves and removals, in order. Renaming a journal into place waits for the file
# system's journal commit, which on ext4 (data=ordered) waits for the data of every file being
# written: 0.1-0.2 s each on a busy disk, measured, which the event loop must not wait out.
JOURNAL_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelhaul-journal")
# Receive-and-write jobs of plain-HTTP bodies (SocketBody): one per connection at a time, each
# at most a block or BATCH_MAX_AGE_S long, so the pool bounds threads, not connections.
# Each thread registers, so the receives can leave a trailing hash one CPU (engine.cpus).
RECV_POOL = ThreadPoolExecutor(
    max_workers=64, thread_name_prefix="modelhaul-recv", initializer=RECEIVER_CPUS.register
)

__all__ = ["JOURNAL_POOL", "RECV_POOL", "WRITE_POOL"]
