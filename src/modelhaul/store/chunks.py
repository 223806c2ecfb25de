"""Hashing a blob in fixed-size chunks, so a repair refetches only the chunks that went bad.

A verified blob's record (``BlobRecord``) keeps a digest of each ``chunk_bytes`` piece beside
the whole-file hash; ``bad_chunks`` compares a damaged blob against it. Records written now use
xxh3-128 over ``CHUNK_BYTES`` (2 MiB) pieces, computed by the download's own hashing pass
(disk.hashing); records written by earlier versions use SHA-256 over 16 MiB pieces and are
still read. The chunk digests only locate damage: a repaired blob is SHA-256-verified again.
Small (non-LFS) files are named by their git blob id instead, which ``git_blob_sha1`` computes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from ..disk.hashing import CHUNK_ALGO, CHUNK_BYTES, FileDigest

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY_GIT_OID = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
# What records written before chunk digests came from the download's pass use.
LEGACY_CHUNK_ALGO = "sha256"
LEGACY_CHUNK_BYTES = 16 * 1024 * 1024

_CHUNK_HASHES: dict[str, Callable[[], Any]] = {
    CHUNK_ALGO: xxhash.xxh3_128,
    LEGACY_CHUNK_ALGO: hashlib.sha256,
}
CHUNK_ALGOS = frozenset(_CHUNK_HASHES)


@dataclass(frozen=True, slots=True)
class BlobRecord:
    """What a verification established about a blob, valid while size and mtime hold."""

    size: int
    mtime_ns: int
    digest: str  # sha256 or git sha1, whatever the blob is named after
    chunk_bytes: int
    chunks: tuple[str, ...]  # the digest of each chunk (LFS blobs larger than one chunk)
    chunk_algo: str = CHUNK_ALGO  # "xxh3_128", or "sha256" in records of earlier versions


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file, as the Hub reports for small (non-LFS) files."""
    size = path.stat().st_size
    h = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with open(path, "rb", buffering=0) as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def sha256_with_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> tuple[str, tuple[str, ...]]:
    """Whole-file SHA-256 plus the xxh3-128 of each ``chunk_bytes`` piece, in one read."""
    digest = FileDigest(chunk_bytes)
    buf = bytearray(min(chunk_bytes, 4 << 20))
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest(), digest.chunks()


def chunk_digests(path: Path, chunk_bytes: int, algo: str = CHUNK_ALGO) -> tuple[str, ...]:
    """The ``algo`` digest of each ``chunk_bytes`` piece of a file (flat memory).

    Raises:
        ValueError: ``algo`` is none of ``CHUNK_ALGOS``.
    """
    try:
        new = _CHUNK_HASHES[algo]
    except KeyError:
        raise ValueError(f"unknown chunk digest {algo!r}") from None
    out: list[str] = []
    buf = bytearray(min(chunk_bytes, 4 << 20))
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        part = new()
        in_part = 0
        while n := f.readinto(view[: min(len(buf), chunk_bytes - in_part)]):
            part.update(view[:n])
            in_part += n
            if in_part == chunk_bytes:
                out.append(part.hexdigest())
                part = new()
                in_part = 0
        if in_part:
            out.append(part.hexdigest())
    return tuple(out)


def chunk_sha256s(path: Path, chunk_bytes: int) -> tuple[str, ...]:
    """The SHA-256 of each ``chunk_bytes`` piece of a file (the digest of older records)."""
    return chunk_digests(path, chunk_bytes, LEGACY_CHUNK_ALGO)


def bad_chunks(path: Path, rec: BlobRecord) -> list[tuple[int, int]]:
    """Byte ranges of ``path`` whose chunk digest differs from the record (or are missing).

    Raises:
        ValueError: the record's chunk digest is of an unknown kind.
    """
    bad: list[tuple[int, int]] = []
    try:
        size = path.stat().st_size
    except OSError:
        return [(0, rec.size)]
    now = chunk_digests(path, rec.chunk_bytes, rec.chunk_algo)
    for i, want in enumerate(rec.chunks):
        start = i * rec.chunk_bytes
        end = min(rec.size, start + rec.chunk_bytes)
        if i >= len(now) or now[i] != want or end > size:
            if bad and bad[-1][1] == start:
                bad[-1] = (bad[-1][0], end)
            else:
                bad.append((start, end))
    return bad


__all__ = [
    "CHUNK_ALGO",
    "CHUNK_ALGOS",
    "CHUNK_BYTES",
    "EMPTY_GIT_OID",
    "EMPTY_SHA256",
    "LEGACY_CHUNK_ALGO",
    "LEGACY_CHUNK_BYTES",
    "BlobRecord",
    "bad_chunks",
    "chunk_digests",
    "chunk_sha256s",
    "git_blob_sha1",
    "sha256_with_chunks",
]
