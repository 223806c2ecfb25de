"""Test data, generated once and cached in ``_work/data``: random blobs and case C's files."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import json
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import DATA, HERE, MANY_COUNT, MANY_MAX, MANY_MIN, MANY_SEED, MiB, log


@dataclass(frozen=True)
class Blob:
    name: str
    size: int
    sha256: str

    @property
    def path(self) -> Path:
        return DATA / "blobs" / self.name


def _random_blocks(size: int, block: int = 16 * MiB) -> Iterator[bytes]:
    """os.urandom in big blocks, two generator threads ahead of the consumer."""
    sizes = iter([min(block, size - off) for off in range(0, size, block)])
    with ThreadPoolExecutor(2) as ex:
        pending = collections.deque(ex.submit(os.urandom, n) for n in itertools.islice(sizes, 4))
        while pending:
            data = pending.popleft().result()
            nxt = next(sizes, None)
            if nxt is not None:
                pending.append(ex.submit(os.urandom, nxt))
            yield data


def ensure_blob(name: str, size: int) -> Blob:
    path = DATA / "blobs" / name
    side = path.with_name(name + ".sha256")
    with contextlib.suppress(OSError, ValueError):
        hexd, n = side.read_text().split()
        if int(n) == size and path.stat().st_size == size:
            return Blob(name, size, hexd)
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"generating {path.relative_to(HERE)} ({size / MiB:.0f} MiB of random bytes)...")
    t0 = time.perf_counter()
    h = hashlib.sha256()
    tmp = path.with_name(name + ".tmp")
    with open(tmp, "wb") as f:
        for block in _random_blocks(size):
            h.update(block)
            f.write(block)
        f.flush()
        os.fsync(f.fileno())  # no writeback of GiBs of dirty pages competing with the runs
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    side.write_text(f"{h.hexdigest()}  {size}\n")
    log(f"  done in {time.perf_counter() - t0:.1f} s")
    return Blob(name, size, h.hexdigest())


@dataclass(frozen=True)
class ManyFile:
    name: str
    size: int
    sha256: str


def many_sizes() -> list[int]:
    r = random.Random(MANY_SEED)
    lo, hi = math.log(MANY_MIN), math.log(MANY_MAX)
    return [round(math.exp(r.uniform(lo, hi))) for _ in range(MANY_COUNT)]


def ensure_many() -> list[ManyFile]:
    d = DATA / "many"
    manifest = d / "MANIFEST.json"
    sizes = many_sizes()
    with contextlib.suppress(OSError, ValueError, KeyError):
        m = json.loads(manifest.read_text())
        files = [ManyFile(**f) for f in m["files"]]
        if (
            m["seed"] == MANY_SEED
            and [f.size for f in files] == sizes
            and all((d / f.name).stat().st_size == f.size for f in files)
        ):
            return files
    log(f"generating {MANY_COUNT} files ({sum(sizes) / 1e6:.1f} MB) in {d.relative_to(HERE)}...")
    d.mkdir(parents=True, exist_ok=True)
    files = []
    for i, n in enumerate(sizes):
        data = os.urandom(n)
        name = f"shard-{i:03d}.bin"
        (d / name).write_bytes(data)
        os.chmod(d / name, 0o644)
        files.append(ManyFile(name, n, hashlib.sha256(data).hexdigest()))
    (d / "SHA256SUMS").write_text("".join(f"{f.sha256}  {f.name}\n" for f in files))
    manifest.write_text(json.dumps({"seed": MANY_SEED, "files": [asdict(f) for f in files]}))
    return files


def warm_cache(paths: Sequence[Path]) -> None:
    """Read the served files once so no tool pays for the first read from disk."""
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(16 * MiB):
                pass
