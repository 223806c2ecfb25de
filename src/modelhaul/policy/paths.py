"""Path arithmetic, no I/O: where a download's file, partial data and journal go, and the
relative paths from remote listings (Hub trees, manifests) that must stay inside a folder."""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import InvalidInput
from .headers import filename_from_url, sanitize_filename

PART_SUFFIX = ".modelhaul.part"
JOURNAL_SUFFIX = ".modelhaul.journal"


@functools.lru_cache(maxsize=1024)
def part_paths(dest: Path) -> tuple[Path, Path]:
    """Where the partial file and its journal live for a target path (remembered: the CLI,
    the manager and the engine each ask for every file of a list)."""
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
    """Where a download's file, partial data and journal go, decided before any request.

    Relative paths are made absolute against the current directory (the one thing read).
    """
    if dest is not None:
        # An absolute Path (what the list reader, the manager and the engine pass on to each
        # other) is kept as it is: building it again costs more than the rest of this.
        target = dest if isinstance(dest, Path) and dest.is_absolute() else Path(dest).absolute()
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


def safe_relpath(path: object, *, where: str = "file entry") -> str:
    """Validate a remote-provided relative path; raise InvalidInput if it could escape.

    Refused: non-strings, empty names, absolute paths, ``..`` components, backslashes, NUL and
    other control characters, and Windows drive prefixes.
    """
    if not isinstance(path, str) or not path:
        raise InvalidInput(f"{where}: path must be a non-empty string, got {path!r}")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in path):
        raise InvalidInput(f"{where}: path {path!r} contains control characters")
    if "\\" in path:
        raise InvalidInput(f"{where}: path {path!r} contains a backslash")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise InvalidInput(f"{where}: path {path!r} is absolute")
    parts = PurePosixPath(path).parts
    if any(p in ("..", ".") for p in path.split("/")) or not parts:
        raise InvalidInput(f"{where}: path {path!r} escapes the model folder")
    if any(len(p.encode("utf-8")) > 255 for p in parts) or len(path) > 4096:
        raise InvalidInput(f"{where}: path {path!r} is too long")
    return "/".join(parts)
