"""A model as a set of files: pull what is missing, verify, and repair only what is bad.

Pulls go through the DownloadManager (several files at once, big ones segmented) into the
Hugging Face cache layout kept by ``store.RepoStore``. A blob is linked into the snapshot only
after it was verified, so a snapshot never points at a missing or wrong blob.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..disk.journal import Journal, JournalState
from ..engine.downloader import _stage, part_paths
from ..errors import (
    DiskFull,
    IntegrityError,
    InvalidInput,
    ModelhaulError,
    PermissionDenied,
    RetriesExhausted,
    human_bytes,
)
from ..manager.downloads import DownloadHandle, DownloadManager
from ..policy.paths import safe_relpath
from ..policy.ranges import RangeSet
from ..sources.model import ModelFile, ModelSpec
from .repo import (
    EMPTY_GIT_OID,
    EMPTY_SHA256,
    BlobLock,
    NotInStore,
    RepoStore,
    bad_chunks,
    check_revision,
    unique_tmp,
)

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_BLOB_ID = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
FileCallback = Callable[[str, str], None]  # (path, what happened)


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
            "offline": self.offline,
            "local_dir": str(self.local_dir) if self.local_dir else None,
            "error": None,
        }


@dataclass(slots=True)
class FileProblem:
    path: str
    problem: str  # "missing", "size", "hash", "link"
    detail: str = ""


@dataclass(slots=True)
class VerifyReport:
    repo_id: str
    commit: str
    checked: int = 0
    problems: list[FileProblem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    bytes_refetched: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        return {
            "event": "result",
            "status": "completed" if self.ok else "failed",
            "model": self.repo_id,
            "commit": self.commit,
            "checked": self.checked,
            "bad": [
                {"path": p.path, "problem": p.problem, "detail": p.detail} for p in self.problems
            ],
            "repaired": self.repaired,
            "bytes_refetched": self.bytes_refetched,
        }


class ModelPuller:
    """Pulls ModelSpecs into a store through a DownloadManager."""

    def __init__(
        self,
        root: Path,
        manager: DownloadManager,
        *,
        symlinks: bool = True,
        check_disk_space: bool = True,
    ) -> None:
        self.root = root
        self.manager = manager
        self.symlinks = symlinks
        self.check_disk_space = check_disk_space

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
        ``on_file(path, what)`` hears "queued:<task id>", "mirror: <why>", "waiting: <why>"
        and "done".
        """
        rs = self.repo(spec)
        rs.prepare()
        # Before any byte: a pull that fails leaves a list showing what is missing, and 'ls',
        # 'verify' and the service judge the snapshot against it instead of against itself.
        with _writing(rs.folder):
            await asyncio.to_thread(record_pull_start, rs, spec)
        present, missing = await self._sort_files(rs, spec.files)
        if missing and self.check_disk_space:
            self._check_space(rs, missing, free_hint)
        by_blob: dict[str, list[ModelFile]] = {}
        for f in missing:
            by_blob.setdefault(f.blob_id, []).append(f)
        results = await asyncio.gather(
            *(self._fetch_blob(rs, files, priority, on_file) for files in by_blob.values()),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        fetched: list[ModelFile] = []
        received = 0
        for files, r in zip(by_blob.values(), results, strict=True):
            if isinstance(r, BaseException):
                continue
            if r is None:  # another process fetched it meanwhile
                present.extend(files)
            else:
                fetched.extend(files)
                received += r
        for f in (*present, *fetched):
            _stage("linking")
            with _writing(rs.snapshot_file(spec.commit, f.path)):
                rs.link(spec.commit, f.path, f.blob_id, symlinks=self.symlinks)
        if errors:
            for e in errors:
                if not isinstance(e, Exception):
                    raise e  # cancellation and the like propagate untouched
            first = errors[0]
            raise first if isinstance(first, ModelhaulError) else ModelhaulError(str(first))
        with _writing(rs.folder):
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
        )

    async def _sort_files(
        self, rs: RepoStore, files: Sequence[ModelFile]
    ) -> tuple[list[ModelFile], list[ModelFile]]:
        present: list[ModelFile] = []
        missing: list[ModelFile] = []
        checked: dict[str, bool] = {}
        for f in files:
            if f.blob_id not in checked:
                checked[f.blob_id] = await asyncio.to_thread(_blob_good, rs, f)
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
                hint=hint,
            )

    async def _fetch_blob(
        self,
        rs: RepoStore,
        files: Sequence[ModelFile],
        priority: int,
        on_file: FileCallback | None,
    ) -> int | None:
        """Fetch the blob of ``files`` (all share it); the bytes received for it, or None if
        another process fetched it meanwhile."""
        f = files[0]
        received: int | None = 0
        if f.size == 0:
            await asyncio.to_thread(_write_empty_blob, rs, f)
        else:
            async with self._blob_lock(rs, f, on_file) as lock:
                if await _done_meanwhile(rs, f, lock):
                    received = None
                else:
                    received = await self._download(rs, f, priority, on_file)
        if on_file:
            for g in files:
                on_file(g.path, "done")
        return received

    @staticmethod
    def _blob_lock(rs: RepoStore, f: ModelFile, on_file: FileCallback | None) -> BlobLock:
        def on_wait() -> None:
            if on_file:
                on_file(f.path, "waiting: another process is fetching it")

        return BlobLock(rs.lock_path(f.blob_id), on_wait=on_wait)

    async def _download(
        self, rs: RepoStore, f: ModelFile, priority: int, on_file: FileCallback | None
    ) -> int:
        """Download one blob from its first URL that works, then verify and record it;
        returns the bytes received over the network for it (a resume's missing part only)."""
        blob = rs.blob_path(f.blob_id)
        errors: list[ModelhaulError] = []
        received = 0
        for i, url in enumerate(f.urls):
            # Credentials belong to the primary URL's host; mirrors get none.
            headers = dict(f.headers) if i == 0 else {}
            handle: DownloadHandle | None = None
            try:
                handle = self.manager.add(
                    url,
                    blob,
                    sha256=f.sha256,
                    expected_size=f.size if f.size >= 0 else None,
                    headers=headers,
                    priority=priority,
                )
                if on_file:
                    on_file(f.path, f"queued:{handle.id}")
                received += (await handle.wait()).bytes_transferred
                break
            except ModelhaulError as exc:
                if exc.category in ("invalid_input", "disk_full", "permission", "cancelled"):
                    raise
                if handle is not None:  # what a failed URL delivered was still received
                    received += self.manager.info(handle.id).bytes_received
                errors.append(exc)
                if on_file and i + 1 < len(f.urls):
                    on_file(f.path, f"mirror: {exc.message}")
        else:
            raise _every_url_failed(errors)
        if not blob.is_file():
            raise ModelhaulError(f"{f.path}: the download reported success but left no file")
        if f.sha256 is None:
            good = await asyncio.to_thread(rs.verify_blob, f.blob_id, rehash=True)
            if not good:
                blob.unlink(missing_ok=True)
                raise IntegrityError(f"{f.path}: the downloaded file does not match its git hash")
        else:
            await asyncio.to_thread(rs.record_download, f.blob_id)
        return received

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
            with _writing(rs.snapshot_file(commit, f.path)):
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
            await asyncio.to_thread(_prepare_chunk_repair, rs, f)
            return await self._download(rs, f, 0, on_file)


