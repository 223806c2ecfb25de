"""Small helpers shared by the test files (the fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import random


def blob(size: int, seed: int = 0) -> bytes:
    """Incompressible, position-dependent bytes: any misplaced byte changes the digest."""
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
