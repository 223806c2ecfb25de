"""Completion records: which targets a finished download produced, so a re-run skips them.

A record is trusted only while the file is untouched (same size and modification time), so a
file that was edited, truncated or replaced since is fetched again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Completed:
    dest: Path
    size: int
    sha256: str
    etag: str | None


class CompletionRecords:
    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def _path(self, url: str, part: Path) -> Path:
        key = hashlib.sha256(f"{url}\0{part}".encode()).hexdigest()[:40]
        return self._folder / f"{key}.json"

    def lookup(self, url: str, part: Path) -> Completed | None:
        try:
            data = json.loads(self._path(url, part).read_bytes())
            dest = Path(data["dest"])
            st = dest.stat()
            if st.st_size != data["size"] or st.st_mtime_ns != data["mtime_ns"]:
                return None
            return Completed(dest, int(data["size"]), str(data["sha256"]), data.get("etag"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def store(
        self, url: str, part: Path, dest: Path, *, size: int, sha256: str, etag: str | None
    ) -> None:
        # A record is an optimisation: failing to write one must not fail the download.
        with contextlib.suppress(OSError):
            st = dest.stat()
            data = {
                "url": url,
                "dest": str(dest),
                "size": size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": sha256,
                "etag": etag,
            }
            path = self._path(url, part)
            # Written in place, in one write: a record torn by a crash, or by two writers at
            # once, does not parse and only costs a fetch (lookup answers None), so no
            # temporary file and rename per finished file. A symlink (O_NOFOLLOW) or a hard
            # link planted at the record's name must not carry this write to another file.
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(path, flags, 0o664)
            except FileNotFoundError:
                # The folder is made on first use only: with many small files, one mkdir.
                self._folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, flags, 0o664)
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                    os.ftruncate(fd, 0)
                    os.write(fd, json.dumps(data).encode())
            finally:
                os.close(fd)
