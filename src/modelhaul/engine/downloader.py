"""One file from an HTTP(S) origin to disk: probe, plan segments, fetch, resume, hash, publish.

The life of a download:

1. Lock the target (a second process waits, then finds the work done).
2. Load the journal beside the partial file, if any, and probe the origin with a ranged GET
   (``If-Range`` carries the validator when resuming), which also delivers the first bytes.
3. Preallocate where that is cheap, after a free-space check; then let connections take
   chunks in file order; idle ones steal half of the largest range in flight that has run a
   while and would still take that long (see policy.segments). Large bodies
   bypass aiohttp: over plain HTTP a worker thread receives and writes whole blocks
   (SocketBody; on Linux spliced through a pipe, so the bytes never enter the process), over
   TLS the loop receives into reusable buffers (BodyPump). In automatic
   mode the connection count doubles while the aggregate speed still grows, and a doubling
   that bought nothing is undone.
4. Every write is recorded in the journal (at least once a second and every few MiB per
   connection); the SHA-256 of the completed prefix is computed in a thread as it grows.
5. Verify, fsync, and ``os.replace`` into place; only then remove the journal.

A response that shows the remote changed (200 to If-Range, another ETag or size) discards the
partial data and restarts cleanly, so two versions are never mixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from filelock import FileLock
from filelock import Timeout as LockTimeout

from ..config import DownloadConfig, MiB
from ..disk.hashing import PrefixHasher, sha256_file_async
from ..disk.journal import Journal, JournalState
from ..disk.records import CompletionRecords
from ..errors import (
    Cancelled,
    DiskFull,
    HTTPStatusError,
    IntegrityError,
    InvalidInput,
    ModelhaulError,
    PermissionDenied,
    RangeNotHonoured,
    RemoteChanged,
    RetriesExhausted,
    TransferError,
    TruncatedBody,
    human_bytes,
)
from ..events import Progress, Result
from ..http.bodies import BodyPump, SocketBody
from ..http.response import Response
from ..http.session import Transport, sleep_s
from ..policy.backoff import retry_wait_s
from ..policy.headers import (
    filename_from_disposition,
    filename_from_url,
    parse_content_range,
    sanitize_filename,
)
from ..policy.ranges import RangeSet
from ..policy.ratelimit import TokenBucket
from ..policy.segments import Segment, SegmentScheduler, next_connection_count
from ..policy.urls import check_url

ProgressCallback = Callable[[Progress], None]
NoticeCallback = Callable[[str], None]
PhaseCallback = Callable[[str, int | None], None]

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_PROBE_BYTES = 8 * MiB
_UNKNOWN_END = 2**62
_TICK_S = 0.1
_PROGRESS_EVERY_S = 0.1
_WRITE_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="modelhaul-write")
# Receive-and-write jobs of plain-HTTP bodies (SocketBody): one per connection at a time, each
# at most a block or _BATCH_MAX_AGE_S long, so the pool bounds threads, not connections.
_RECV_POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix="modelhaul-recv")
_IOV_MAX = 512
_READ_FAST_BYTES = 1 * MiB
_READ_CAPPED_BYTES = 64 * 1024
# A response with at least this much body left is received into reusable buffers (BodyPump).
_BULK_MIN_BYTES = 4 * MiB
_BULK_BLOCKS = 2
# What a blocking receive asks for first, and the least it asks for (SocketBody).
_SOCKET_FIRST_ASK = 1 * MiB
_SOCKET_MIN_ASK = 64 * 1024
# The most one receive through a pipe asks for: no memory of ours, a few pipe-fulls.
_SOCKET_PIPE_ASK = 4 * MiB
_JOURNAL_MIN_BYTES = 2 * MiB
_INLINE_MAX_BYTES = 4 * MiB
_BATCH_MAX_AGE_S = 0.5
# A segment younger than this is not stolen from, nor one that will be done within it: on a
# fast link the victim's server has already sent what the thief would ask for again.
_STEAL_AFTER_S = 0.25
_PREALLOC_STEP = 64 * MiB
_PREALLOC_CHEAP_S = 0.004  # ext4 reserves 64 MiB in well under a millisecond; tmpfs takes ~15
PART_SUFFIX = ".modelhaul.part"
JOURNAL_SUFFIX = ".modelhaul.journal"

_stage_hook: Callable[[str], None] | None = None
"""A seam for crash tests only (tests/crash_runner.py): called with the name of each stage a
download passes ("probed", "segment_done_before_journal", "hashing",
"renamed_before_journal_removal"; models.py adds "linking"), so a test can kill the process
exactly there. None in normal use."""


def _stage(name: str) -> None:
    hook = _stage_hook
    if hook is not None:
        hook(name)


def check_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    if not _HEX64.match(value):
        raise InvalidInput(
            f"bad SHA-256 {value!r}: expected 64 hexadecimal digits",
            hint="Copy the checksum exactly as published (sha256sum prints it first).",
        )
    return value.lower()


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


@dataclass(slots=True, eq=False)
class _Transfer:
    """Mutable state of one download while it runs."""

    url: str
    dest: Path
    part: Path
    journal: Journal
    headers: dict[str, str]
    expected_sha256: str | None
    expected_size: int | None
    limiters: tuple[TokenBucket, ...]
    on_progress: ProgressCallback | None
    state: JournalState
    fd: int = -1
    size: int | None = None
    resolved_url: str | None = None
    single: bool = False  # one connection, no ranges (origin ignores Range or size unknown)
    name_pending: bool = False  # dest is a guess until the response names the file
    on_phase: PhaseCallback | None = None
    # Told each path the file is about to be published at; raises to refuse it (the manager
    # keeps two of its downloads from writing one file).
    on_target: Callable[[Path], None] | None = None
    force: bool = False
    sched: SegmentScheduler | None = None
    hasher: PrefixHasher | None = None
    received: int = 0  # bytes received in this process (for speed and the result)
    attempts: int = 0
    resumed_from: int = 0
    started: float = field(default_factory=time.monotonic)
    history: list[ModelhaulError] = field(default_factory=list)
    alive: int = 0
    target: int = 1
    throttled: bool = False
    journal_dirty: bool = False
    journal_written: bool = False  # a journal file exists for this transfer
    # Small files arriving in order are written and hashed on the loop: no thread hand-offs.
    inline_hash: Any = None
    inline_pos: int = 0
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
    splice_ok: bool = True  # False once the partial file's filesystem refused a splice
    last_progress_at: float = 0.0

    @property
    def request_url(self) -> str:
        return self.resolved_url or self.url

    def bytes_done(self) -> int:
        return self.state.done.total()

    def claim(self, path: Path) -> None:
        """Announce the path about to hold the file; the listener may refuse it by raising."""
        if self.on_target is not None:
            self.on_target(path)


class Downloader:
    """Downloads files; one instance shares connections and one bandwidth bucket.

    Example::

        async with Downloader() as dl:
            result = await dl.download(url, "model.safetensors", sha256=digest)
    """

    def __init__(
        self,
        config: DownloadConfig | None = None,
        *,
        limiter: TokenBucket | None = None,
        state_dir: Path | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.config = config or DownloadConfig()
        cfg = self.config
        self.limiter = limiter or TokenBucket(cfg.rate.rate_bytes_per_s)
        # Locks and completion records live outside the target directory, so a finished
        # download leaves nothing beside the file.
        state = state_dir or Path.home() / ".cache" / "modelhaul"
        self._lock_dir = state / "locks"
        self.records = CompletionRecords(state / "done")
        self._own_transport = transport is None
        self.transport = transport or Transport.for_config(cfg)

    async def __aenter__(self) -> Self:
        await self.transport.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_transport:
            await self.transport.close()

    def set_rate_limit(self, rate_bytes_per_s: float | None) -> None:
        """Change the shared bandwidth cap while downloads run (None: unlimited)."""
        self.limiter.set_rate(rate_bytes_per_s)

    # ------------------------------------------------------------------ public entry point

    async def download(
        self,
        url: str,
        dest: str | os.PathLike[str] | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        sha256: str | None = None,
        expected_size: int | None = None,
        headers: Mapping[str, str] | None = None,
        on_progress: ProgressCallback | None = None,
        on_notice: NoticeCallback | None = None,
        on_phase: PhaseCallback | None = None,
        on_target: Callable[[Path], None] | None = None,
        limiters: Iterable[TokenBucket] = (),
        force: bool = False,
        part_path: Path | None = None,
        journal_path: Path | None = None,
        lock: bool = True,
    ) -> Result:
        """Download ``url`` to ``dest``, resuming and verifying; returns a Result.

        With ``directory`` instead of ``dest`` the file name comes from the response
        (Content-Disposition, else the URL path), sanitised to a plain name in that directory.
        A target this Downloader already completed (same URL, file untouched since) is not
        fetched again unless ``force``; ``on_phase`` hears "probed" and "verifying";
        ``on_target`` hears the final path before anything is published there, and may refuse
        it by raising.

        Raises:
            InvalidInput: bad URL or checksum.
            TransferError: the network failed for good (category network, timeout, HTTP ...).
            IntegrityError: the bytes did not match ``sha256`` or ``expected_size``.
            DiskFull, PermissionDenied: the target could not be written.
        """
        check_url(url)
        sha256 = check_sha256(sha256)
        paths = plan_paths(url, dest, directory)
        dest = paths.dest
        if on_target is not None and not paths.name_pending:
            on_target(dest)  # before the lock: a refused target's partial file is not ours
        part = part_path or paths.part
        journal = Journal(journal_path or paths.journal)
        _make_folder(dest.parent)
        merged = {k: v for k, v in self.config.headers}
        merged.update(headers or {})
        t = _Transfer(
            url=url,
            dest=dest,
            part=part,
            journal=journal,
            headers=merged,
            expected_sha256=sha256,
            expected_size=expected_size,
            limiters=(self.limiter, *limiters),
            on_progress=on_progress,
            state=JournalState(url=url, size=None, sha256=sha256),
            name_pending=paths.name_pending,
            on_phase=on_phase,
            on_target=on_target,
            force=force,
        )
        if not lock:
            return await self._download_locked(t)
        async with self._target_lock(part, on_notice, dest):
            return await self._download_locked(t)

    # ------------------------------------------------------------------ locking

    def _lock_path(self, dest: Path) -> Path:
        return lock_file_for(self._lock_dir, dest)

    def _target_lock(
        self, part: Path, on_notice: NoticeCallback | None, dest: Path
    ) -> _AsyncFileLock:
        # Locked by the partial file (one per transfer), told as the file the user asked for.
        return _AsyncFileLock(self._lock_path(part), on_wait=on_notice, what=str(dest))

    # ------------------------------------------------------------------ the whole download

    async def _download_locked(self, t: _Transfer) -> Result:
        known = None if t.force else self.records.lookup(t.url, t.part)
        if known is not None and (not t.expected_sha256 or known.sha256 == t.expected_sha256):
            t.claim(known.dest)
            return Result(
                url=t.url,
                path=str(known.dest),
                size=known.size,
                sha256=known.sha256,
                elapsed_s=time.monotonic() - t.started,
                attempts=0,
                resumed_from=known.size,
                bytes_transferred=0,
                etag=known.etag,
                already_complete=True,
            )
        if t.expected_sha256 and t.dest.is_file():
            digest = await sha256_file_async(t.dest)
            if digest == t.expected_sha256:
                t.claim(t.dest)
                size = t.dest.stat().st_size
                discard_partial(t.dest, part=t.part, journal=t.journal.path)
                return Result(
                    url=t.url,
                    path=str(t.dest),
                    size=size,
                    sha256=digest,
                    elapsed_s=time.monotonic() - t.started,
                    attempts=0,
                    resumed_from=size,
                    bytes_transferred=0,
                    already_complete=True,
                )
        restarts = 0
        while True:
            if restarts > 1:
                await sleep_s(self.config.retry.delay_s(restarts - 2))
            try:
                return await self._transfer_once(t)
            except (RemoteChanged, RangeNotHonoured) as exc:
                # Both mean the partial data is useless: the file changed, or the origin does
                # not do ranges, so a retry starts over (for the latter, on one connection).
                restarts += 1
                t.history.append(exc)
                if restarts > self.config.retry.max_restarts:
                    if isinstance(exc, RangeNotHonoured):
                        cause = exc.__cause__
                        last = cause if isinstance(cause, ModelhaulError) else exc
                        raise RetriesExhausted(last, list(t.history)) from exc
                    raise RemoteChanged(
                        f"{exc.message}; gave up after {restarts} clean restarts",
                        hint="The file keeps changing on the server; try again later.",
                    ) from exc
                discard_partial(t.dest, part=t.part, journal=t.journal.path)
                t.state = JournalState(url=t.url, size=None, sha256=t.expected_sha256)
                t.resolved_url = None
                t.single = t.single or isinstance(exc, RangeNotHonoured)

    async def _transfer_once(self, t: _Transfer) -> Result:
        self._open_part(t)
        try:
            probe = await self._probe(t)
            _stage("probed")
            try:
                if t.on_phase:
                    t.on_phase("probed", t.size)
                self._prepare_file(t)
                t.hasher = PrefixHasher(t.fd)
                t.hasher.advance(t.state.done.prefix_end())
                t.resumed_from = t.bytes_done()
            except Exception:
                # No worker took the probe's response (a full disk, say): drop its connection,
                # or the server goes on sending into it for as long as the error lives.
                _close_probe(probe)
                raise
            if (
                t.size is not None
                and t.size <= _INLINE_MAX_BYTES
                and t.target == 1
                and not t.state.done
            ):
                t.inline_hash = hashlib.sha256()
            await self._run_workers(t, probe)
            size = t.size if t.size is not None else t.bytes_done()
            t.size = size
            self._save_journal(t)
            self._emit_progress(t, force=True)
            if t.on_phase:
                t.on_phase("verifying", size)
            _stage("hashing")
            if t.inline_hash is not None and t.inline_pos == size:
                digest = t.inline_hash.hexdigest()
            else:
                t.hasher.advance(t.state.done.prefix_end())
                digest = await t.hasher.digest(size)
            if t.expected_sha256 and digest != t.expected_sha256:
                self._drop_journal(t)
                t.part.unlink(missing_ok=True)
                raise IntegrityError(
                    f"SHA-256 mismatch for {t.dest.name}: expected {t.expected_sha256}, got {digest}"
                )
            t.claim(t.dest)
            await self._publish(t)
            self.records.store(t.url, t.part, t.dest, size=size, sha256=digest, etag=t.state.etag)
            return Result(
                url=t.url,
                path=str(t.dest),
                size=size,
                sha256=digest,
                elapsed_s=time.monotonic() - t.started,
                attempts=t.attempts,
                resumed_from=t.resumed_from,
                bytes_transferred=t.received,
                etag=t.state.etag,
            )
        finally:
            if t.hasher is not None:
                await t.hasher.aclose()
                t.hasher = None
            if t.fd >= 0:
                if t.part.exists() and t.size is not None and t.state.done:
                    with contextlib.suppress(ModelhaulError):
                        self._save_journal(t)
                # A cancelled await does not stop a write already running in its thread; it
                # must end before the descriptor number can be reused by another open file.
                wait_futures(list(t.writes))
                os.close(t.fd)
                t.fd = -1
                if not t.state.done or t.size is None or t.single:
                    # Nothing worth resuming (without a size no range can be asked for, and
                    # an origin that ignored Range answers the next run from byte 0 again):
                    # leave no partial file behind.
                    t.part.unlink(missing_ok=True)
                    self._drop_journal(t)
                if t.received:
                    # The last word on what this attempt received and whether it can resume,
                    # for those who account across attempts (the manager, a pause, Ctrl-C).
                    self._emit_progress(t, force=True)

    def _open_part(self, t: _Transfer) -> None:
        loaded = t.journal.load()
        exists = t.part.is_file() and not t.part.is_symlink()
        if (
            loaded
            and exists
            # Bytes of a body of unknown length (chunked, content-encoded) cannot be resumed;
            # treated as held, they would collide with the next probe's range.
            and loaded.size is not None
            and (loaded.url == t.url or (t.expected_sha256 and loaded.sha256 == t.expected_sha256))
        ):
            t.state = loaded
            t.state.url = t.url
            t.state.sha256 = t.expected_sha256
            t.journal_written = True
        else:
            if loaded is not None or exists:
                t.journal.remove()
            t.state = JournalState(url=t.url, size=None, sha256=t.expected_sha256)
        try:
            # O_NOFOLLOW: a symlink planted at the partial path must not redirect our writes.
            # 0o664 with the user's umask: never world-writable.
            t.fd = os.open(t.part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o664)
        except OSError as exc:
            raise _os_error(exc, t.part, t.dest) from exc
        if not t.state.done:
            os.ftruncate(t.fd, 0)

    # ------------------------------------------------------------------ probing

    async def _probe(self, t: _Transfer) -> tuple[Segment, Response] | Response | None:
        """First request: learn size and validator, and keep the response for its bytes."""
        retry = self.config.retry
        fails = 0
        while True:
            t.attempts += 1
            try:
                return await self._probe_once(t)
            except TransferError as exc:
                if isinstance(exc, RemoteChanged | RangeNotHonoured) or not exc.retryable:
                    raise
                t.history.append(exc)
                fails += 1
                if fails > retry.retries:
                    raise RetriesExhausted(exc, list(t.history)) from exc
                await sleep_s(
                    retry_wait_s(
                        fails - 1,
                        getattr(exc, "retry_after_s", None),
                        max_s=retry.max_delay_s,
                        initial_s=retry.initial_delay_s,
                        factor=retry.factor,
                    )
                )

    async def _probe_once(self, t: _Transfer) -> tuple[Segment, Response] | Response | None:
        st = t.state
        headers = dict(t.headers)
        resuming = st.size is not None and bool(st.done)
        if t.single:
            start, stop = 0, None
        elif resuming:
            assert st.size is not None
            holes = st.done.missing(st.size)
            if not holes:
                t.size = st.size
                return None
            start = holes[0][0]
            stop = min(holes[0][1], start + _PROBE_BYTES)
        else:
            start, stop = 0, _PROBE_BYTES if self._may_split() else None
        if not t.single:
            headers["Range"] = f"bytes={start}-" + ("" if stop is None else str(stop - 1))
            validator = st.validator() if resuming else None
            if validator:
                headers["If-Range"] = validator
        try:
            resp = await self.transport.request(
                "GET", t.request_url, headers=headers, credential_url=t.url
            )
        except HTTPStatusError as exc:
            if exc.status == 416 and not resuming and not t.single:
                # An empty file cannot satisfy bytes=0-...; ask again without Range.
                t.single = True
                return await self._probe_once(t)
            if exc.status == 416 and resuming:
                raise RemoteChanged("the remote file is shorter than the partial data") from exc
            raise
        if resp.status not in (200, 206):
            # A redirect without Location, 202 Accepted, 204 No Content: whatever the body is,
            # it is not the file, and publishing it would report success.
            resp.close()
            raise HTTPStatusError(
                resp.status,
                resp.url,
                message=f"HTTP {resp.status} from {urlsplit(resp.url).netloc} is not the file",
            )
        t.resolved_url = resp.url
        if t.name_pending:
            named = filename_from_disposition(resp.headers.get("Content-Disposition"))
            fallback = filename_from_url(t.url) or filename_from_url(resp.url)
            t.dest = t.dest.with_name(sanitize_filename(named or fallback))
            t.name_pending = False
            try:
                t.claim(t.dest)
            except ModelhaulError:
                resp.close()
                raise
        etag = resp.headers.get("ETag")
        last_modified = resp.headers.get("Last-Modified")
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
        if resp.status == 206 and not encoded:
            cr = parse_content_range(resp.headers.get("Content-Range"))
            if cr is None or cr.total is None or cr.start != start:
                resp.close()
                raise RangeNotHonoured("the server sent a Content-Range that does not match")
            if resuming and (cr.total != st.size or _etag_changed(st.etag, etag)):
                resp.close()
                raise RemoteChanged("the remote file changed since the partial download")
            t.size = cr.total
            st.size, st.etag, st.last_modified = cr.total, etag, last_modified
            self._check_expected_size(t, resp)
            self._plan(t)
            assert t.sched is not None
            seg = t.sched.claim_nowait(cr.start, cr.end)
            return seg, resp
        if resp.status == 206:  # ranged and content-encoded: meaningless, start plainly
            resp.close()
            raise RangeNotHonoured("the server encoded a ranged response")
        if resuming and "If-Range" in headers:
            resp.close()
            raise RemoteChanged("the remote file changed since the partial download")
        # 200: the whole body from byte 0, in one connection.
        t.single = True
        length = resp.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() and not encoded else None
        t.size = size
        st.size, st.etag, st.last_modified = size, etag, last_modified
        st.done = RangeSet()
        os.ftruncate(t.fd, 0)
        self._check_expected_size(t, resp)
        return resp

    def _may_split(self) -> bool:
        n = self.config.segments.connections
        return n is None or n > 1

    def _check_expected_size(self, t: _Transfer, resp: Response) -> None:
        if t.expected_size is not None and t.size is not None and t.size != t.expected_size:
            resp.close()
            raise IntegrityError(
                f"{t.dest.name}: the server has {t.size} bytes, expected {t.expected_size}",
                hint="The file on the server differs from the one published; check the source.",
            )

    def _plan(self, t: _Transfer) -> None:
        assert t.size is not None
        seg_cfg = self.config.segments
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
        )

    # ------------------------------------------------------------------ disk

    def _prepare_file(self, t: _Transfer) -> None:
        if t.size is None:
            return
        try:
            allocated = os.fstat(t.fd).st_blocks * 512
        except OSError:
            allocated = 0
        needed = max(0, t.size - allocated)
        if self.config.check_disk_space and needed:
            free = shutil.disk_usage(t.part.parent).free
            if free < needed:
                raise DiskFull(
                    f"not enough disk space for {t.dest.name}: needs {human_bytes(needed)} more, "
                    f"{human_bytes(free)} free in {t.part.parent}",
                    hint=f"Free at least {human_bytes(needed - free)} in {t.part.parent}, or "
                    "download elsewhere with -d DIR.",
                )
        try:
            if os.fstat(t.fd).st_size > t.size:
                os.ftruncate(t.fd, t.size)
            if t.size:
                _preallocate(t.fd, t.size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _os_error(exc, t.part, t.dest) from exc
            # Filesystems without fallocate still work; the space check above stands.
        self._save_journal(t)

    def _save_journal(self, t: _Transfer) -> None:
        if t.size is not None and t.size < _JOURNAL_MIN_BYTES:
            # Refetching a small file costs less than journaling it; it restarts instead.
            t.journal_dirty = False
            return
        try:
            t.journal.save(t.state)
        except OSError as exc:
            raise _os_error(exc, t.journal.path, t.dest) from exc
        t.journal_written = True
        t.journal_dirty = False
        t.journal_saved_at = time.monotonic()

    def _drop_journal(self, t: _Transfer) -> None:
        if t.journal_written:
            t.journal.remove()
            t.journal_written = False

    async def _publish(self, t: _Transfer) -> None:
        # fsync, rename and the directory fsync block for milliseconds: off the loop, so many
        # small files publish in parallel and no other transfer stalls meanwhile.
        job = _WRITE_POOL.submit(_commit_file, t.fd, t.part, t.dest)
        t.writes.add(job)
        job.add_done_callback(t.writes.discard)
        try:
            await asyncio.wrap_future(job)
        except OSError as exc:
            raise _os_error(exc, t.dest, t.dest) from exc
        os.close(t.fd)
        t.fd = -1
        _stage("renamed_before_journal_removal")
        self._drop_journal(t)

    # ------------------------------------------------------------------ workers

    async def _run_workers(
        self, t: _Transfer, probe: tuple[Segment, Response] | Response | None
    ) -> None:
        if probe is None:
            return
        t.alive = 0
        t.all_exited = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                if isinstance(probe, Response):
                    seg = Segment(0, t.size if t.size is not None else _UNKNOWN_END, 0)
                    t.target = 1
                    self._spawn(tg, t, (seg, probe))
                else:
                    self._spawn(tg, t, probe)
                    for _ in range(t.target - 1):
                        self._spawn(tg, t, None)
                ticker = tg.create_task(self._tick(t, tg))
                await t.all_exited.wait()
                ticker.cancel()
        except ExceptionGroup as eg:
            primary = _primary_error(eg)
            # Hide the group, but keep the error's own cause (`from None` would erase it).
            raise primary from primary.__cause__
        if t.size is not None and t.state.done.total() < t.size:
            last = t.history[-1] if t.history else TruncatedBody("the download stopped early")
            raise RetriesExhausted(last, list(t.history))

    def _spawn(
        self, tg: asyncio.TaskGroup, t: _Transfer, first: tuple[Segment, Response] | None
    ) -> None:
        t.alive += 1
        tg.create_task(self._worker(t, first))

    async def _worker(self, t: _Transfer, first: tuple[Segment, Response] | None) -> None:
        retry = self.config.retry
        fails = 0
        seg, resp = first if first else (None, None)
        try:
            while True:
                if seg is None:
                    if t.single or t.sched is None or t.alive > t.target:
                        return
                    seg = t.sched.next_nowait()
                    if seg is None:
                        wait = t.sched.steal_wait_s()
                        if wait is None:
                            return
                        # Stay for a steal that may become worth it; a release wakes us early.
                        changed = t.sched_changed
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(changed.wait(), max(wait, 0.01))
                        continue
                before = seg.pos
                try:
                    if resp is None:
                        t.attempts += 1
                        resp = await self._open_segment(t, seg)
                    await self._stream(t, seg, resp)
                    _stage("segment_done_before_journal")
                    resp.release()
                    resp = None
                    fails = 0
                    self._finish_segment(t, seg)
                    seg = None
                except TransferError as exc:
                    if resp is not None:
                        resp.close()
                        resp = None
                    if isinstance(exc, RemoteChanged) or not exc.retryable:
                        raise
                    t.history.append(exc)
                    if t.single:
                        # No ranges: whatever arrived is useless for a retry from byte 0.
                        raise RangeNotHonoured(exc.message) from exc
                    gained = seg.pos > before
                    self._finish_segment(t, seg)
                    seg = None
                    fails = 0 if gained else fails + 1
                    if (
                        isinstance(exc, HTTPStatusError)
                        and exc.status in (429, 503)
                        and self.config.segments.connections is None
                    ):
                        # Automatic mode backs off; an explicit -x is the user's to keep.
                        t.throttled = True
                        t.target = max(1, min(t.target, t.alive) // 2)
                    if fails > retry.retries:
                        return
                    await sleep_s(
                        retry_wait_s(
                            max(0, fails - 1),
                            getattr(exc, "retry_after_s", None),
                            max_s=retry.max_delay_s,
                            initial_s=retry.initial_delay_s,
                            factor=retry.factor,
                        )
                    )
        finally:
            if resp is not None:
                resp.close()
            if seg is not None:
                self._finish_segment(t, seg)
            t.alive -= 1
            if t.alive <= 0:
                t.all_exited.set()

    def _finish_segment(self, t: _Transfer, seg: Segment) -> None:
        if t.sched is not None:
            t.sched.release(seg)
            changed, t.sched_changed = t.sched_changed, asyncio.Event()
            changed.set()

    async def _open_segment(self, t: _Transfer, seg: Segment) -> Response:
        headers = dict(t.headers)
        headers["Range"] = f"bytes={seg.pos}-{seg.end - 1}"
        validator = t.state.validator()
        if validator:
            headers["If-Range"] = validator
        try:
            resp = await self.transport.request(
                "GET", t.request_url, headers=headers, credential_url=t.url
            )
        except HTTPStatusError as exc:
            if t.resolved_url and t.resolved_url != t.url and exc.status in (401, 403, 404, 410):
                # A presigned redirect target may have expired: resolve again from the start.
                t.resolved_url = None
                raise TruncatedBody(f"the redirect target answered {exc.status}") from exc
            if exc.status == 416:
                raise RemoteChanged("the remote file is shorter than before") from exc
            raise
        if resp.status != 206:
            resp.close()
            raise RemoteChanged("the server answered a ranged request with the whole file")
        cr = parse_content_range(resp.headers.get("Content-Range"))
        if cr is None or cr.start != seg.pos or cr.total != t.size:
            resp.close()
            raise RemoteChanged("the server's Content-Range does not match the file")
        if _etag_changed(t.state.etag, resp.headers.get("ETag")):
            resp.close()
            raise RemoteChanged("the remote file changed (another ETag)")
        # The server may send less than asked: the stream stops at the response's end and the
        # rest of the segment goes back to the scheduler when the segment is released.
        resp.end = cr.end
        return resp

    async def _stream(self, t: _Transfer, seg: Segment, resp: Response) -> None:
        """Receive into ``seg`` until its end; bytes are written in batches with pwritev.

        This is the hot path: per chunk only a length check, the limiter and a list append.
        """
        read = resp.read_chunk
        limiters = t.limiters
        stop = resp.end
        # Decided per segment, so a cap set while running applies from the next segment on.
        capped = any(lim.rate_bytes_per_s is not None for lim in limiters)
        batch = self.config.segments.write_batch_bytes
        if not capped and min(seg.end, stop) - seg.pos >= _BULK_MIN_BYTES:
            if t.inline_hash is None:
                block = self.config.segments.recv_block_for(
                    max(t.target, t.alive), t.recv_bytes, t.recv_bodies
                )
                by_thread = resp.take_socket(
                    block_bytes=block, poll_s=_BATCH_MAX_AGE_S, use_pipe=t.splice_ok
                )
                if by_thread is not None:
                    held = by_thread[1].buffer_bytes  # none when spliced through a pipe
                    t.recv_bytes += held
                    t.recv_bodies += bool(held)
                    try:
                        await self._stream_socket(t, seg, resp, *by_thread)
                    finally:
                        t.recv_bytes -= held
                        t.recv_bodies -= bool(held)
                    return
            taken = resp.take_body(block_bytes=batch, blocks=_BULK_BLOCKS)
            if taken is not None:
                await self._stream_bulk(t, seg, resp, *taken)
                return
        resp.set_read_size(_READ_CAPPED_BYTES if capped else _READ_FAST_BYTES)
        bufs: list[bytes] = []
        pending = 0
        write_at = seg.pos
        since_journal = 0
        clock = time.monotonic
        # A slow or capped connection would take seconds to fill a batch; flush by age too,
        # so progress moves steadily and little is lost to a crash.
        flush_at = clock() + _BATCH_MAX_AGE_S
        try:
            while seg.pos < seg.end and seg.pos < stop:
                chunk = await read()
                if not chunk:
                    if seg.end >= _UNKNOWN_END:  # unknown length: the body's end is the file's
                        t.size = seg.pos
                        seg.end = seg.pos
                        break
                    raise TruncatedBody(
                        f"the server closed the connection {human_bytes(seg.end - seg.pos)} early"
                    )
                n = len(chunk)
                over = seg.pos + n - min(seg.end, stop)
                if over > 0:  # another connection stole the rest, or the body runs long
                    n -= over
                    chunk = chunk[:n]
                # Keep the chunk before waiting on the limiter: a pause while waiting must not
                # throw away bytes that already arrived.
                bufs.append(chunk)
                pending += n
                seg.pos += n
                t.received += n
                for lim in limiters:
                    await lim.acquire(n)
                if pending >= batch or len(bufs) >= _IOV_MAX or clock() >= flush_at:
                    flush_at = clock() + _BATCH_MAX_AGE_S
                    await self._write(t, bufs, write_at)
                    write_at += pending
                    since_journal = self._after_write(t, seg, since_journal + pending)
                    bufs, pending = [], 0
        finally:
            if bufs:
                # Keep what arrived even when failing or cancelled: a resume needs less.
                await asyncio.shield(self._write(t, bufs, write_at))

    async def _stream_bulk(
        self, t: _Transfer, seg: Segment, resp: Response, head: bytes, pump: BodyPump
    ) -> None:
        """Like _stream, for a body taken over by a BodyPump: one write per filled block.

        A block goes back to the pump only after its write completed; a block whose write was
        interrupted stays with the write job, which may still be running in its thread.
        """
        limiters = t.limiters
        since_journal = 0
        # Received and counted in seg.pos, not yet written; it starts at held_at.
        held: memoryview | bytes | None = None
        held_at = seg.pos
        block: bytearray | None = None
        try:
            if head:
                held = head[: max(0, min(seg.end, resp.end) - seg.pos)]
                seg.pos += len(held)
                t.received += len(held)
            while True:
                if held is not None:
                    n = len(held)
                    for lim in limiters:
                        await lim.acquire(n)
                    await self._write(t, [held], held_at)
                    held = None
                    if block is not None:
                        pump.recycle(block)
                        block = None
                    since_journal = self._after_write(t, seg, since_journal + n)
                # Re-read every time: another connection may have stolen the tail.
                stop = min(seg.end, resp.end)
                if seg.pos >= stop:
                    return
                got = await pump.next_block(_BATCH_MAX_AGE_S, resp.url)
                if got is None:
                    raise TruncatedBody(
                        f"the server closed the connection {human_bytes(stop - seg.pos)} early"
                    )
                block, n = got
                n = min(n, stop - seg.pos)
                held, held_at = memoryview(block)[:n], seg.pos
                seg.pos += n
                t.received += n
        finally:
            # Keep what arrived even when failing or cancelled: a resume needs less.
            rest: list[memoryview | bytes] = []
            if held is not None:
                rest.append(held)
            else:
                held_at = seg.pos
            for buf, n in pump.drain():
                take = min(n, min(seg.end, resp.end) - seg.pos)
                if take > 0:
                    rest.append(memoryview(buf)[:take])
                    seg.pos += take
                    t.received += take
            if rest:
                await asyncio.shield(self._write(t, rest, held_at))

    async def _stream_socket(
        self, t: _Transfer, seg: Segment, resp: Response, head: bytes, body: SocketBody
    ) -> None:
        """Like _stream, for a plain-HTTP body read by blocking receives: each job in a worker
        thread receives one block and writes it; the loop only does the bookkeeping.

        A receive asks for about what the connection delivers in half a poll interval (up to
        the whole block): a fast one gets whole blocks, and a slow one never claims more than
        it can bring soon, so idle connections can still steal the rest of its segment.
        """
        since_journal = 0
        if head:
            head = head[: max(0, min(seg.end, resp.end) - seg.pos)]
            at = seg.pos
            seg.pos += len(head)
            t.received += len(head)
            await self._write(t, [head], at)
            since_journal = self._after_write(t, seg, len(head))
        loop = asyncio.get_running_loop()
        job: Future[int] | None = None
        state = t.state
        block = body.block_bytes if body.pipe_fd is None else _SOCKET_PIPE_ASK
        ask = min(block, _SOCKET_FIRST_ASK)

        def landed(at: int, n: int) -> None:
            self._record_write(t, state, at, n)
            seg.pos = max(seg.pos, at + n)
            t.received += n

        try:
            while True:
                # Re-read every time: another connection may have stolen the tail.
                stop = min(seg.end, resp.end)
                if seg.pos >= stop:
                    return
                at = seg.pos
                want = min(ask, stop - at)
                seg.claimed = at + want
                job = _RECV_POOL.submit(_recv_write, body, t, seg, at, want)
                t.writes.add(job)
                job.add_done_callback(t.writes.discard)
                asked_at = loop.time()
                n = await asyncio.wrap_future(job)
                job = None
                if n == want and loop.time() - asked_at < _BATCH_MAX_AGE_S / 2:
                    ask = min(block, 2 * ask)
                elif 0 <= n < want:  # the poll interval ended the receive
                    ask = max(_SOCKET_MIN_ASK, n - n % _SOCKET_MIN_ASK)
                if n == 0:
                    continue  # SocketBody raises StallTimeout once nothing came for too long
                if n < 0:
                    raise TruncatedBody(
                        f"the server closed the connection {human_bytes(stop - seg.pos)} early"
                    )
                landed(at, n)
                for lim in t.limiters:  # a cap set while running
                    await lim.acquire(n)
                since_journal = self._after_write(t, seg, since_journal + n)
        except _WriteFailed as exc:
            if exc.written:
                # What reached the disk before it filled up is kept for the resume.
                landed(at, exc.written)
            job = None
            raise _os_error(exc.cause, t.part, t.dest) from exc.cause
        finally:
            if job is not None:
                # Cancelled mid-receive: wake the thread and keep what it wrote.
                body.abort()
                with contextlib.suppress(BaseException):
                    n = await asyncio.shield(asyncio.wrap_future(job))
                    if n > 0:
                        landed(at, n)

    def _after_write(self, t: _Transfer, seg: Segment, since_journal: int) -> int:
        """After each batch: save the journal every few MiB, refuse a body longer than promised.

        Returns the bytes written since the journal was last saved."""
        if since_journal >= self.config.segments.journal_every_bytes:
            self._save_journal(t)
            since_journal = 0
        if t.expected_size is not None and seg.pos > t.expected_size:
            raise IntegrityError(f"{t.dest.name}: the server sent more than expected")
        return since_journal

    async def _write(self, t: _Transfer, bufs: list[bytes], offset: int) -> None:
        # The state of the attempt this write belongs to, taken before anything can be
        # awaited. A write shielded in a worker's finally outlives the worker when a failing
        # task group cancels it mid-wait, and may finish after a clean restart has begun: its
        # bytes went to the old partial file, so the restart's fresh state must not hear of them.
        state = t.state
        if t.inline_hash is not None:
            if offset == t.inline_pos:
                try:
                    n = _pwritev_all(t.fd, bufs, offset)
                except _WriteFailed as exc:
                    raise _os_error(exc.cause, t.part, t.dest) from exc.cause
                for b in bufs:
                    t.inline_hash.update(b)
                t.inline_pos += n
                t.state.done.add(offset, offset + n)
                t.journal_dirty = True
                return
            # Out of order (a retry, a second connection): the file hasher takes over.
            t.inline_hash = None
        job = _WRITE_POOL.submit(_locked_pwritev, t, bufs, offset)
        t.writes.add(job)
        job.add_done_callback(t.writes.discard)
        try:
            n = await asyncio.wrap_future(job)
        except _WriteFailed as exc:
            if exc.written:
                self._record_write(t, state, offset, exc.written)
            raise _os_error(exc.cause, t.part, t.dest) from exc.cause
        self._record_write(t, state, offset, n)

    @staticmethod
    def _record_write(t: _Transfer, state: JournalState, offset: int, n: int) -> None:
        """``n`` bytes at ``offset`` reached the partial file of the attempt ``state`` is of."""
        state.done.add(offset, offset + n)
        if t.state is not state:
            return
        t.journal_dirty = True
        if t.hasher is not None:
            t.hasher.advance(state.done.prefix_end())

    # ------------------------------------------------------------------ ticker

    async def _tick(self, t: _Transfer, tg: asyncio.TaskGroup) -> None:
        """Every tick: progress, journal flush, and (automatic mode) the connection count."""
        seg_cfg = self.config.segments
        auto = seg_cfg.connections is None and not t.single and t.target > 1
        level_start = time.monotonic()
        window_start: tuple[float, int] | None = None
        # The speed and connection count of the level before the last doubling.
        prev: tuple[float, int] | None = None
        while True:
            await asyncio.sleep(_TICK_S)
            now = time.monotonic()
            self._emit_progress(t)
            if t.journal_dirty and now - t.journal_saved_at >= seg_cfg.journal_every_s:
                self._save_journal(t)
            if not auto or t.throttled or t.sched is None:
                continue
            if window_start is None:
                if now - level_start >= 0.1:
                    window_start = (now, t.received)
                continue
            if now - window_start[0] < 0.25:
                continue
            speed = (t.received - window_start[1]) / (now - window_start[0])
            grow, final = next_connection_count(speed, t.target, prev, seg_cfg.max_connections)
            if final or t.sched.remaining_bytes < grow * seg_cfg.min_steal_bytes * 2:
                # Fewer connections take effect as workers finish their segments.
                t.target = min(t.target, grow)
                auto = False
                continue
            prev = (speed, t.target)
            # Smaller chunks keep the hashed prefix close behind many connections.
            assert t.size is not None
            t.sched.set_chunk_bytes(seg_cfg.chunk_for(t.size, grow))
            for _ in range(grow - t.target):
                self._spawn(tg, t, None)
            t.target = grow
            level_start, window_start = now, None

    def _emit_progress(self, t: _Transfer, *, force: bool = False) -> None:
        now = time.monotonic()
        t.speed_samples.append((now, t.received))
        if t.on_progress is None or (not force and now - t.last_progress_at < _PROGRESS_EVERY_S):
            return
        t.last_progress_at = now
        t.on_progress(progress_of(t, now))


def progress_of(t: _Transfer, now: float) -> Progress:
    # Speed over the last ~3 s of samples: smooth enough for an ETA, quick to react.
    samples = t.speed_samples
    speed = 0.0
    if len(samples) >= 2:
        t0, b0 = samples[0]
        for ts, b in samples:
            if now - ts <= 3.0:
                t0, b0 = ts, b
                break
        if now > t0:
            speed = (t.received - b0) / (now - t0)
    done = t.bytes_done()
    eta = (t.size - done) / speed if t.size is not None and speed > 0 else None
    return Progress(
        url=t.url,
        path=str(t.dest),
        bytes_done=done,
        total=t.size,
        speed_bytes_per_s=speed,
        eta_s=eta,
        connections=max(t.alive, 0),
        attempts=t.attempts,
        resumed_from=t.resumed_from,
        elapsed_s=now - t.started,
        bytes_received=t.received,
        resumable=not t.single,
    )


def _primary_error(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a torn-down task group: ours first, the first one seen."""
    flat: list[BaseException] = []

    def walk(g: BaseExceptionGroup[BaseException]) -> None:
        for e in g.exceptions:
            if isinstance(e, BaseExceptionGroup):
                walk(e)
            else:
                flat.append(e)

    walk(eg)
    for e in flat:
        if isinstance(e, RemoteChanged):
            return e
    for e in flat:
        if isinstance(e, ModelhaulError):
            return e
    return flat[0] if flat else eg


