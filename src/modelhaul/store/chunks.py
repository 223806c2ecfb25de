"""Hashing a blob in fixed-size chunks, so a repair refetches only the chunks that went bad.

A verified blob's record (``BlobRecord``) keeps the SHA-256 of each ``CHUNK_BYTES`` piece beside
the whole-file hash; ``bad_chunks`` compares a damaged blob against it. Small (non-LFS) files are
named by their git blob id instead, which ``git_blob_sha1`` computes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

CHUNK_BYTES = 16 * 1024 * 1024
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY_GIT_OID = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


@dataclass(frozen=True, slots=True)
class BlobRecord:
    """What a verification established about a blob, valid while size and mtime hold."""

    size: int
    mtime_ns: int
    digest: str  # sha256 or git sha1, whatever the blob is named after
    chunk_bytes: int
    chunks: tuple[str, ...]  # sha256 of each chunk (LFS blobs only)


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file, as the Hub reports for small (non-LFS) files."""
    size = path.stat().st_size
    h = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with open(path, "rb", buffering=0) as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def sha256_with_chunks(path: Path, chunk_bytes: int) -> tuple[str, tuple[str, ...]]:
    """Whole-file SHA-256 plus the SHA-256 of each ``chunk_bytes`` piece, in one read."""
    whole = hashlib.sha256()
    chunks: list[str] = []
    buf = bytearray(min(chunk_bytes, 4 << 20))
    view = memoryview(buf)
    part = hashlib.sha256()
    in_part = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            whole.update(view[:n])
            pos = 0
            while pos < n:
                take = min(n - pos, chunk_bytes - in_part)
                part.update(view[pos : pos + take])
                in_part += take
                pos += take
                if in_part == chunk_bytes:
                    chunks.append(part.hexdigest())
                    part = hashlib.sha256()
                    in_part = 0
    if in_part:
        chunks.append(part.hexdigest())
    return whole.hexdigest(), tuple(chunks)


def chunk_sha256s(path: Path, chunk_bytes: int) -> tuple[str, ...]:
    """The SHA-256 of each ``chunk_bytes`` piece of a file."""
    out: list[str] = []
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = 0
            while n < chunk_bytes and (got := f.readinto(view[n:])):
                n += got
            if not n:
                break
            out.append(hashlib.sha256(view[:n]).hexdigest())
    return tuple(out)


def bad_chunks(path: Path, rec: BlobRecord) -> list[tuple[int, int]]:
    """Byte ranges of ``path`` whose chunk hash differs from the record (or are missing)."""
    bad: list[tuple[int, int]] = []
    try:
        size = path.stat().st_size
    except OSError:
        return [(0, rec.size)]
    now = chunk_sha256s(path, rec.chunk_bytes)
    for i, want in enumerate(rec.chunks):
        start = i * rec.chunk_bytes
        end = min(rec.size, start + rec.chunk_bytes)
        if i >= len(now) or now[i] != want or end > size:
            if bad and bad[-1][1] == start:
                bad[-1] = (bad[-1][0], end)
            else:
                bad.append((start, end))
    return bad
