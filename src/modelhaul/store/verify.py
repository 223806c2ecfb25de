"""Checking stored files against their listing, and preparing a corrupt blob for repair.

``check_file`` hashes again whatever a record says (that is what 'verify' means); ``blob_good``
lets a valid record stand in for hashing (what a pull needs to skip a blob). A corrupt blob whose
chunk digests were recorded (xxh3-128 of 2 MiB pieces, or SHA-256 of 16 MiB pieces in records of
earlier versions) becomes a partial file whose journal holds every good chunk, so the engine
refetches only the bad ones, and verifies the whole file's SHA-256 again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..disk.journal import Journal, JournalState
from ..policy.paths import part_paths
from ..policy.ranges import RangeSet
from ..sources.model import ModelFile
from .chunks import CHUNK_ALGOS, bad_chunks
from .repo import RepoStore


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


def blob_good(rs: RepoStore, f: ModelFile) -> bool:
    blob = rs.blob_path(f.blob_id)
    try:
        if blob.stat().st_size != f.size:
            return False
    except OSError:
        return False
    if not rs.verify_blob(f.blob_id):
        return False
    forget_stale_journal(blob)
    return True


def forget_stale_journal(blob: Path) -> None:
    """Remove a journal left beside a good blob without its partial file.

    A process killed between publishing the blob and removing its journal leaves one; nothing
    can resume from it (its partial file is the blob now), and a blob found good is never
    downloaded again, so without this it would stay in the store for good. A download in
    progress always has its partial file, so its journal is never taken for a stale one.
    """
    part, journal = part_paths(blob)
    if not part.exists():
        Journal(journal).remove()


def prepare_chunk_repair(rs: RepoStore, f: ModelFile) -> int | None:
    """Turn a corrupt blob with recorded chunk hashes into a partial file whose journal says
    every good chunk is held; returns how many bytes will be fetched (None: all of it)."""
    blob = rs.blob_path(f.blob_id)
    rec = rs.chunk_hashes(f.blob_id)
    try:
        size = blob.stat().st_size
    except OSError:
        return None
    if (
        rec is None
        or not rec.chunks
        or rec.chunk_algo not in CHUNK_ALGOS  # written by a later version: trust nothing
        or rec.size != f.size
        or size != f.size
        or f.sha256 is None
    ):
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
