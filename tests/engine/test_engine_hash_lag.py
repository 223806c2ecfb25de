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
from origin import Origin

HASH_BYTES_PER_S = 24 * MiB  # far below what the local origin delivers
LAG_BYTES = 4 * MiB


async def test_a_slow_hash_holds_the_receives_back(
    origin: Origin, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 48 * MiB
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
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        result = await asyncio.wait_for(
            dl.download(origin.url("lag.bin"), tmp_path / "lag.bin", sha256=sha(data)), 60
        )

    assert result.sha256 == sha(data)
    # Left alone, the 48 MiB arrive in well under a second while the hash does about 24 MiB
    # a second: most of the file would be left. Held back, what is left is the allowed lag
    # plus what each of the 4 connections received after its last look (a receive: <= 4 MiB).
    (left,) = unhashed_at_end
    assert left <= LAG_BYTES + 4 * 4 * MiB, left / MiB