def _close_probe(probe: tuple[Segment, Response] | Response | None) -> None:
    resp = probe[1] if isinstance(probe, tuple) else probe
    if resp is not None:
        resp.close()


def _etag_changed(known: str | None, seen: str | None) -> bool:
    return bool(known and seen and known != seen)


class _WriteFailed(OSError):
    """A write to the partial file failed (as opposed to a receive) after ``written`` bytes."""

    def __init__(self, cause: OSError, written: int) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.cause = cause
        self.written = written


def _recv_write(body: SocketBody, t: _Transfer, seg: Segment, offset: int, want: int) -> int:
    """In a worker thread: receive up to ``want`` bytes of ``body`` and write them at
    ``offset``. Returns SocketBody.recv_block's count (0: nothing yet, -1: end of stream)."""
    if body.pipe_fd is not None:
        return _splice_write(body, t, seg, offset, want)
    n = body.recv_block(want)
    if n <= 0:
        return n
    # A steal may have moved the segment's end while this thread was receiving.
    n = max(0, min(n, seg.end - offset))
    if n:
        _locked_pwritev(t, [body.view[:n]], offset)
    return n


def _splice_write(body: SocketBody, t: _Transfer, seg: Segment, offset: int, want: int) -> int:
    """_recv_write through the body's pipe, a pipe-full at a time, for at most one poll
    interval (as a receive into a buffer)."""
    deadline = time.monotonic() + _BATCH_MAX_AGE_S
    done = 0
    while done < want:
        n = body.splice_block(want - done, deadline)
        if n <= 0:
            return done or n
        at = offset + done
        keep = max(0, min(n, seg.end - at))  # as in _recv_write: a steal may have come
        if keep:
            try:
                with t.write_lock:
                    _pipe_to_file(body, t, keep, at)
            except _WriteFailed as exc:
                raise _WriteFailed(exc.cause, done + exc.written) from exc.cause
        done += keep
        if keep < n:
            body.discard(n - keep)
            break
        if time.monotonic() >= deadline:
            break
    return done


