"""Fetching a model's files: pull what is missing, and refetch only what verification found bad.

Pulls go through the DownloadManager (several files at once, big ones segmented) into the
Hugging Face cache layout kept by ``store.repo.RepoStore``. A blob is linked into the snapshot
only after it was verified, so a snapshot never points at a missing or wrong blob. What a
revision should hold is ``store.listing``'s; how a file is checked, ``store.verify``'s.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..engine.stages import stage
from ..errors import (
    Category,
    DiskFull,
    IntegrityError,
    ModelhaulError,
    RetriesExhausted,
    human_bytes,
)
from ..events import FileCallback, FileEvent, FilePhase, Result
from ..fleet.liars import LieCheck, drop_liars, hold_for_check, tell_dropped
from ..fleet.routing import DEFAULT_SLICE_BYTES, check_slice_bytes, parse_peers, router_for
from ..manager.downloads import DownloadManager
from ..manager.handle import DownloadHandle
from ..policy.paths import part_paths
from ..policy.slices import PeerDrop, SliceRouter
from ..sources.model import ModelFile, ModelSpec
from .chunks import EMPTY_GIT_OID, EMPTY_SHA256
from .listing import (
    load_listing,
    local_files,
    owed_refs,
    record_pull_done,
    record_pull_start,
    resolve_local_commit,
    write_owed_refs,
)
from .localdir import place_local_dir
from .repo import BlobLock, RepoStore, unique_tmp, writing
from .verify import FileProblem, VerifyReport, blob_good, check_file, prepare_chunk_repair

# Failures another URL of the same file cannot cure: stop at once instead of trying a mirror.
_FINAL_CATEGORIES = (
    Category.INVALID_INPUT,
    Category.DISK_FULL,
    Category.PERMISSION,
    Category.CANCELLED,
)


@dataclass(frozen=True, slots=True)
class PullResult:
    repo_id: str
    commit: str
    snapshot: Path
    fetched: tuple[str, ...]
    present: tuple[str, ...]
    bytes_fetched: int
    offline: bool = False
    local_dir: Path | None = None
    bytes_from_peers: int = 0
    bytes_from_upstream: int = 0
    dropped_peers: tuple[PeerDrop, ...] = ()  # left out of the pull, and why

    def to_dict(self) -> dict[str, object]:
        return {
            "event": "result",
            "status": "completed",
            "model": self.repo_id,
            "commit": self.commit,
            "path": str(self.snapshot),
            "files": len(self.fetched) + len(self.present),
            "fetched": list(self.fetched),
            "bytes_fetched": self.bytes_fetched,
            "bytes_from_peers": self.bytes_from_peers,
            "bytes_from_upstream": self.bytes_from_upstream,
            "dropped_peers": [d.to_dict() for d in self.dropped_peers],
            "offline": self.offline,
            "local_dir": str(self.local_dir) if self.local_dir else None,
            "error": None,
        }


class ModelPuller:
    """Pulls ModelSpecs into a store through a DownloadManager.

    ``peers``: other nodes' ``modelhaul serve`` base URLs; each slice (``slice_bytes``) of a
    large Hub file then comes from the peer that owns it, which fetched it upstream once
    (``fleet.routing``, issue 17).
    """

    def __init__(  # its arguments kept as fields: alike SocketBody's in shape only
        self,
        root: Path,
        manager: DownloadManager,
        *,
        symlinks: bool = True,
        check_disk_space: bool = True,
        peers: Sequence[str] = (),
        slice_bytes: int = DEFAULT_SLICE_BYTES,
    ) -> None:
        self.root = root
        self.manager = manager
        self.symlinks = symlinks
        self.check_disk_space = check_disk_space
        self.peers = parse_peers(peers)
        self.slice_bytes = check_slice_bytes(slice_bytes)

    def repo(self, spec: ModelSpec) -> RepoStore:
        return RepoStore(self.root, spec.repo_id, spec.repo_type)

    # ------------------------------------------------------------------ pull

    async def pull(
        self,
        spec: ModelSpec,
        *,
        local_dir: Path | None = None,
        priority: int = 0,
        on_file: FileCallback | None = None,
        free_hint: Callable[[int], str] | None = None,
    ) -> PullResult:
        """Fetch the files of ``spec`` that are missing or fail verification, then link.

        Each blob is fetched once, however many paths share it, under the per-blob lock that
        huggingface_hub also takes, so two processes never fetch the same blob at once.
        ``on_file`` hears a ``FileEvent`` per file: queued (with its download id), mirror and
        waiting (with the reason), done.
        """
        rs = self.repo(spec)
        rs.prepare()
        # Before any byte: a pull that fails leaves a list showing what is missing, and 'ls',
        # 'verify' and the service judge the snapshot against it instead of against itself.
        with writing(rs.folder):
            await asyncio.to_thread(record_pull_start, rs, spec)
        present, missing = await self._sort_files(rs, spec.files)
        if missing and self.check_disk_space:
            self._check_space(rs, missing, free_hint)
        by_blob: dict[str, list[ModelFile]] = {}
        for f in missing:
            by_blob.setdefault(f.blob_id, []).append(f)
        dropped: dict[str, PeerDrop] = {}  # a peer dropped for one file is for all
        results = await asyncio.gather(
            *(
                self._fetch_blob(rs, files, priority, on_file, spec, dropped)
                for files in by_blob.values()
            ),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        fetched: list[ModelFile] = []
        received = from_peers = 0
        for files, r in zip(by_blob.values(), results, strict=True):
            if isinstance(r, BaseException):
                continue
            if r is None:  # another process fetched it meanwhile
                present.extend(files)
            else:
                fetched.extend(files)
                received += r[0]
                from_peers += r[1]
        for f in (*present, *fetched):
            stage("linking")
            with writing(rs.snapshot_file(spec.commit, f.path)):
                rs.link(spec.commit, f.path, f.blob_id, symlinks=self.symlinks)
        if errors:
            for e in errors:
                if not isinstance(e, Exception):
                    raise e  # cancellation and the like propagate untouched
            first = errors[0]
            raise first if isinstance(first, ModelhaulError) else ModelhaulError(str(first))
        with writing(rs.folder):
            await asyncio.to_thread(record_pull_done, rs, spec)
        if local_dir is not None:
            place_local_dir(rs, spec, local_dir)
        order = {f.path: i for i, f in enumerate(spec.files)}
        return PullResult(
            repo_id=spec.repo_id,
            commit=spec.commit,
            snapshot=rs.snapshot_dir(spec.commit),
            fetched=tuple(sorted((f.path for f in fetched), key=order.__getitem__)),
            present=tuple(sorted((f.path for f in present), key=order.__getitem__)),
            bytes_fetched=received,
            local_dir=local_dir,
            bytes_from_peers=from_peers,
            bytes_from_upstream=received - from_peers,
            dropped_peers=tuple(dropped.values()),
        )

    async def _sort_files(
        self, rs: RepoStore, files: Sequence[ModelFile]
    ) -> tuple[list[ModelFile], list[ModelFile]]:
        present: list[ModelFile] = []
        missing: list[ModelFile] = []
        checked: dict[str, bool] = {}
        for f in files:
            if f.blob_id not in checked:
                checked[f.blob_id] = await asyncio.to_thread(blob_good, rs, f)
            (present if checked[f.blob_id] else missing).append(f)
        return present, missing

    def _check_space(
        self, rs: RepoStore, missing: Sequence[ModelFile], free_hint: Callable[[int], str] | None
    ) -> None:
        unique = {f.blob_id: f for f in missing}
        needed = 0
        for f in unique.values():
            part, _ = part_paths(rs.blob_path(f.blob_id))
            try:
                have = part.stat().st_blocks * 512
            except OSError:
                have = 0
            needed += max(0, f.size - have)
        free = shutil.disk_usage(rs.blobs).free
        if needed > free:
            short = needed - free
            hint = f"Free at least {human_bytes(short)} in {self.root}."
            if free_hint is not None:
                hint = f"{hint} {free_hint(short)}"
            raise DiskFull(
                f"{rs.repo_id} needs {human_bytes(needed)} more, only {human_bytes(free)} free "
                f"in {self.root}",
                need_bytes=needed,
                free_bytes=free,
                path=str(self.root),
                hint=hint,
            )

    async def _fetch_blob(
        self,
        rs: RepoStore,
        files: Sequence[ModelFile],
        priority: int,
        on_file: FileCallback | None,
        spec: ModelSpec,
        dropped: dict[str, PeerDrop],
    ) -> tuple[int, int] | None:
        """Fetch the blob of ``files`` (all share it); the bytes received for it and how many
        of them from peers, or None if another process fetched it meanwhile."""
        f = files[0]
        received: tuple[int, int] | None = (0, 0)
        router = router_for(spec, f, self.peers, self.slice_bytes, dropped)  # None: upstream
        if f.size == 0:
            await asyncio.to_thread(_write_empty_blob, rs, f)
        else:
            async with self._blob_lock(rs, f, on_file) as lock:
                if await _done_meanwhile(rs, f, lock):
                    received = None
                else:
                    received = await self._download(rs, f, priority, on_file, router)
        if on_file:
            peers, upstream = (received[1], received[0] - received[1]) if received else (0, 0)
            drops = router.drops_here() if router else ()
            for g in files:
                done = FileEvent(path=g.path, phase=FilePhase.DONE, dropped_peers=drops)
                on_file(replace(done, bytes_from_peers=peers, bytes_from_upstream=upstream))
        return received

    @staticmethod
    def _blob_lock(rs: RepoStore, f: ModelFile, on_file: FileCallback | None) -> BlobLock:
        def on_wait() -> None:
            if on_file:
                on_file(
                    FileEvent(
                        path=f.path,
                        phase=FilePhase.WAITING,
                        reason="another process is fetching it",
                    )
                )

        return BlobLock(rs.lock_path(f.blob_id), on_wait=on_wait)

    async def _download(
        self,
        rs: RepoStore,
        f: ModelFile,
        priority: int,
        on_file: FileCallback | None,
        router: SliceRouter | None = None,
    ) -> tuple[int, int]:
        """Download one blob from its first URL that works, then verify and record it;
        returns the bytes received over the network for it (a resume's missing part only),
        and how many of them came from peers (``router``: tried first; a file failing its SHA-256
        gets what peers sent again from upstream, and liars are dropped: fleet.liars)."""
        blob = rs.blob_path(f.blob_id)
        errors: list[ModelhaulError] = []
        received = 0
        result: Result | None = None
        check: LieCheck | None = None
        tries = [(0, router)] if router else []
        tries += [(i, None) for i in range(len(f.urls))]
        for n, (i, sources) in enumerate(tries):
            url = f.urls[i]
            # Credentials belong to the primary URL's host (and its peers); mirrors get none.
            headers = dict(f.headers) if i == 0 else {}
            handle: DownloadHandle | None = None
            try:
                handle = self.manager.add(
                    url,
                    blob,
                    sha256=f.sha256,
                    expected_size=f.size if f.size >= 0 else None,
                    headers=headers,
                    priority=priority + (check is not None),  # a caught file first
                    sources=sources,
                )
                if on_file:
                    on_file(FileEvent(path=f.path, phase=FilePhase.QUEUED, download_id=handle.id))
                result = await handle.wait()
                received += result.bytes_transferred
                break
            except ModelhaulError as exc:
                if exc.category in _FINAL_CATEGORIES:
                    raise
                if handle is not None:  # what a failed URL delivered was still received
                    received += self.manager.info(handle.id).bytes_received
                errors.append(exc)
                if (held := await hold_for_check(blob, f, sources, exc)) is not None:
                    check = held  # upstream resends what peers sent; if that fails, all of it
                    tries.append((0, None))
                if on_file and n + 1 < len(tries):
                    on_file(FileEvent(path=f.path, phase=FilePhase.MIRROR, reason=exc.message))
        else:
            tell_dropped(router, f.path, on_file)
            raise _every_url_failed(errors)
        await drop_liars(router, check, blob, f.path, on_file)
        if not blob.is_file():
            raise ModelhaulError(f"{f.path}: the download reported success but left no file")
        if f.sha256 is None:
            good = await asyncio.to_thread(rs.verify_blob, f.blob_id, rehash=True)
            if not good:
                blob.unlink(missing_ok=True)
                raise IntegrityError(f"{f.path}: the downloaded file does not match its git hash")
        else:
            # The chunk digests come from the engine's hashing pass, so the blob is not read
            # again; a result that hashed nothing now (already complete) has them computed.
            hashed = result if result is not None and not result.already_complete else None
            await asyncio.to_thread(
                rs.record_download,
                f.blob_id,
                chunk_bytes=hashed.chunk_bytes if hashed else 0,
                chunk_xxh3=hashed.chunk_xxh3 if hashed else (),
            )
        return received, min(received, router.bytes_from_peers if router else 0)

    # ------------------------------------------------------------------ offline

    def load_cached(
        self, repo_id: str, revision: str | None, repo_type: str = "model"
    ) -> PullResult:
        """The complete snapshot of a model already in the store, or raise."""
        rs = RepoStore(self.root, repo_id, repo_type)
        commit = resolve_local_commit(rs, revision)
        files = local_files(rs, commit)
        if not files:
            raise ModelhaulError(f"{repo_id} is not in the cache")
        for f in files:
            if (
                not rs.blob_path(f.blob_id).is_file()
                or not rs.snapshot_file(commit, f.path).exists()
            ):
                raise ModelhaulError(f"{repo_id} is only partly in the cache ({f.path} is missing)")
        return PullResult(
            repo_id=repo_id,
            commit=commit,
            snapshot=rs.snapshot_dir(commit),
            fetched=(),
            present=tuple(f.path for f in files),
            bytes_fetched=0,
            offline=True,
        )

    # ------------------------------------------------------------------ verify and repair

    async def verify(
        self,
        repo_id: str,
        revision: str | None,
        *,
        repo_type: str = "model",
        repair: bool = False,
        url_for: Callable[[str, str], ModelFile | None] | None = None,
        headers_for: Callable[[str], Sequence[tuple[str, str]]] | None = None,
        on_file: FileCallback | None = None,
    ) -> VerifyReport:
        """Check every file's size and hash; with ``repair`` refetch only what is bad.

        ``url_for(commit, path)`` supplies a download source for files whose URL the store
        does not know (models pulled by other tools). ``headers_for(url)`` gives the
        credentials for a stored URL (the store never keeps tokens).
        """
        rs = RepoStore(self.root, repo_id, repo_type)
        commit = resolve_local_commit(rs, revision)
        listing = load_listing(rs, commit)
        report = VerifyReport(repo_id, commit)
        bad: list[tuple[ModelFile, FileProblem]] = []
        for f in listing.files:
            report.checked += 1
            problem = await asyncio.to_thread(check_file, rs, commit, f)
            if problem is not None:
                bad.append((f, problem))
        if repair and bad:
            await self._repair(rs, commit, bad, report, url_for, headers_for, on_file)
        else:
            report.problems = [p for _, p in bad]
        owed = owed_refs(rs, listing)
        if owed and repair and report.ok:
            # Every file is there now: finish what the interrupted pull left undone.
            await asyncio.to_thread(write_owed_refs, rs, commit, owed)
            report.repaired.extend(f"refs/{name}" for name in owed)
        else:
            report.problems.extend(
                FileProblem(f"refs/{name}", "ref", "the pull did not finish: no ref was written")
                for name in owed
            )
        return report

    async def _repair(
        self,
        rs: RepoStore,
        commit: str,
        bad: list[tuple[ModelFile, FileProblem]],
        report: VerifyReport,
        url_for: Callable[[str, str], ModelFile | None] | None,
        headers_for: Callable[[str], Sequence[tuple[str, str]]] | None,
        on_file: FileCallback | None,
    ) -> None:
        rs.prepare()
        for f, problem in bad:
            source = f if f.urls else (url_for(commit, f.path) if url_for else None)
            if source is None or not source.urls:
                problem.detail += " (no download URL known; pull the model again)"
                report.problems.append(problem)
                continue
            if headers_for is not None and not source.headers:
                source = replace(source, headers=tuple(headers_for(source.urls[0])))
            try:
                fetched = await self._repair_blob(rs, source, on_file)
            except ModelhaulError as exc:
                problem.detail = f"repair failed: {exc.message}"
                report.problems.append(problem)
                continue
            with writing(rs.snapshot_file(commit, f.path)):
                rs.link(commit, f.path, f.blob_id, symlinks=self.symlinks)
            again = await asyncio.to_thread(check_file, rs, commit, f)
            if again is not None:
                report.problems.append(again)
            else:
                report.repaired.append(f.path)
                report.bytes_refetched += fetched

    async def _repair_blob(self, rs: RepoStore, f: ModelFile, on_file: FileCallback | None) -> int:
        """Refetch what is bad in one blob (only its bad chunks when their hashes are known);
        returns the bytes fetched."""
        if f.size == 0:
            await asyncio.to_thread(_write_empty_blob, rs, f)
            return 0
        async with self._blob_lock(rs, f, on_file) as lock:
            if await _done_meanwhile(rs, f, lock):
                return 0
            await asyncio.to_thread(prepare_chunk_repair, rs, f)
            return (await self._download(rs, f, 0, on_file))[0]


async def _done_meanwhile(rs: RepoStore, f: ModelFile, lock: BlobLock) -> bool:
    """Whether another process fetched the blob since we found it missing or bad: only worth
    hashing if we waited for its lock or a fresh record vouches for it (a cheap check)."""
    if not lock.waited and rs.record(f.blob_id) is None:
        return False
    return await asyncio.to_thread(blob_good, rs, f)


def _every_url_failed(errors: list[ModelhaulError]) -> ModelhaulError:
    """One error for a file none of whose URLs worked: a wrong file anywhere matters most (the
    source publishes something else), else the primary URL's error; the rest is history."""
    chosen = next((e for e in errors if e.category is Category.INTEGRITY), errors[0])
    if len(errors) == 1:
        return chosen
    return RetriesExhausted(chosen, errors)


def _write_empty_blob(rs: RepoStore, f: ModelFile) -> None:
    """An empty file needs no download, only a check that its listed hash is the empty one."""
    if f.blob_id not in (EMPTY_SHA256, EMPTY_GIT_OID):
        raise IntegrityError(f"{f.path}: listed as empty, but its hash is not the empty file's")
    blob = rs.blob_path(f.blob_id)
    if not blob.is_file() or blob.stat().st_size:
        tmp = unique_tmp(blob)
        # 0o664 as every downloaded blob (a renamed partial file): never world-writable, or
        # under umask 000 anyone could fill the "empty" file that snapshots point at.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o664))
        os.replace(tmp, blob)
    rs.verify_blob(f.blob_id)
