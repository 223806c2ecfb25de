"""The Hugging Face Hub's URL paths and response headers, as a mirror reads and writes them; no I/O.

huggingface_hub names a revision as one path segment (``quote(rev, safe='')``, so ``refs/pr/1``
arrives as ``refs%2Fpr%2F1``) and a repository as one or two segments. Paths are therefore split
on the raw, still-quoted ``/`` and each segment unquoted after, never the other way round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote

from ..errors import InvalidInput
from .paths import safe_relpath
from .validate import check_repo_id, check_revision

Kind = Literal["info", "tree", "resolve"]
# The URL prefixes of repository types (huggingface_hub's REPO_TYPES_URL_PREFIXES).
TYPE_PREFIXES = {"datasets": "dataset", "spaces": "space"}
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
# What may follow a one-segment repo id (huggingface_hub's _REPO_URL_SUBPATHS).
_SUBPATHS = frozenset({"resolve", "tree", "revision", "blob", "raw", "refs", "commit"})
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class HubPath:
    """One request to the Hub's API or resolve URLs, checked: a repo id, revision and file path
    that can name nothing outside the repository's folder."""

    kind: Kind
    repo_type: str
    repo_id: str
    revision: str | None = None
    path: str = ""

    @property
    def type_prefix(self) -> str:
        """``""``, ``"datasets/"`` or ``"spaces/"``: what resolve URLs put before the repo id."""
        return "" if self.repo_type == "model" else f"{self.repo_type}s/"

    def upstream_path(self) -> str:
        """This request's path on a Hub (quoted as huggingface_hub quotes it), from the root."""
        rev = quote(self.revision or "main", safe="")
        if self.kind == "resolve":
            return f"/{self.type_prefix}{self.repo_id}/resolve/{rev}/{quote(self.path)}"
        base = f"/api/{self.repo_type}s/{self.repo_id}"
        if self.kind == "tree":
            return f"{base}/tree/{rev}" + (f"/{quote(self.path)}" if self.path else "")
        return f"{base}/revision/{rev}" if self.revision else base


def split_raw(raw_path: str) -> list[str]:
    """``a/b%2Fc/d`` -> ``["a", "b/c", "d"]``: split first, unquote after."""
    return [unquote(s) for s in raw_path.strip("/").split("/")]


def _split_repo(segments: list[str], markers: frozenset[str]) -> tuple[str, list[str]]:
    """The repo id (one or two segments) and what follows it."""
    if len(segments) >= 2 and segments[1] in markers:
        n = 1
    elif len(segments) >= 2:
        n = 2
    else:
        n = len(segments)
    return check_repo_id("/".join(segments[:n])), segments[n:]


def parse_api_path(segments: list[str]) -> HubPath:
    """``[models|datasets|spaces, REPO..., (revision REV | tree REV [PATH...])]``.

    Raises:
        InvalidInput: a path the Hub API does not have, or a name that could escape.
    """
    if not segments or segments[0] not in API_TYPES:
        raise InvalidInput(f"not a Hub API path: {'/'.join(segments)!r}")
    repo_type = API_TYPES[segments[0]]
    repo_id, tail = _split_repo(segments[1:], _SUBPATHS)
    if not tail:
        return HubPath(kind="info", repo_type=repo_type, repo_id=repo_id)
    if tail[0] == "revision" and len(tail) == 2:
        return HubPath(
            kind="info", repo_type=repo_type, repo_id=repo_id, revision=check_revision(tail[1])
        )
    if tail[0] == "tree" and len(tail) >= 2:
        rest = "/".join(p for p in tail[2:] if p)
        return HubPath(
            kind="tree",
            repo_type=repo_type,
            repo_id=repo_id,
            revision=check_revision(tail[1]),
            path=safe_relpath(rest, where="tree path") if rest else "",
        )
    raise InvalidInput(f"not a Hub API path: {'/'.join(segments)!r}")


def parse_resolve_path(segments: list[str]) -> HubPath:
    """``[datasets|spaces,] REPO..., resolve, REV, PATH...``.

    Raises:
        InvalidInput: not a resolve path, or a name that could escape.
    """
    repo_type = "model"
    if segments and segments[0] in TYPE_PREFIXES:
        repo_type, segments = TYPE_PREFIXES[segments[0]], segments[1:]
    repo_id, tail = _split_repo(segments, frozenset({"resolve"}))
    if len(tail) < 3 or tail[0] != "resolve":
        raise InvalidInput(f"not a resolve path: {'/'.join(segments)!r}")
    return HubPath(
        kind="resolve",
        repo_type=repo_type,
        repo_id=repo_id,
        revision=check_revision(tail[1]),
        path=safe_relpath("/".join(tail[2:]), where="file path"),
    )


def normalize_hub_etag(value: str | None) -> str | None:
    """An ETag as huggingface_hub reads it: without ``W/`` and the quotes."""
    if not value:
        return None
    return value.strip().removeprefix("W/").strip('"') or None


def is_lfs_etag(etag: str) -> bool:
    """A SHA-256 (an LFS file's content hash) rather than a git blob id."""
    return bool(_SHA256.match(etag))


def is_git_etag(etag: str) -> bool:
    return bool(_GIT_SHA1.match(etag))


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def requested_range(value: str | None, size: int) -> tuple[int, int] | Literal["bad"] | None:
    """The one range ``value`` asks for as ``(start, end)`` (end exclusive); None for the whole
    body (no header, several ranges or a malformed one, which servers may ignore: RFC 9110
    14.2); ``"bad"`` for a range that cannot be satisfied (416)."""
    if value is None:
        return None
    match = _RANGE.match(value.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":
        suffix = int(last)
        return (max(0, size - suffix), size) if suffix > 0 and size > 0 else "bad"
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return "bad"
    return start, min(int(last) + 1, size) if last else size


def lfs_pointer_size(sha256: str, size: int) -> int:
    """The length of the git-lfs pointer file of a blob (the tree's ``lfs.pointerSize``)."""
    return len(f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")


__all__ = [
    "API_TYPES",
    "TYPE_PREFIXES",
    "HubPath",
    "is_git_etag",
    "is_lfs_etag",
    "lfs_pointer_size",
    "normalize_hub_etag",
    "parse_api_path",
    "parse_resolve_path",
    "requested_range",
    "split_raw",
]
