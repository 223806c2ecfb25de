"""How a stored model stands, judged without hashing: ready, partial, downloading or corrupt.

A revision is judged against its listing (``store.listing``): each listed file must be in the
snapshot at its listed size (the engine publishes only verified blobs) and not found bad by a
later hash, and the refs its pull owed must exist. Unfinished downloads are counted from their
journals, since a preallocated partial file's size says nothing about what it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..disk.journal import Journal
from ..disk.partials import is_downloading
from ..errors import InvalidInput
from ..policy.paths import JOURNAL_SUFFIX, PART_SUFFIX
from .listing import load_listing, owed_refs, stored_commits
from .repo import RepoStore
from .statedb import ModelFacts


@dataclass(frozen=True, slots=True)
class Health:
    """One model's status and the counts behind it."""

    status: str  # ready | partial | downloading | corrupt
    present: int  # files of the fullest revision that are in place
    listed: int | None  # files its listing names; None: no listing, judged by its own links
    received: int  # bytes unfinished downloads received
    on_disk: int  # bytes unfinished downloads occupy


@dataclass(frozen=True, slots=True)
class Unfinished:
    """The model's partial files taken together."""

    received: int
    on_disk: int
    downloading: bool  # one is being written right now


@dataclass(frozen=True, slots=True)
class RevisionHealth:
    state: str  # ready | partial | corrupt
    present: int
    listed: int | None  # None: no listing, the snapshot is judged by its own links


def judge_model(
    rs: RepoStore, repo_path: Path, facts: ModelFacts | None, lock_dir: Path | None
) -> Health:
    """One model's status: downloading, else corrupt (known bad), else partial (a file a
    revision lists is missing, a ref its pull owes is unwritten, a download unfinished, or
    no revision at all), else ready."""
    parts = unfinished(repo_path, lock_dir)
    revisions = [judge_revision(rs, c) for c in stored_commits(rs)]
    listed = [r.listed for r in revisions if r.listed is not None]
    if parts.downloading:
        status = "downloading"
    elif (facts is not None and facts.corrupt) or any(r.state == "corrupt" for r in revisions):
        status = "corrupt"
    elif (
        not revisions
        or parts.on_disk
        or parts.received
        or any(r.state != "ready" for r in revisions)
    ):
        status = "partial"
    else:
        status = "ready"
    return Health(
        status=status,
        present=max((r.present for r in revisions), default=0),
        listed=max(listed) if listed else None,
        received=parts.received,
        on_disk=parts.on_disk,
    )


def judge_by_partials(repo_path: Path, lock_dir: Path | None) -> Health:
    """A model whose name modelhaul refuses (huggingface_hub allows more): only its partial
    files can be judged."""
    parts = unfinished(repo_path, lock_dir)
    status = "downloading" if parts.downloading else "partial" if parts.on_disk else "ready"
    return Health(status, 0, None, parts.received, parts.on_disk)


def judge_revision(rs: RepoStore, commit: str) -> RevisionHealth:
    """A stored revision against its listing, without hashing."""
    listing = load_listing(rs, commit)
    present = 0
    corrupt = False
    for f in listing.files:
        try:
            size = rs.snapshot_file(commit, f.path).stat().st_size
        except (OSError, InvalidInput):
            continue
        if f.size >= 0 and size != f.size:
            continue
        if rs.is_discredited(f.blob_id):
            corrupt = True
            continue
        present += 1
    complete = present == len(listing.files) and not owed_refs(rs, listing)
    state = "corrupt" if corrupt else "ready" if complete else "partial"
    return RevisionHealth(state, present, len(listing.files) if listing.known else None)


def unfinished(repo_path: Path, lock_dir: Path | None) -> Unfinished:
    """Bytes unfinished downloads received (their journals say), bytes they occupy, and
    whether one is in progress (``lock_dir`` holds the engine's locks; None: never)."""
    received = on_disk = 0
    downloading = False
    for part in partial_files(repo_path):
        try:
            st = part.stat()
        except OSError:
            continue
        on_disk += st.st_blocks * 512
        received += received_bytes(part, st.st_size)
        if lock_dir is not None and is_downloading(lock_dir, part):
            downloading = True
    return Unfinished(received, on_disk, downloading)


def partial_files(repo_path: Path) -> list[Path]:
    """modelhaul's partial blobs and huggingface_hub's ``.incomplete`` ones."""
    blobs = repo_path / "blobs"
    if not blobs.is_dir():
        return []
    return [p for p in blobs.iterdir() if p.name.endswith((PART_SUFFIX, ".incomplete"))]


def received_bytes(part: Path, size: int) -> int:
    """What a partial file holds: its journal's ranges (modelhaul preallocates the file, so
    its size is the whole download's); huggingface_hub's ``.incomplete`` files only grow."""
    if not part.name.endswith(PART_SUFFIX):
        return size
    state = Journal(part.with_name(part.name.replace(PART_SUFFIX, JOURNAL_SUFFIX))).load()
    return state.done.total() if state is not None else 0