async def _done_meanwhile(rs: RepoStore, f: ModelFile, lock: BlobLock) -> bool:
    """Whether another process fetched the blob since we found it missing or bad: only worth
    hashing if we waited for its lock or a fresh record vouches for it (a cheap check)."""
    if not lock.waited and rs.record(f.blob_id) is None:
        return False
    return await asyncio.to_thread(_blob_good, rs, f)


def _every_url_failed(errors: list[ModelhaulError]) -> ModelhaulError:
    """One error for a file none of whose URLs worked: a wrong file anywhere matters most (the
    source publishes something else), else the primary URL's error; the rest is history."""
    chosen = next((e for e in errors if e.category == "integrity"), errors[0])
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


def _blob_good(rs: RepoStore, f: ModelFile) -> bool:
    blob = rs.blob_path(f.blob_id)
    try:
        if blob.stat().st_size != f.size:
            return False
    except OSError:
        return False
    if not rs.verify_blob(f.blob_id):
        return False
    _forget_stale_journal(blob)
    return True


def _forget_stale_journal(blob: Path) -> None:
    """Remove a journal left beside a good blob without its partial file.

    A process killed between publishing the blob and removing its journal leaves one; nothing
    can resume from it (its partial file is the blob now), and a blob found good is never
    downloaded again, so without this it would stay in the store for good. A download in
    progress always has its partial file, so its journal is never taken for a stale one.
    """
    part, journal = part_paths(blob)
    if not part.exists():
        Journal(journal).remove()


