"""disk.hashing: the SHA-256 and the per-chunk xxh3-128 digests come from one pass over the bytes,
whatever pieces the bytes arrive in (received buffers, blocks read back, a growing file)."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest
import xxhash

from modelhaul.disk.hashing import CHUNK_BYTES, READ_BYTES, FileDigest, PrefixHasher


def xxh3_chunks(data: bytes, chunk: int) -> tuple[str, ...]:
    return tuple(
        xxhash.xxh3_128(data[i : i + chunk]).hexdigest() for i in range(0, len(data), chunk)
    )


def test_chunks_are_a_few_mib() -> None:
    assert 1 << 20 <= CHUNK_BYTES <= 4 << 20


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 5432])
def test_file_digest_in_any_pieces_equals_one_shot_hashes(size: int) -> None:
    chunk = 1000
    data = random.Random(size).randbytes(size)
    digest = FileDigest(chunk)
    pos = 0
    rng = random.Random(7)
    while pos < size:  # pieces that straddle chunk boundaries, and ones that end on them
        n = rng.choice([1, 7, 250, 999, 1000, 2500])
        digest.update(memoryview(data)[pos : pos + n])
        pos += n

    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert digest.chunks() == xxh3_chunks(data, chunk)
    assert digest.chunk_bytes == chunk


def test_file_digest_refuses_a_chunk_size_of_zero() -> None:
    with pytest.raises(ValueError, match="chunk_bytes"):
        FileDigest(0)


async def test_prefix_hasher_gives_the_chunk_digests_of_the_file(tmp_path: Path) -> None:
    data = os.urandom(READ_BYTES + 2 * CHUNK_BYTES + 12345)  # reads, and chunks, straddled
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    hasher = PrefixHasher(fd)
    try:
        hasher.advance(CHUNK_BYTES + 5)  # the prefix grows in steps, as a download's does
        digest = await hasher.digest(len(data))
        chunk_bytes, chunks = hasher.chunks()
    finally:
        await hasher.aclose()
        os.close(fd)

    assert digest == hashlib.sha256(data).hexdigest()
    assert chunk_bytes == CHUNK_BYTES
    assert chunks == xxh3_chunks(data, CHUNK_BYTES)


async def test_prefix_hasher_reports_a_file_shorter_than_promised(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(os.urandom(2 * READ_BYTES + 7))  # several reads, the last one short
    fd = os.open(path, os.O_RDONLY)
    hasher = PrefixHasher(fd)
    try:
        with pytest.raises(OSError, match="end of file"):
            await hasher.digest(path.stat().st_size + 100)
    finally:
        await hasher.aclose()
        os.close(fd)


async def test_files_hashed_one_after_another_do_not_see_each_others_bytes(
    tmp_path: Path,
) -> None:
    """A hash thread reads every file through the same buffer: a short last read of a small
    file must hash only its own bytes, not what a bigger file left behind in the buffer."""
    sizes = [READ_BYTES + 999, 5000, 0, READ_BYTES // 2 + 1]
    for i, size in enumerate(sizes):
        data = random.Random(i).randbytes(size)
        path = tmp_path / f"f{i}"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        hasher = PrefixHasher(fd)
        try:
            digest = await hasher.digest(size)
            _, chunks = hasher.chunks()
        finally:
            await hasher.aclose()
            os.close(fd)
        assert digest == hashlib.sha256(data).hexdigest(), size
        assert chunks == xxh3_chunks(data, CHUNK_BYTES), size


async def test_prefix_hasher_without_chunk_digests_gives_the_sha256_alone(tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 7)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    hasher = PrefixHasher(fd, chunks=False)
    try:
        digest = await hasher.digest(len(data))
        chunks = hasher.chunks()
    finally:
        await hasher.aclose()
        os.close(fd)

    assert digest == hashlib.sha256(data).hexdigest()
    assert chunks == (0, ())