# What splice into a file raises where the filesystem cannot take it.
_NO_SPLICE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF})


def _pipe_to_file(body: SocketBody, t: _Transfer, n: int, offset: int) -> None:
    """Move ``n`` bytes from the body's pipe into the partial file at ``offset``, or raise
    _WriteFailed with how many did reach it."""
    fd = body.pipe_fd
    assert fd is not None
    written = 0
    try:
        while written < n and not body.copy_out:
            try:
                m = os.splice(fd, t.fd, n - written, offset_dst=offset + written)
            except OSError as exc:
                if exc.errno not in _NO_SPLICE or written:
                    raise
                # This filesystem refuses splice; later bodies of the file do without a pipe.
                body.copy_out = True
                t.splice_ok = False
                break
            if m == 0:
                raise OSError(errno.EIO, "the receive pipe ran dry")
            written += m
        while written < n:
            data = os.read(fd, n - written)
            if not data:
                raise OSError(errno.EIO, "the receive pipe ran dry")
            written += _pwritev_all(t.fd, [data], offset + written)
    except _WriteFailed as exc:
        raise _WriteFailed(exc.cause, written + exc.written) from exc.cause
    except OSError as exc:
        raise _WriteFailed(exc, written) from exc


def _locked_pwritev(t: _Transfer, bufs: list[bytes], offset: int) -> int:
    with t.write_lock:
        return _pwritev_all(t.fd, bufs, offset)


