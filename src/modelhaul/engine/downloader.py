"""One file from an HTTP(S) origin to disk: the face of the engine, its lock and its restarts.

The life of a download:

1. Lock the target (a second process waits, then finds the work done).
2. Load the journal beside the partial file, if any, and probe the origin with a ranged GET
   (``If-Range`` carries the validator when resuming), which also delivers the first bytes.
   A target with nothing on disk (no partial file, journal or lock file) is probed before
   locking: a small file whose whole body is in that response then takes no lock and no
   journal, and goes to a partial file of this process alone (many small files cost one
   request each and no lock); any other file takes the lock and goes on with the response.
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

The steps live in their own modules: probe (2), plan (3: journal, preallocation, segments),
workers and streams (3-4), progress, publish (5); transfer holds the state they share.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path

from ..config import DownloadConfig, default_state_dir
from ..disk.files import make_folder
from ..disk.hashing import sha256_file_async
from ..disk.journal import Journal, JournalState
from ..disk.lock import AsyncFileLock
from ..disk.partials import (
    discard_partial,
    hold_private,
    lock_file_for,
    private_part,
    sweep_orphans,
)
from ..disk.records import CompletionRecords
from ..errors import Cancelled, ModelhaulError, RangeNotHonoured, RemoteChanged, RetriesExhausted
from ..events import Result
from ..http.session import Transport, sleep_s
from ..policy.lifecycle import AsyncResource
from ..policy.paths import plan_paths
from ..policy.ratelimit import TokenBucket
from ..policy.retry import Retry
from ..policy.segments import Demand
from ..policy.slices import RangeSources
from ..policy.urls import check_url
from ..policy.validate import check_sha256
from .plan import journaled, open_fresh_part, open_part
from .probe import Probe, arrives_whole, close_probe, probe
from .publish import (
    end_attempt,
    publish,
    publish_from_memory,
    result_of,
    start_writing,
    verify,
)
from .stages import stage
from .transfer import (
    NoticeCallback,
    PhaseCallback,
    ProgressCallback,
    Transfer,
    TransferFacts,
    retry_of,
)
from .workers import Workers


class Downloader(AsyncResource):
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
        # download leaves nothing beside the file. No state_dir: the CLI's own default, so
        # library and CLI runs lock each other out of the same file.
        state = state_dir or default_state_dir()
        self.lock_dir = state / "locks"
        self.records = CompletionRecords(state / "done")
        self._swept: set[str] = set()  # folders cleared of dead processes' private files
        self._own_transport = transport is None
        self.transport = transport or Transport.for_config(cfg)
        self._workers = Workers(cfg, self.transport)

    async def open(self) -> None:
        await self.transport.open()

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
        demand: Demand | None = None,
        sources: RangeSources | None = None,
        known_absent: bool = False,
    ) -> Result:
        """Download ``url`` to ``dest``, resuming and verifying; returns a Result.

        With ``directory`` instead of ``dest`` the file name comes from the response
        (Content-Disposition, else the URL path), sanitised to a plain name in that directory.
        A target this Downloader already completed (same URL, file untouched since) is not
        fetched again unless ``force``; ``on_phase`` hears "probed" and "verifying";
        ``on_target`` hears the final path before anything is published there, and may refuse
        it by raising. ``demand``: ranges readers of the partial file wait for, fetched
        before plan order. ``known_absent``: a listing of a named target's folder, moments ago,
        showed no file, partial file or journal: they are not looked for again (a system call
        each, on the loop). The lock file still is, and another process's lock waited for.

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
        known_absent = known_absent and not paths.name_pending  # its name is still a guess
        if on_target is not None and not paths.name_pending:
            on_target(dest)  # before the lock: a refused target's partial file is not ours
        part = part_path or paths.part
        journal = Journal(journal_path or paths.journal)
        self._prepare_folders(dest, part, known_absent=known_absent)
        merged = dict(self.config.headers)
        merged.update(headers or {})
        # The download's arguments by name, into the one value that holds them (alike in shape only).
        facts = TransferFacts(
            url=url,
            part=part,
            journal=journal,
            headers=merged,
            expected_sha256=sha256,
            expected_size=expected_size,
            limiters=(self.limiter, *limiters),
            on_progress=on_progress,
            on_phase=on_phase,
            on_target=on_target,
            force=force,
            demand=demand,
            sources=sources,
        )
        t = Transfer(
            facts=facts,
            dest=dest,
            state=JournalState(url=url, size=None, sha256=sha256),
            name_pending=paths.name_pending,
        )
        if not lock:
            return await self._download_locked(t)
        if self._may_go_unlocked(t, files_absent=known_absent):
            return await self._download_unlocked(t, on_notice, known_absent=known_absent)
        async with self._target_lock(part, on_notice, dest):
            return await self._download_locked(t)

    def _prepare_folders(self, dest: Path, part: Path, *, known_absent: bool) -> None:
        """Make the target's folder if missing (one stat per file of a list, not a mkdir; none
        for a ``known_absent`` target in a folder an earlier file made or found) and clear the
        partial file's folder of what killed processes left (once a folder)."""
        # Folders by their text: a Path's parent is a new Path to build and hash per file.
        at = os.path.dirname(dest)
        if not (known_absent and at in self._swept) and not os.path.isdir(at):
            make_folder(dest.parent)
        folder = os.path.dirname(part)
        if folder not in self._swept:
            self._swept.add(folder)
            sweep_orphans(part.parent)

    # ------------------------------------------------------------------ locking

    def _lock_path(self, dest: Path) -> Path:
        return lock_file_for(self.lock_dir, dest)

    def _target_lock(
        self, part: Path, on_notice: NoticeCallback | None, dest: Path
    ) -> AsyncFileLock:
        # Locked by the partial file (one per transfer), told as the file the user asked for.
        def on_wait() -> None:
            if on_notice is not None:
                on_notice(f"another modelhaul process is downloading {dest}; waiting for it")

        return AsyncFileLock(self._lock_path(part), on_wait=on_wait)

    def _may_go_unlocked(self, t: Transfer, *, files_absent: bool) -> bool:
        """Whether nothing of this target is on disk: no partial file or journal to resume
        (known when ``files_absent``), and no lock file, so no other process ever locked it
        (filelock keeps the file)."""
        facts = t.facts
        lock_path = self._lock_path(facts.part)
        if files_absent:
            return not _lexists(lock_path)
        return not any(map(_lexists, (facts.part, facts.journal.path, lock_path)))

    async def _download_unlocked(
        self, t: Transfer, on_notice: NoticeCallback | None, *, known_absent: bool
    ) -> Result:
        """Probe before locking. A small file whose whole body is in that response needs no
        lock, journal or shared partial file: it goes to a partial file of this process alone,
        and is published by rename as always (two processes at once both publish a verified
        file). Any other file takes the lock and goes on with the probe's response."""
        if not known_absent and (done := await self._already_complete(t)) is not None:
            return done
        restarts = self._restart_budget()
        first: Probe = None
        try:
            first = await probe(t, self.config, self.transport)
            if arrives_whole(t, first):
                return await self._fetch_private(t, first)
        except (RemoteChanged, RangeNotHonoured) as exc:
            # The ordinary path restarts cleanly (on one connection if ranges failed).
            restarts = self._count_restart(t, restarts, exc)
            first = None
            await sleep_s(restarts.wait_s())
        lock = self._target_lock(t.facts.part, on_notice, t.dest)
        if first is not None and lock.acquire_nowait():
            try:
                if t.facts.journal.path.exists():  # another process began it meanwhile
                    close_probe(first)
                    first = None
                    _forget_probe(t)
                return await self._download_locked(t, first, restarts)
            finally:
                lock.release()
        if first is not None:
            close_probe(first)  # another process holds the file: its work may be done meanwhile
            _forget_probe(t)
        async with lock:
            return await self._download_locked(t, None, restarts)

    async def _fetch_private(self, t: Transfer, first: Probe) -> Result:
        """The rest of a small file whose probe brought all of it, into a partial file of this
        process alone; that file never outlives the attempt."""
        shared = t.facts.part
        if self._fits_in_memory(t):
            # No file until the body is verified: then one thread job writes and publishes it.
            t.memory = []
            try:
                return await self._finish(t, first, shared)
            finally:
                t.memory = None
                await end_attempt(t)
        try:
            for attempt in range(3):
                t.facts = replace(t.facts, part=private_part(shared))
                open_fresh_part(t, exclusive=True)
                # Held until the descriptor closes, after the rename. Lost only when a sweep
                # took the new file before the lock: take another name (a third loss would
                # fail at the rename, with the error of a file gone from under us).
                if hold_private(t.fd) or attempt == 2:
                    break
                os.close(t.fd)
                t.fd = -1
        except ModelhaulError:
            # Nothing was created; unlinking on a read-only filesystem would raise EROFS and
            # hide this error.
            close_probe(first)
            t.facts = replace(t.facts, part=shared)
            raise
        result = None
        try:
            result = await self._finish(t, first, shared)
            return result
        finally:
            try:
                await end_attempt(t)
            finally:
                # Even when cancelled while ending: a name of this process alone is never
                # resumed, so nobody else would ever remove it.
                if result is None:  # a published file was renamed away; this one goes
                    t.facts.part.unlink(missing_ok=True)
                    t.facts = replace(t.facts, part=shared)  # for the ordinary path's restart

    def _fits_in_memory(self, t: Transfer) -> bool:
        """Whether the body is smaller than a journaled file (2 MiB: it restarts, not resumes,
        anyway) and nobody reads the partial file while it arrives.

        Held in memory and published by one thread job, 1-2 MiB files cost the loop 2.1-2.2
        ms each, 4.1-4.2 ms of process CPU (case C's 28 of 1.46 MB); hashed in order on the
        loop, as 2-4 MiB files on one connection still are, 3.7 and 3.9; taken over by threads
        into a partial file (tried), 1.8-2.0 and 4.5.
        """
        facts = t.facts
        return (
            t.size is not None
            and not journaled(t.size)
            and facts.demand is None
            and facts.sources is None
        )

    # ------------------------------------------------------------------ the whole download

    async def _download_locked(
        self, t: Transfer, first: Probe | None = None, restarts: Retry | None = None
    ) -> Result:
        """The download under its lock; ``first``: a probe already made (the partial file is
        then opened afresh for it); ``restarts``: the clean restarts left."""
        if first is None:
            done = await self._already_complete(t)
            if done is not None:
                return done
        facts = t.facts
        restarts = restarts or self._restart_budget()
        while True:
            try:
                return await self._transfer_once(t, first)
            except (RemoteChanged, RangeNotHonoured) as exc:
                first = None
                restarts = self._count_restart(t, restarts, exc)
                discard_partial(t.dest, part=facts.part, journal=facts.journal.path)
            await sleep_s(restarts.wait_s())

    def _restart_budget(self) -> Retry:
        # The first clean restart is at once: nothing was wrong with the link.
        return retry_of(self.config.retry, total=self.config.retry.max_restarts, free=1)

    @staticmethod
    def _count_restart(
        t: Transfer, restarts: Retry, exc: RemoteChanged | RangeNotHonoured
    ) -> Retry:
        """Spend a clean restart and reset the transfer for it; raise once none is left.

        Both errors mean the partial data is useless: the file changed, or the origin does not
        do ranges, so a retry starts over (for the latter, on one connection)."""
        restarts = restarts.increment(exc)
        t.history.append(exc)
        if restarts.is_exhausted():
            if isinstance(exc, RangeNotHonoured):
                cause = exc.__cause__
                last = cause if isinstance(cause, ModelhaulError) else exc
                raise RetriesExhausted(last, list(t.history)) from exc
            raise RemoteChanged(
                f"{exc.message}; gave up after {restarts.fails} clean restarts",
                hint="The file keeps changing on the server; try again later.",
            ) from exc
        _forget_probe(t)
        t.single = t.single or isinstance(exc, RangeNotHonoured)
        t.inline_hash, t.inline_pos, t.memory = None, 0, None
        return restarts

    async def _already_complete(self, t: Transfer) -> Result | None:
        """The Result without a request when the target is known done, else None."""
        facts = t.facts
        # A record stands only for a file still in place: for a named target with nothing
        # there (every file of a fresh list), no record is read.
        present = os.access(t.dest, os.F_OK) and t.dest.is_file()  # no exception when absent
        use_record = not facts.force and (present or t.name_pending)
        known = self.records.lookup(facts.url, facts.part) if use_record else None
        if known is not None and (
            not facts.expected_sha256 or known.sha256 == facts.expected_sha256
        ):
            t.claim(known.dest)
            return Result(
                url=facts.url,
                path=str(known.dest),
                size=known.size,
                sha256=known.sha256,
                elapsed_s=time.monotonic() - facts.started,
                attempts=0,
                resumed_from=known.size,
                bytes_transferred=0,
                etag=known.etag,
                already_complete=True,
            )
        if facts.expected_sha256 and present:
            digest = await sha256_file_async(t.dest)
            if digest == facts.expected_sha256:
                t.claim(t.dest)
                size = t.dest.stat().st_size
                discard_partial(t.dest, part=facts.part, journal=facts.journal.path)
                return Result(
                    url=facts.url,
                    path=str(t.dest),
                    size=size,
                    sha256=digest,
                    elapsed_s=time.monotonic() - facts.started,
                    attempts=0,
                    resumed_from=size,
                    bytes_transferred=0,
                    already_complete=True,
                )
        return None

    async def _transfer_once(self, t: Transfer, first: Probe | None) -> Result:
        """One attempt: probe (unless ``first`` is its answer), fetch what is missing, verify,
        publish."""
        try:
            if first is None:
                open_part(t)
                first = await probe(t, self.config, self.transport)
            else:
                try:
                    open_fresh_part(t)
                except ModelhaulError:
                    close_probe(first)
                    raise
            return await self._finish(t, first, t.facts.part)
        finally:
            await end_attempt(t)

    async def _finish(self, t: Transfer, first: Probe, record_part: Path) -> Result:
        """After the probe: fetch what is missing, verify, publish, record as done for the
        partial file a re-run would look for (``record_part``)."""
        stage("probed")
        start_writing(t, first, self.config)
        await self._workers.run(t, first)
        if t.memory is not None:
            # No journal to drop after the rename: the record is written by the same job. A
            # body checked against a given SHA-256 gets none: a re-run checks that SHA-256 of
            # the file in place (at most 2 MiB to hash) instead, and a record costs
            # a file creation, 0.05-0.4 ms of CPU on ext4 while other files are being synced.
            record = None
            if not t.facts.expected_sha256:
                record = partial(self._record, t.facts.url, record_part, t.dest, t.state.etag)
            size, digest = await publish_from_memory(t, record_part, record)
            return result_of(t, size, digest)
        size, digest = await verify(t)
        t.claim(t.dest)
        await publish(t)
        self._record(t.facts.url, record_part, t.dest, t.state.etag, size, digest)
        return result_of(t, size, digest)

    def _record(
        self, url: str, part: Path, dest: Path, etag: str | None, size: int, digest: str
    ) -> None:
        self.records.store(url, part, dest, size=size, sha256=digest, etag=etag)


def _lexists(path: Path) -> bool:
    """os.path.lexists, answering "no" without raising (lexists does, through
    FileNotFoundError) where the system lets os.access leave a link unfollowed."""
    if _ACCESS_NOFOLLOW:
        return os.access(path, os.F_OK, follow_symlinks=False)
    return os.path.lexists(path)


_ACCESS_NOFOLLOW = os.access in os.supports_follow_symlinks


def _forget_probe(t: Transfer) -> None:
    """Back to before the probe: nothing known of the remote file."""
    t.state = JournalState(url=t.facts.url, size=None, sha256=t.facts.expected_sha256)
    t.resolved_url = None


__all__ = ["Cancelled", "Downloader"]
