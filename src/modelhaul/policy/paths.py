"""Relative paths from remote listings (Hub trees, manifests) that must stay inside a folder."""

from __future__ import annotations

from pathlib import PurePosixPath

from ..errors import InvalidInput


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
