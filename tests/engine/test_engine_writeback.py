"""A large download hands its finished ranges to the disk while it runs: when the last byte is
in, little of the file is still dirty, so the fsync before the rename is short. On tmpfs, which
has no writeback, the same download simply works."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import blob, mounted_tmpfs, sha
from helpers import download_config as config
from modelhaul.config import MiB
from modelhaul.engine.downloader import Downloader
from modelhaul.events import Phase
from origin import Origin
from pagecache import CacheStat, cachestat


async def test_a_large_file_is_mostly_written_back_before_its_last_byte(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    size = 160 * MiB
    data = blob(size, seed=11)
    origin.add_file("big.bin", data)
    dest = tmp_path / "big.bin"
    seen: list[CacheStat] = []

    def on_phase(phase: Phase, _size: int | None) -> None:
        if phase is Phase.VERIFYING:  # every byte is in; hashing and the fsync follow
            assert not dest.exists()  # said before the tail, not after it
            part = next(tmp_path.glob("big.bin*part"))
            fd = os.open(part, os.O_RDONLY)
            try:
                seen.append(cachestat(fd))
            finally:
                os.close(fd)

    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        result = await asyncio.wait_for(
            dl.download(origin.url("big.bin"), dest, sha256=sha(data), on_phase=on_phase), 120
        )
    assert result.sha256 == sha(data)
    assert dest.read_bytes() == data
    (stat,) = seen
    # Left alone, the kernel would hold every byte for 30 s (or until dirty memory is high):
    # all 160 MiB dirty here. Written back every 32 MiB, at most about the last step is.
    assert stat.dirty_bytes < size // 2, stat


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    yield from mounted_tmpfs(tmp_path / "mem", "size=128m")


async def test_a_large_download_to_tmpfs_is_unaffected(
    origin: Origin, tmpfs: Path, state_dir: Path
) -> None:
    data = blob(72 * MiB, seed=12)
    origin.add_file("big.bin", data)
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        result = await asyncio.wait_for(
            dl.download(origin.url("big.bin"), tmpfs / "big.bin", sha256=sha(data)), 120
        )
    assert result.sha256 == sha(data)
    assert (tmpfs / "big.bin").read_bytes() == data
    assert sorted(p.name for p in tmpfs.iterdir()) == ["big.bin"]
