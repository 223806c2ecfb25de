"""What a stored revision should hold: the recorded file lists, the refs a pull owes, and the
revisions the store holds.

A pull records the files it asks for in ``.modelhaul/files-<commit>.json`` before fetching a
byte, with the ref it will owe until it finishes; huggingface_hub's ``trees/<commit>.json`` and
the snapshot's own links stand in for models other tools fetched. 'ls', 'verify', the service
and the next pull judge a snapshot against this list, never against itself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInput
from ..policy.paths import safe_relpath
from ..policy.validate import check_revision, is_blob_id, is_commit_hash
from ..sources.model import ModelFile, ModelSpec
from .repo import NotInStore, RepoStore


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
            if not is_blob_id(blob_id):
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
        if not isinstance(blob_id, str) or not is_blob_id(blob_id) or not isinstance(size, int):
            continue
        try:
            rel = safe_relpath(path)
        except InvalidInput:
            continue
        out.append(_unlocated(rel, size, blob_id, sha if isinstance(sha, str) else None))
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
            if not is_blob_id(blob_id):
                continue
            try:
                size = (rs.blobs / blob_id).stat().st_size
            except OSError:
                size = -1
            rel = p.relative_to(snap).as_posix()
            out.append(_unlocated(rel, size, blob_id, blob_id if len(blob_id) == 64 else None))
    return out


def _unlocated(path: str, size: int, blob_id: str, sha256: str | None) -> ModelFile:
    """A file known from a listing that names no download URL (trees, snapshot links)."""
    return ModelFile(path=path, size=size, blob_id=blob_id, urls=(), sha256=sha256)


def resolve_local_commit(rs: RepoStore, revision: str | None) -> str:
    """The commit ``revision`` names in the store (a ref, a commit, or with none: main, else
    the newest snapshot, counting pulls that failed before linking any file)."""
    if not rs.folder.is_dir():
        raise NotInStore(
            f"{rs.repo_id} is not in the store at {rs.root}",
            hint=f"Pull it first: modelhaul pull hf://{rs.repo_id}",
        )
    commits = stored_commits(rs)
    if revision and is_commit_hash(revision) and revision in commits:
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
        [p.name for p in rs.snapshots.iterdir() if p.is_dir() and is_commit_hash(p.name)]
        if rs.snapshots.is_dir()
        else []
    )
    unlinked = [
        c
        for c in rs.listed_commits()
        if c not in snaps and is_commit_hash(c) and owed_refs(rs, load_listing(rs, c))
    ]
    return snaps + unlinked


def _mtime(rs: RepoStore, commit: str) -> float:
    for p in (rs.snapshot_dir(commit), rs.meta / f"files-{commit}.json"):
        with contextlib.suppress(OSError):
            return p.stat().st_mtime
    return 0.0