def _pwritev_all(fd: int, bufs: list[bytes], offset: int) -> int:
    """Write all of ``bufs`` at ``offset``; on failure raise _WriteFailed, which says how many
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
        raise _WriteFailed(exc, written) from exc
    return written


def _preallocate(fd: int, size: int) -> None:
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


def _commit_file(fd: int, part: Path, dest: Path) -> None:
    """Make the verified partial file durable, then atomically the target."""
    os.fsync(fd)
    os.replace(part, dest)
    _fsync_dir(dest.parent)


def _fsync_dir(path: Path) -> None:
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


def _os_error(exc: OSError, path: Path, target: Path) -> ModelhaulError:
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


def _make_folder(folder: Path) -> None:
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
        raise _os_error(exc, folder, folder) from exc


class _AsyncFileLock:
    """A cross-process file lock acquired without blocking the event loop."""

    def __init__(self, path: Path, *, on_wait: NoticeCallback | None, what: str) -> None:
        # Not thread-local: it is acquired in a worker thread and released on the loop thread.
        self._lock = FileLock(str(path), thread_local=False)
        self._on_wait = on_wait
        self._what = what

    async def __aenter__(self) -> None:
        try:
            # filelock makes the lock folder when it is missing.
            self._lock.acquire(timeout=0)
            return
        except LockTimeout:
            pass
        if self._on_wait:
            self._on_wait(f"another modelhaul process is downloading {self._what}; waiting for it")
        while True:
            try:
                await asyncio.to_thread(self._lock.acquire, timeout=0.5)
                return
            except LockTimeout:
                continue

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()


__all__ = ["Cancelled", "Downloader", "check_sha256", "discard_partial", "part_paths"]