def _prepare_chunk_repair(rs: RepoStore, f: ModelFile) -> int | None:
    """Turn a corrupt blob with recorded chunk hashes into a partial file whose journal says
    every good chunk is held; returns how many bytes will be fetched (None: all of it)."""
    blob = rs.blob_path(f.blob_id)
    rec = rs.chunk_hashes(f.blob_id)
    try:
        size = blob.stat().st_size
    except OSError:
        return None
    if rec is None or not rec.chunks or rec.size != f.size or size != f.size or f.sha256 is None:
        blob.unlink(missing_ok=True)
        rs.forget_record(f.blob_id)
        return None
    bad = bad_chunks(blob, rec)
    if not bad:  # the chunks agree but the whole does not: trust nothing
        blob.unlink(missing_ok=True)
        rs.forget_record(f.blob_id)
        return None
    good = RangeSet()
    pos = 0
    for start, end in bad:
        good.add(pos, start)
        pos = end
    good.add(pos, f.size)
    part, journal = part_paths(blob)
    rs.forget_record(f.blob_id)
    os.replace(blob, part)
    Journal(journal).save(JournalState(url=f.urls[0], size=f.size, sha256=f.sha256, done=good))
    return sum(e - s for s, e in bad)


def check_file(rs: RepoStore, commit: str, f: ModelFile) -> FileProblem | None:
    blob = rs.blob_path(f.blob_id)
    link = rs.snapshot_file(commit, f.path)
    try:
        st = blob.stat()
    except OSError:
        return FileProblem(f.path, "missing", "the blob is missing")
    if f.size >= 0 and st.st_size != f.size:
        return FileProblem(f.path, "size", f"{st.st_size} bytes, expected {f.size}")
    # Verify means hash again, whatever a record says; a bad blob keeps its chunk hashes.
    if not rs.verify_blob(f.blob_id, rehash=True):
        return FileProblem(f.path, "hash", "the content does not match its hash")
    try:
        if link.resolve() != blob.resolve() and not (link.is_file() and _same_file(link, blob)):
            return FileProblem(f.path, "link", "the snapshot entry points elsewhere")
    except OSError:
        return FileProblem(f.path, "link", "the snapshot entry is missing")
    if not link.exists():
        return FileProblem(f.path, "link", "the snapshot entry is missing")
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size
    except OSError:
        return False


def resolve_local_commit(rs: RepoStore, revision: str | None) -> str:
    """The commit ``revision`` names in the store (a ref, a commit, or with none: main, else
    the newest snapshot, counting pulls that failed before linking any file)."""
    if not rs.folder.is_dir():
        raise NotInStore(
            f"{rs.repo_id} is not in the store at {rs.root}",
            hint=f"Pull it first: modelhaul pull hf://{rs.repo_id}",
        )
    commits = stored_commits(rs)
    if revision and _HEX40.match(revision) and revision in commits:
        return revision
    commit = rs.read_ref(revision or "main")
    if commit is None and revision is None and commits:
        commit = max(commits, key=lambda c: _mtime(rs, c))
    if commit is None:
        raise NotInStore(
            f"revision {revision or 'main'} of {rs.repo_id} is not in the store",
            hint="Pull it first, or name a revision that 'modelhaul ls' shows.",
        )
    return check_revision(commit)


def stored_commits(rs: RepoStore) -> list[str]:
    """Commits with a snapshot folder, and those whose pull failed before linking a file (a
    list that still owes a ref). A finished list without a snapshot is a revision removed by
    other tools, not a pull of ours."""
    snaps = (
        [p.name for p in rs.snapshots.iterdir() if p.is_dir() and _HEX40.match(p.name)]
        if rs.snapshots.is_dir()
        else []
    )
    unlinked = [
        c
        for c in rs.listed_commits()
        if c not in snaps and _HEX40.match(c) and owed_refs(rs, load_listing(rs, c))
    ]
    return snaps + unlinked


