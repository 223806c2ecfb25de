"""The crash-safe record of what a partial file already holds.

The journal sits beside the partial file as JSON, replaced atomically (write a temp file, then
``os.replace``), so a ``kill -9`` at any instant leaves either the old or the new record. Ranges
are recorded only after their bytes were written, so the journal never claims data the partial
file lacks; at worst it forgets the last second of progress.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..policy.ranges import RangeSet

VERSION = 1


@dataclass(slots=True)
class JournalState:
    url: str
    size: int | None
    etag: str | None = None
    last_modified: str | None = None
    sha256: str | None = None  # the expected digest, when the caller gave one
    done: RangeSet = field(default_factory=RangeSet)

    def validator(self) -> str | None:
        """What to send in If-Range: a strong ETag, else Last-Modified."""
        from ..policy.headers import is_strong_etag

        if is_strong_etag(self.etag):
            return self.etag
        return self.last_modified

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "url": self.url,
            "size": self.size,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "sha256": self.sha256,
            "done": self.done.to_list(),
        }

    @classmethod
    def from_json(cls, data: Any) -> JournalState | None:
        """Parse a journal; None for anything malformed (a bad journal just means no resume)."""
        try:
            if data.get("version") != VERSION:
                return None
            size = data["size"]
            if size is not None and (not isinstance(size, int) or size < 0):
                return None
            done = RangeSet()
            for start, end in data["done"]:
                if not (isinstance(start, int) and isinstance(end, int)) or start > end:
                    return None
                if size is not None and end > size:
                    return None
                done.add(start, end)
            strings = {k: data.get(k) for k in ("etag", "last_modified", "sha256")}
            if not isinstance(data["url"], str) or any(
                v is not None and not isinstance(v, str) for v in strings.values()
            ):
                return None
            return cls(url=data["url"], size=size, done=done, **strings)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None


class Journal:
    """Load and save one partial file's journal."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def _tmp(self) -> Path:
        # Made when used: most journals (every small file's) are never written.
        return self.path.with_name(self.path.name + ".tmp")

    def load(self) -> JournalState | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            return None
        try:
            return JournalState.from_json(json.loads(raw))
        except (ValueError, UnicodeDecodeError):
            return None

    def save(self, state: JournalState) -> None:
        self.write(self.encode(state))

    @staticmethod
    def encode(state: JournalState) -> bytes:
        """The journal's bytes for ``state``, a snapshot a later :meth:`write` can take to
        another thread while ``state`` goes on changing."""
        return json.dumps(state.to_json(), separators=(",", ":")).encode()

    def write(self, data: bytes) -> None:
        """Replace the journal with ``data`` (from :meth:`encode`)."""
        try:
            self._replace(data)
        except OSError as exc:
            self._tmp.unlink(missing_ok=True)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self.path.is_file():
                raise
            # A full disk has no block for a new file, but the old journal has one. Without
            # this the journal stays at its last save and the bytes written since are lost
            # to the resume, though they are on disk.
            self._overwrite(data)

    def _replace(self, data: bytes) -> None:
        # O_EXCL-free temp name is fine: the caller holds the file lock for this target.
        # 0o664, as the partial file: with the user's umask, and never world-writable even
        # under umask 000 (anyone could otherwise make a resume skip bytes it never fetched).
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o664)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)

    def _overwrite(self, data: bytes) -> None:
        """Rewrite the journal in place: one small write, then cut off the old tail.

        Not atomic against a power cut, but a killed process does not tear a write this small,
        and a journal left with the old tail fails to parse, which only costs the resume.
        """
        fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            if os.pwrite(fd, data, 0) != len(data):
                raise OSError(errno.ENOSPC, "short write to the journal")
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def remove(self) -> None:
        for p in (self.path, self._tmp):
            p.unlink(missing_ok=True)
