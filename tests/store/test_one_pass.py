"""One pass over every byte (issue 15): a pull records its repair digests from the download's own
hashing pass, never reading the blob again, and a repair refetches one small chunk.

Pulls run in process (ModelPuller with a DownloadManager) from a manifest whose file the
fault-injecting origin serves, so the bytes served are counted. The reading test runs in a
subprocess and reads its ``/proc/self/io``: ``rchar`` counts every byte the process read with a
read call (the blob's re-read for chunk digests did), and not what it hashed through a memory
map or received from a socket.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import xxhash

from helpers import blob, download_config, sha
from modelhaul.manager.downloads import DownloadManager
from modelhaul.sources.manifest import manifest_from_data
from modelhaul.sources.model import ModelSpec
from modelhaul.store.chunks import (
    CHUNK_ALGO,
    CHUNK_BYTES,
    LEGACY_CHUNK_BYTES,
    chunk_sha256s,
)
from modelhaul.store.pull import ModelPuller
from modelhaul.store.repo import RepoStore
from origin import Origin

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
BIG = blob(40_000_000, 15)  # 20 chunks of 2 MiB, the last one short


def spec_for(origin: Origin, files: dict[str, bytes]) -> ModelSpec:
    entries = [
        {"path": name, "size": len(data), "sha256": sha(data), "url": origin.url(name)}
        for name, data in files.items()
    ]
    return manifest_from_data({"name": "acme/model", "files": entries})


def xxh3_chunks(data: bytes, chunk_bytes: int) -> list[str]:
    return [
        xxhash.xxh3_128(data[i : i + chunk_bytes]).hexdigest()
        for i in range(0, len(data), chunk_bytes)
    ]


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


async def pull(root: Path, spec: ModelSpec) -> None:
    async with DownloadManager(download_config=download_config()) as mgr:
        await ModelPuller(root, mgr).pull(spec)


async def repair(root: Path) -> tuple[list[str], int]:
    async with DownloadManager(download_config=download_config()) as mgr:
        report = await ModelPuller(root, mgr).verify("acme/model", None, repair=True)
    assert report.ok, report.to_dict()
    return report.repaired, report.bytes_refetched


@pytest.mark.parametrize("size", [40_000_000, 3 * MiB + 5])  # segmented; small, hashed inline
async def test_a_pull_records_the_chunk_digests_of_the_bytes(
    origin: Origin, tmp_path: Path, size: int
) -> None:
    data = BIG[:size]
    origin.add_file("w.bin", data)
    root = tmp_path / "hub"

    await pull(root, spec_for(origin, {"w.bin": data}))

    rs = RepoStore(root, "acme/model")
    rec = rs.record(sha(data))
    assert rec is not None, "the pull vouches for the blob it verified"
    assert (rec.chunk_algo, rec.chunk_bytes) == (CHUNK_ALGO, CHUNK_BYTES)
    assert list(rec.chunks) == xxh3_chunks(data, CHUNK_BYTES)
    saved = json.loads((rs.meta / "blobs" / f"{sha(data)}.json").read_text())
    assert saved["chunk_algo"] == "xxh3_128"


async def test_repair_of_one_flipped_byte_refetches_one_small_chunk(
    origin: Origin, tmp_path: Path
) -> None:
    origin.add_file("w.bin", BIG)
    root = tmp_path / "hub"
    await pull(root, spec_for(origin, {"w.bin": BIG}))
    blob_path = RepoStore(root, "acme/model").blob_path(sha(BIG))
    flip(blob_path, 17 * MiB + 3)  # inside the ninth 2 MiB chunk
    origin.reset_stats()

    repaired, refetched = await repair(root)

    assert repaired == ["w.bin"]
    served = origin.bytes_served("w.bin")
    assert served <= 4 * MiB, f"{served} bytes fetched to repair one byte"
    assert refetched == served == CHUNK_BYTES
    for start, end in origin.ranges_served("w.bin"):
        assert 16 * MiB <= start < end <= 18 * MiB, (start, end)
    assert blob_path.read_bytes() == BIG


async def test_a_record_of_an_earlier_version_still_finds_and_repairs_its_bad_chunk(
    origin: Origin, tmp_path: Path
) -> None:
    """Records written before this change hold SHA-256 digests of 16 MiB chunks."""
    origin.add_file("w.bin", BIG)
    root = tmp_path / "hub"
    await pull(root, spec_for(origin, {"w.bin": BIG}))
    rs = RepoStore(root, "acme/model")
    blob_path = rs.blob_path(sha(BIG))
    st = blob_path.stat()
    legacy = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "digest": sha(BIG),
        "chunk_bytes": LEGACY_CHUNK_BYTES,
        "chunks": list(chunk_sha256s(blob_path, LEGACY_CHUNK_BYTES)),
    }
    (rs.meta / "blobs" / f"{sha(BIG)}.json").write_text(json.dumps(legacy))
    flip(blob_path, 17 * MiB + 3)  # inside the second 16 MiB chunk
    origin.reset_stats()

    repaired, refetched = await repair(root)

    assert repaired == ["w.bin"]
    assert refetched == origin.bytes_served("w.bin") == LEGACY_CHUNK_BYTES
    assert blob_path.read_bytes() == BIG
    rec = rs.record(sha(BIG))
    assert rec is not None and rec.chunk_algo == CHUNK_ALGO, "the repair writes a new record"
    assert list(rec.chunks) == xxh3_chunks(BIG, CHUNK_BYTES)


# The pull and a plain get of the same bytes, in a fresh process that reads its own counters.
# A small pull and get go first, so that every module either needs is imported (and its
# files read) before anything is counted.
_READS = r"""
import asyncio, json, sys
from pathlib import Path
from modelhaul.manager.downloads import DownloadManager
from modelhaul.sources.manifest import manifest_from_data
from modelhaul.store.pull import ModelPuller