def _mtime(rs: RepoStore, commit: str) -> float:
    for p in (rs.snapshot_dir(commit), rs.meta / f"files-{commit}.json"):
        with contextlib.suppress(OSError):
            return p.stat().st_mtime
    return 0.0


@dataclass(frozen=True, slots=True)
class Listing:
    """The files a stored revision should hold, and where that knowledge comes from."""

    commit: str
    files: list[ModelFile]
    source: str  # "modelhaul" (our record), "trees" (the Hub listing), "snapshot" (itself)
    pending_refs: tuple[str, ...] = ()  # refs the recording pull had yet to write

    @property
    def known(self) -> bool:
        """Whether the list says what should be there (a snapshot only says what is)."""
        return self.source != "snapshot"


def load_listing(rs: RepoStore, commit: str) -> Listing:
    """The files of a stored revision: modelhaul's record (what pulls asked for, written before
    fetching), else huggingface_hub's ``trees/<commit>.json``, else the snapshot's own links."""
    data = rs.load_file_list(commit)
    if data and isinstance(data.get("files"), list):
        pending = data.get("pending_refs") or []
        return Listing(
            commit,
            _files_from_record(data["files"]),
            "modelhaul",
            tuple(str(r) for r in pending if isinstance(r, str)),
        )
    tree = rs.load_tree(commit)
    if tree is not None:
        return Listing(commit, _files_from_tree(tree), "trees")
    return Listing(commit, _files_from_snapshot(rs, commit), "snapshot")


def local_files(rs: RepoStore, commit: str) -> list[ModelFile]:
    """The files a stored revision should hold (see ``load_listing``)."""
    return load_listing(rs, commit).files


def owed_refs(rs: RepoStore, listing: Listing) -> list[str]:
    """Refs the pull that recorded ``listing`` was to write and that do not exist. A ref that
    exists, even at another commit, was written by a later pull of that name."""
    return [r for r in listing.pending_refs if _ref_missing(rs, r)]


def _ref_missing(rs: RepoStore, name: str) -> bool:
    try:
        return not (rs.refs / check_revision(name)).is_file()
    except InvalidInput:
        return False  # a name no pull of ours could have recorded


def write_owed_refs(rs: RepoStore, commit: str, names: Sequence[str]) -> None:
    """Write refs an interrupted pull owed (never moving one a later pull wrote)."""
    for name in names:
        if _ref_missing(rs, name):
            rs.write_ref(name, commit)
    _settle_refs(rs, commit, names)


def record_pull_start(rs: RepoStore, spec: ModelSpec) -> None:
    """Record the files a pull asks for, added to what earlier (filtered) pulls of the commit
    asked for (a commit's files never change), and the ref it will owe until it finishes; and
    the Hub's listing of the whole revision where huggingface_hub looks for it."""
    if spec.tree is not None:
        rs.save_tree(spec.commit, spec.tree)
    owes = bool(spec.revision) and spec.revision != spec.commit
    with rs.file_list_lock(spec.commit):
        old = rs.load_file_list(spec.commit) or {}
        entries = _record_entries(old)
        entries.update({f.path: f.to_json() for f in spec.files})
        pending = {r for r in old.get("pending_refs") or () if isinstance(r, str)}
        if owes and rs.read_ref(spec.revision or "") != spec.commit:
            pending.add(spec.revision or "")
        _save_record(rs, spec, entries, sorted(pending))


def record_pull_done(rs: RepoStore, spec: ModelSpec) -> None:
    """The pull finished: write its ref, then strike it from the refs the list owes."""
    if spec.revision and spec.revision != spec.commit:
        rs.write_ref(spec.revision, spec.commit)
        _settle_refs(rs, spec.commit, [spec.revision])


