"""The mirror's own record of its fetches in progress, so a mirror killed mid-fetch (kill -9,
a crash, the OOM killer) goes on with them when started again, before any client asks.

Each flight of an anonymous caller leaves ``<repo>/.modelhaul/mirror-flights/<blob>.json``
(which file of which commit) while it runs; the engine's journal beside the partial file says
which bytes are already there, so the resumed fetch asks the upstream only for the rest. A
flight for a caller with a token is not recorded: the mirror never stores a caller's token, and
a gated file is fetched only for a caller the upstream accepts, so its journal waits for the
next such caller.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelhaulError
from ..policy.hubpaths import HubPath
from ..store.repo import RepoStore

log = logging.getLogger("modelhaul.mirror")
_FOLDER = "mirror-flights"
_MAX_RECORDS = 10_000


@dataclass(frozen=True, slots=True)
class RecordedFlight:
    """A fetch a mirror had under way: the file (by commit) and the blob it fills."""

    repo: RepoStore
    path: HubPath
    etag: str


def _record_path(rs: RepoStore, etag: str) -> Path:
    return rs.meta / _FOLDER / f"{rs.blob_path(etag).name}.json"


def record_flight(rs: RepoStore, hp: HubPath, commit: str, etag: str) -> None:
    """Remember that this blob is being fetched for this file of this commit."""
    path = _record_path(rs, etag)
    if path.exists():
        return
    entry = {"repo_type": rs.repo_type, "repo_id": rs.repo_id, "commit": commit, "path": hp.path}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unique per call: the clients of one cold file record it at once, in threads.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, path)
    except OSError as exc:  # only a restart's head start is lost
        log.warning("mirror: could not record the fetch of %s: %s", etag, exc)


def drop_flight(rs: RepoStore, etag: str) -> None:
    """The fetch ended (the blob is in the store, or it failed for good)."""
    try:
        _record_path(rs, etag).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("mirror: could not drop the record of %s: %s", etag, exc)


def recorded_flights(store_root: Path) -> list[RecordedFlight]:
    """The fetches a mirror of this store left under way; unreadable records are dropped."""
    found: list[RecordedFlight] = []
    for record in sorted(store_root.glob(f"*/.modelhaul/{_FOLDER}/*.json"))[:_MAX_RECORDS]:
        try:
            entry = json.loads(record.read_text())
            rs = RepoStore(store_root, entry["repo_id"], entry["repo_type"])
            hp = HubPath(
                kind="resolve",
                repo_type=rs.repo_type,
                repo_id=rs.repo_id,
                revision=entry["commit"],
                path=entry["path"],
            )
            etag = record.name.removesuffix(".json")
            rs.blob_path(etag)  # a blob id, or InvalidInput
            rs.snapshot_file(entry["commit"], entry["path"])  # a path inside the repository
        except (OSError, ValueError, KeyError, TypeError, ModelhaulError) as exc:
            log.warning("mirror: dropping the unreadable record %s: %s", record, exc)
            record.unlink(missing_ok=True)
            continue
        if rs.folder != record.parent.parent.parent:
            record.unlink(missing_ok=True)  # a record naming another repository's folder
            continue
        found.append(RecordedFlight(repo=rs, path=hp, etag=etag))
    return found


__all__ = ["RecordedFlight", "drop_flight", "record_flight", "recorded_flights"]