def rchar():
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


async def fetch(out, name, entry):
    # A manager each: one manager would hand the pull the get's file as already complete.
    before = rchar()
    async with DownloadManager() as mgr:
        await mgr.add(entry["url"], out / "get" / name, sha256=entry["sha256"]).wait()
    got = rchar() - before
    spec = manifest_from_data({"name": "acme/" + name, "files": [entry]})
    before = rchar()
    async with DownloadManager() as mgr:
        await ModelPuller(out / "hub", mgr).pull(spec)
    return got, rchar() - before


async def main(out, warm, big):
    await fetch(Path(out), "warm", json.loads(warm))
    got, pulled = await fetch(Path(out), "big", json.loads(big))
    print(json.dumps({"get": got, "pull": pulled}))


asyncio.run(main(*sys.argv[1:]))
"""


def test_a_pull_reads_the_file_no_more_than_a_get_of_it(origin: Origin, tmp_path: Path) -> None:
    warm = blob(3 * CHUNK_BYTES, 16)
    for name, data in (("warm.bin", warm), ("big.bin", BIG)):
        origin.add_file(name, data)
    entries = [
        json.dumps({"path": name, "size": len(data), "sha256": sha(data), "url": origin.url(name)})
        for name, data in (("warm.bin", warm), ("big.bin", BIG))
    ]

    proc = subprocess.run(
        [sys.executable, "-c", _READS, str(tmp_path), *entries],
        capture_output=True,
        text=True,
        timeout=90,
    )

    assert proc.returncode == 0, proc.stderr
    reads = json.loads(proc.stdout.splitlines()[-1])
    assert reads["pull"] <= reads["get"] + len(BIG) // 4, (
        f"the pull read {reads['pull']} bytes, a get of the same file {reads['get']}: "
        "the store read the blob again"
    )
    blob_path = RepoStore(tmp_path / "hub", "acme/big").blob_path(sha(BIG))
    assert blob_path.read_bytes() == BIG
