"""Chunk digests come with a download's Result only when its configuration asks for them (the
store does; `get` does not, and its hash thread does SHA-256 alone)."""

from __future__ import annotations

from pathlib import Path

import pytest
import xxhash

from helpers import blob, sha
from helpers import download_config as config
from modelhaul.config import MiB
from modelhaul.disk.hashing import CHUNK_BYTES
from modelhaul.engine.downloader import Downloader
from origin import Origin


@pytest.mark.parametrize("chunk_digests", [True, False])
@pytest.mark.parametrize("connections", [1, 4])  # 3 MiB on 1: hashed inline as it arrives
async def test_chunk_digests_are_computed_only_when_asked_for(
    origin: Origin, tmp_path: Path, state_dir: Path, chunk_digests: bool, connections: int
) -> None:
    # On 4 connections, 12 MiB is journaled and hashed by the prefix hasher.
    data = blob(12 * MiB + 5 if connections > 1 else 3 * MiB + 5, seed=21)
    origin.add_file("c.bin", data)
    cfg = config(connections=connections, chunk_digests=chunk_digests)
    async with Downloader(cfg, state_dir=state_dir) as dl:
        result = await dl.download(origin.url("c.bin"), tmp_path / "c.bin")

    assert result.sha256 == sha(data)
    if chunk_digests:
        assert result.chunk_bytes == CHUNK_BYTES
        expected = tuple(
            xxhash.xxh3_128(data[i : i + CHUNK_BYTES]).hexdigest()
            for i in range(0, len(data), CHUNK_BYTES)
        )
        assert result.chunk_xxh3 == expected
    else:
        assert (result.chunk_bytes, result.chunk_xxh3) == (0, ())