def _settle_refs(rs: RepoStore, commit: str, names: Sequence[str]) -> None:
    with rs.file_list_lock(commit):
        data = rs.load_file_list(commit)
        if not data or not data.get("pending_refs"):
            return
        data["pending_refs"] = [r for r in data["pending_refs"] if r not in names]
        rs.save_file_list(commit, data)


def _record_entries(old: dict[str, object]) -> dict[str, object]:
    entries: dict[str, object] = {}
    for e in old.get("files") or ():  # type: ignore[attr-defined]
        if isinstance(e, dict) and isinstance(e.get("path"), str):
            entries[e["path"]] = e
    return entries


def _save_record(
    rs: RepoStore, spec: ModelSpec, entries: dict[str, object], pending: list[str]
) -> None:
    rs.save_file_list(
        spec.commit,
        {
            "repo_id": spec.repo_id,
            "repo_type": spec.repo_type,
            "source": spec.source,
            "pending_refs": pending,
            "files": list(entries.values()),
        },
    )


def _files_from_record(entries: list[object]) -> list[ModelFile]:
    out = []
    for e in entries:
        if not isinstance(e, dict):
            continue
        try:
            blob_id = str(e["blob_id"])
            if not _BLOB_ID.match(blob_id):
                continue
            out.append(
                ModelFile(
                    path=safe_relpath(e["path"]),
                    size=int(e["size"]),
                    blob_id=blob_id,
                    urls=tuple(str(u) for u in e.get("urls") or ()),
                    sha256=e.get("sha256"),
                )
            )
        except (KeyError, TypeError, ValueError, InvalidInput):
            continue
    return out


def _files_from_tree(tree: dict[str, dict[str, object]]) -> list[ModelFile]:
    """huggingface_hub's listing: an LFS file's blob is named by its SHA-256, others by the
    git blob id."""
    out = []
    for path, e in tree.items():
        sha = e.get("lfs_sha256")
        blob_id = sha if isinstance(sha, str) else e.get("blob_id")
        size = e.get("size")
        if not isinstance(blob_id, str) or not _BLOB_ID.match(blob_id) or not isinstance(size, int):
            continue
        try:
            rel = safe_relpath(path)
        except InvalidInput:
            continue
        out.append(
            ModelFile(
                path=rel,
                size=size,
                blob_id=blob_id,
                urls=(),
                sha256=sha if isinstance(sha, str) else None,
            )
        )
    return out


def _files_from_snapshot(rs: RepoStore, commit: str) -> list[ModelFile]:
    """A snapshot's own links (models fetched by huggingface_hub without a listing)."""
    snap = rs.snapshot_dir(commit)
    out: list[ModelFile] = []
    if not snap.is_dir():
        return out
    for dirpath, _dirs, names in os.walk(snap):
        for name in names:
            p = Path(dirpath) / name
            if not p.is_symlink():
                continue
            blob_id = Path(os.readlink(p)).name
            if not _BLOB_ID.match(blob_id):
                continue
            try:
                size = (rs.blobs / blob_id).stat().st_size
            except OSError:
                size = -1
            rel = p.relative_to(snap).as_posix()
            out.append(
                ModelFile(
                    path=rel,
                    size=size,
                    blob_id=blob_id,
                    urls=(),
                    sha256=blob_id if len(blob_id) == 64 else None,
                )
            )
    return out


def place_local_dir(rs: RepoStore, spec: ModelSpec, local_dir: Path) -> None:
    """Plain files in ``local_dir`` (hard links to the blobs where possible, else copies)."""
    base = local_dir.absolute()
    for f in spec.files:
        dest = base / safe_relpath(f.path)
        with _writing(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.parent.resolve().is_relative_to(base.resolve()):
                raise PermissionDenied(f"refusing to write through a symbolic link under {base}")
            tmp = unique_tmp(dest)
            blob = rs.blob_path(f.blob_id)
            try:
                try:
                    os.link(blob, tmp)
                except OSError:
                    shutil.copyfile(blob, tmp)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """OS errors while writing ``path`` as modelhaul errors: a full disk, or a path that cannot
    be written (permissions, a folder where a file goes), never a traceback."""
    try:
        yield
    except ModelhaulError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"the disk is full while writing {path}") from exc
        raise PermissionDenied(f"cannot write {path}: {exc.strerror or exc}") from exc
