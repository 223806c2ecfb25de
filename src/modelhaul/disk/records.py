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
            data = json.loads(_read_small(self._path(url, part)))
            dest = Path(data["dest"])
            st = os.stat(data["dest"])
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
                    payload = json.dumps(data).encode()
                    os.write(fd, payload)
                    # Cut only a longer old record's tail: truncating blocks for a journal
                    # commit on ext4 (0.5 ms, on the loop), and a re-run's record of the same
                    # file is as long as the last one.
                    if st.st_size > len(payload):
                        os.ftruncate(fd, len(payload))
            finally:
                os.close(fd)


def _read_small(path: Path) -> bytes:
    """A record's bytes in one read (Path.read_bytes costs five more system calls)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, _RECORD_MAX_BYTES)
    finally:
        os.close(fd)


# Far more than a record holds (a URL and a path are the long parts): one read takes it all,
# and a longer file is not one of ours and does not parse.
_RECORD_MAX_BYTES = 64 * 1024
