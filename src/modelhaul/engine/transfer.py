"""The state of one download: immutable facts, and the small mutable core its task owns.

``TransferFacts`` never changes once the download starts (what was asked for, where the partial
data lives, who listens). ``Transfer`` is what the download's own task and its workers update on
the event loop; worker threads never see it, only a file descriptor, an offset and a lock
(http.receive.FileSink, disk.files.pwritev_locked).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from ..config import RetryPolicy
from ..disk.files import Buffer
from ..disk.hashing import PrefixHasher
from ..disk.journal import Journal, JournalState
from ..disk.writeback import Writeback
from ..errors import ModelhaulError, NetworkError, TransferError
from ..events import PhaseCallback, Progress
from ..policy.ratelimit import TokenBucket
from ..policy.retry import Retry
from ..policy.segments import Demand, SegmentScheduler
from ..policy.slices import RangeSources
from .turns import ReceiveTurns

ProgressCallback = Callable[[Progress], None]
_Stop = TypeVar("_Stop", int, int | None)
NoticeCallback = Callable[[str], None]

# The end of a segment whose body has no known length: the body's end is the file's.
UNKNOWN_END = 2**62
# The longest a batch of received bytes waits before it is written (and a receive blocks).
BATCH_MAX_AGE_S = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferFacts:
    """What one download was asked to do; fixed for its whole life, restarts included."""

    url: str
    part: Path
    journal: Journal
    headers: dict[str, str]
    expected_sha256: str | None
    expected_size: int | None
    limiters: tuple[TokenBucket, ...]
    on_progress: ProgressCallback | None
    on_phase: PhaseCallback | None = None
    # Told each path the file is about to be published at; raises to refuse it (the manager
    # keeps two of its downloads from writing one file).
    on_target: Callable[[Path], None] | None = None
    force: bool = False
    demand: Demand | None = None  # ranges readers of the partial file wait for
    # Where each range comes from when not all from ``url`` (peers, issue 17; policy.slices).
    sources: RangeSources | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass(slots=True, eq=False)
class Transfer:
    """The mutable core of one download, owned by its task (and its workers, on the loop)."""

    facts: TransferFacts
    dest: Path  # a guess from the URL while name_pending
    state: JournalState
    name_pending: bool = False  # dest is a guess until the response names the file
    fd: int = -1
    size: int | None = None
    resolved_url: str | None = None
    single: bool = False  # one connection, no ranges (origin ignores Range or size unknown)
    sched: SegmentScheduler | None = None
    hasher: PrefixHasher | None = None
    # The completed prefix when hashing began: bytes of an earlier run the hash reads first.
    hash_resumed: int = 0
    writeback: Writeback | None = None  # large files: final ranges written back early
    received: int = 0  # bytes received in this process (for speed and the result)
    attempts: int = 0
    resumed_from: int = 0
    history: list[ModelhaulError] = field(default_factory=list)
    alive: int = 0
    target: int = 1
    throttled: bool = False
    journal_dirty: bool = False
    journal_written: bool = False  # a journal file exists (or is being written) for this transfer
    journal_job: Future[None] | None = None  # the save in JOURNAL_POOL, until it is settled
    # Small files arriving in order are written and hashed on the loop: no thread hand-offs.
    inline_hash: Any = None
    inline_pos: int = 0
    # A body smaller than a journaled file, kept here as (offset, buffers) until verified:
    # one thread job then creates, writes, syncs and publishes its file. None: writes go to
    # the partial file (fd).
    memory: list[tuple[int, list[Buffer]]] | None = None
    # What verify() found besides the SHA-256: the xxh3-128 of each chunk, for the Result.
    chunk_bytes: int = 0
    chunk_xxh3: tuple[str, ...] = ()
    journal_saved_at: float = 0.0
    all_exited: asyncio.Event = field(default_factory=asyncio.Event)
    sched_changed: asyncio.Event = field(default_factory=asyncio.Event)  # a segment released
    speed_samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))
    writes: set[Future[int]] = field(default_factory=set)  # pwritev jobs not yet finished
    # Page-cache writes to one file take its inode lock; several threads writing at once spin
    # on it (measured: 0.2 CPU-s/GiB on tmpfs), so writer threads queue here instead.
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    recv_bytes: int = 0  # blocks held by this transfer's SocketBodies
    recv_bodies: int = 0
    # Receives running now, and how many may (engine.hashlag: fewer while the hash trails).
    recv_active: int = 0
    recv_cap: int | None = None
    recv_turns: ReceiveTurns = field(default_factory=ReceiveTurns)  # receives held by the cap
    splice_ok: bool = True  # False once the partial file's filesystem refused a splice
    last_progress_at: float = 0.0

    @property
    def request_url(self) -> str:
        return self.resolved_url or self.facts.url

    def bytes_done(self) -> int:
        return self.state.done.total()

    def claim(self, path: Path) -> None:
        """Announce the path about to hold the file; the listener may refuse it by raising."""
        if self.facts.on_target is not None:
            self.facts.on_target(path)

    def track(self, job: Future[Any]) -> None:
        """Remember a thread job that uses the partial file's descriptor until it ends."""
        self.writes.add(job)
        job.add_done_callback(self.writes.discard)


def route(t: Transfer, headers: dict[str, str], start: int, stop: _Stop) -> tuple[str, str, _Stop]:
    """Where to ask for the bytes from ``start``: (URL, credential URL, stop clipped to that
    source's part); ``headers`` get the source's own. Without sources: the one URL."""
    if t.facts.sources is None or t.single:
        return t.request_url, t.facts.url, stop
    lease = t.facts.sources.lease_nowait(start, UNKNOWN_END if stop is None else stop)
    headers.update(lease.headers)
    return lease.url, lease.credential_url, cast(_Stop, lease.stop)


def settle(
    t: Transfer, start: int, gained: int, error: TransferError | None
) -> TransferError | None:
    """The request for the bytes from ``start`` ended (``error``: it failed); the error to go
    on with: a peer's failure of any kind is one to retry (from the next source)."""
    if t.facts.sources is None:
        return error
    peer = t.facts.sources.settle(start, gained, error)
    if error is None or peer is None:
        return error
    return NetworkError(f"the peer {peer} failed ({error.message}); asking the next source")


def retry_of(policy: RetryPolicy, *, total: int | None = None, free: int = 0) -> Retry:
    """A fresh Retry with the configured backoff (``total`` defaults to ``policy.retries``)."""
    return Retry(
        total=policy.retries if total is None else total,
        initial_s=policy.initial_delay_s,
        factor=policy.factor,
        max_s=policy.max_delay_s,
        free=free,
    )


__all__ = [
    "BATCH_MAX_AGE_S",
    "UNKNOWN_END",
    "NoticeCallback",
    "PhaseCallback",
    "ProgressCallback",
    "Transfer",
    "TransferFacts",
    "retry_of",
    "route",
    "settle",
]
