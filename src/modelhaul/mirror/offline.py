"""The store standing in for an unreachable upstream: repo info and tree listings of revisions
the store holds whole, built from huggingface_hub's ``trees/<commit>.json`` (which the mirror
writes from the Hub's own listing the first time it stores a file of that commit).

A revision counts as whole only if every file of its listing is linked in its snapshot; anything
less is not answered from here (the caller gets the 504 that says the upstream is unreachable).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from ..policy.hubpaths import HubPath, lfs_pointer_size
from ..policy.validate import is_commit_hash
from ..store.repo import RepoStore

# Entries per page of a tree listing, as the Hub pages ``expand=False`` listings.
TREE_PAGE_SIZE = 1000


def stored_commit(rs: RepoStore, revision: str | None) -> str | None:
    """The commit a branch, tag or commit names in the store."""
    rev = revision or "main"
    if is_commit_hash(rev):
        return rev if rs.snapshot_dir(rev).is_dir() else None
    return rs.read_ref(rev)


def whole_tree(rs: RepoStore, commit: str) -> list[dict[str, Any]] | None:
    """The file entries of a commit the store holds whole, as the Hub's tree lists them."""
    tree = rs.load_tree(commit)
    if not tree:
        return None
    entries = []
    for path, e in sorted(tree.items()):
        try:
            if not rs.snapshot_file(commit, path).exists():
                return None
        except ValueError:
            return None
        entry: dict[str, Any] = {
            "type": "file",
            "oid": e.get("blob_id"),
            "size": e.get("size"),
            "path": path,
        }
        sha = e.get("lfs_sha256")
        if isinstance(sha, str) and isinstance(e.get("size"), int):
            entry["lfs"] = {
                "oid": sha,
                "size": e["size"],
                "pointerSize": lfs_pointer_size(sha, e["size"]),
            }
        entries.append(entry)
    return entries


def info_of(hp: HubPath, commit: str, files: list[dict[str, Any]]) -> dict[str, Any]:
    """Repo info as the Hub gives it, reduced to what a client reads from a mirror."""
    info: dict[str, Any] = {
        "id": hp.repo_id,
        "sha": commit,
        "private": False,
        "siblings": [{"rfilename": f["path"]} for f in files],
    }
    if hp.repo_type == "model":
        info["modelId"] = hp.repo_id
    return info


def tree_of(files: list[dict[str, Any]], path: str, recursive: bool) -> list[dict[str, Any]] | None:
    """One folder of a listing (folders included as entries), as the Hub pages it; None when
    nothing is there."""
    prefix = f"{path}/" if path else ""
    below = [f for f in files if f["path"].startswith(prefix)]
    if not below:
        return None
    folders: set[str] = set()
    for f in below:
        parts = f["path"][len(prefix) :].split("/")[:-1]
        folders.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
    out = [
        {"type": "directory", "oid": "0" * 40, "size": 0, "path": d}
        for d in folders
        if recursive or "/" not in d[len(prefix) :]
    ]
    out += [f for f in below if recursive or "/" not in f["path"][len(prefix) :]]
    return sorted(out, key=lambda e: e["path"])


def page_of(
    entries: list[dict[str, Any]], cursor: str | None, size: int
) -> tuple[list[dict[str, Any]], str | None] | None:
    """One page of a listing sorted by path, and the cursor of the next (None: the last page);
    None for a cursor that is not one. The cursor is the last path of the page before, so a
    page stays right whatever the page size of the one before it."""
    after = ""
    if cursor:
        try:
            padded = cursor + "=" * (-len(cursor) % 4)
            after = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
    rest = [e for e in entries if e["path"] > after]
    page = rest[:size]
    if len(rest) <= size:
        return page, None
    last = page[-1]["path"].encode()
    return page, base64.urlsafe_b64encode(last).decode().rstrip("=")


def tree_cache_files(entries: list[Mapping[str, Any]]) -> dict[str, dict[str, object]]:
    """The Hub's file entries in huggingface_hub's ``trees/<commit>.json`` form."""
    files: dict[str, dict[str, object]] = {}
    for e in entries:
        if e.get("type") != "file" or not isinstance(e.get("path"), str):
            continue
        size = e.get("size")
        item: dict[str, object] = {"size": size, "blob_id": e.get("oid")}
        lfs = e.get("lfs")
        if isinstance(lfs, dict) and isinstance(lfs.get("oid"), str):
            item["lfs_sha256"] = lfs["oid"]
            item["lfs_size"] = lfs.get("size", size)
        files[e["path"]] = item
    return files


__all__ = [
    "TREE_PAGE_SIZE",
    "info_of",
    "page_of",
    "stored_commit",
    "tree_cache_files",
    "tree_of",
    "whole_tree",
]
