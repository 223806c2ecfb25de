"""On a link faster than the SHA-256, the receives wait for the prefix hash, so the end of a
download waits for a little hashing, not for most of the file."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from helpers import blob, sha
from helpers import download_config as config
from modelhaul.config import MiB
from modelhaul.disk.files import Buffer
from modelhaul.disk.hashing import FileDigest, PrefixHasher
from modelhaul.engine.downloader import Downloader
from modelhaul.engine.workers import end_chunk_bytes
from origin import Origin

HASH_BYTES_PER_S = 48 * MiB  # far below what the local origin delivers
LAG_BYTES = 4 * MiB


async def test_a_slow_hash_holds_the_receives_back(
    origin: Origin, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 96 * MiB
    data = blob(size, seed=31)
    origin.add_file("lag.bin", data)
    update = FileDigest.update

    def slow_update(self: FileDigest, piece: Buffer) -> None:
        time.sleep(memoryview(piece).nbytes / HASH_BYTES_PER_S)  # in the hash thread
        update(self, piece)

    unhashed_at_end: list[int] = []
    digest = PrefixHasher.digest

    async def noted_digest(self: PrefixHasher, n: int) -> str:
        unhashed_at_end.append(n - self.hashed_bytes)  # every byte is in when this is asked
        return await digest(self, n)

    monkeypatch.setattr(FileDigest, "update", slow_update)
    monkeypatch.setattr(PrefixHasher, "digest", noted_digest)
    monkeypatch.setattr("modelhaul.engine.streams._HASH_LAG_BYTES", LAG_BYTES)
    # The hash reports its progress every span: 1 MiB, so that what is left is read exactly.
    monkeypatch.setattr("modelhaul.disk.hashing._SPAN_BYTES", 1 * MiB)
    async with Downloader(config(connections=4, chunk_bytes=4 * MiB), state_dir=state_dir) as dl:
        result = await asyncio.wait_for(
            dl.download(origin.url("lag.bin"), tmp_path / "lag.bin", sha256=sha(data)), 60
        )

    assert result.sha256 == sha(data)
    # Left alone, the 96 MiB arrive in well under a second while the hash does 48 MiB a
    # second: nearly all of the file is left (measured: 93 MiB). Held back, the allowed lag,
    # the receives after the last looks and the chunks completed beyond the prefix (measured:
    # 20-59 MiB on the loaded 2-core VM).
    (left,) = unhashed_at_end
    assert left <= 2 * size // 3, left / MiB


def test_the_last_chunks_of_a_file_with_much_in_flight_get_smaller() -> None:
    # 16 connections x 64 MiB: 1 GiB in flight, half of it left to hash after the last byte.
    assert end_chunk_bytes(64 * MiB, 3 * 1024 * MiB, 16) == 64 * MiB  # far from the end
    assert end_chunk_bytes(64 * MiB, 512 * MiB, 16) == 32 * MiB  # each its share of the rest
    assert end_chunk_bytes(64 * MiB, 100 * MiB, 16) == 6 * MiB  # whole MiB
    assert end_chunk_bytes(64 * MiB, 8 * MiB, 16) == 4 * MiB  # never below 4 MiB
    # Little in flight (few connections, or small chunks): the chunk stays as it is.
    assert end_chunk_bytes(64 * MiB, 8 * MiB, 4) == 64 * MiB
    assert end_chunk_bytes(8 * MiB, 8 * MiB, 32) == 8 * MiB
