"""Content checks: a broken run must never report a great number."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from .common import MiB
from .data import Blob, ManyFile


def listing(d: Path) -> str:
    names = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "(empty)"


def verify_blob(out: Path, name: str, blob: Blob, seed: int) -> str | None:
    """Size must match exactly; content spot-checked against the source (34 x 1 MiB)."""
    p = out / name
    if not p.is_file():
        return f"{name} missing; output dir has: {listing(out)}"
    size = p.stat().st_size
    if size != blob.size:
        return f"{name}: size {size} != {blob.size}"
    r = random.Random(seed)
    chunk = MiB
    offsets = [0, max(0, blob.size - chunk)] + [
        r.randrange(0, max(1, blob.size - chunk)) for _ in range(32)
    ]
    with open(p, "rb") as a, open(blob.path, "rb") as b:
        for off in offsets:
            a.seek(off)
            b.seek(off)
            if a.read(chunk) != b.read(chunk):
                return f"{name}: content differs from source at offset {off}"
    return None


def verify_many(out: Path, files: Sequence[ManyFile]) -> str | None:
    """Every file: exact size and SHA-256 (80 MB, cheap)."""
    for f in files:
        p = out / f.name
        try:
            data = p.read_bytes()
        except OSError:
            return f"{f.name} missing; output dir has: {listing(out)}"
        if len(data) != f.size:
            return f"{f.name}: size {len(data)} != {f.size}"
        if hashlib.sha256(data).hexdigest() != f.sha256:
            return f"{f.name}: SHA-256 mismatch"
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


def verify_files(root: Path, files: Iterable[tuple[str, int, str]]) -> str | None:
    """Every file (relative path, size, SHA-256) under root: exact size and SHA-256."""
    for rel, size, sha in files:
        p = root / rel
        if not p.is_file():
            return f"{rel} missing; {root} has: {listing(root)}"
        if p.stat().st_size != size:
            return f"{rel}: size {p.stat().st_size} != {size}"
        if sha256_file(p) != sha:
            return f"{rel}: SHA-256 mismatch"
    return None
