"""Small helpers shared by the test files (the fixtures live in conftest.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from modelhaul.config import DownloadConfig, RateLimit, RetryPolicy, SegmentPolicy, Timeouts

KiB = 1024

# The policies inside a DownloadConfig, by the DownloadConfig field that holds each.
_POLICIES: dict[str, type[Any]] = {
    "retry": RetryPolicy,
    "timeouts": Timeouts,
    "segments": SegmentPolicy,
    "rate": RateLimit,
}
_POLICY_OF_FIELD = {
    f.name: holder for holder, cls in _POLICIES.items() for f in dataclasses.fields(cls)
}
assert len(_POLICY_OF_FIELD) == sum(len(dataclasses.fields(c)) for c in _POLICIES.values()), (
    "a field name in two policies: route it explicitly"
)
# Retries back off 10-50 ms, not seconds; a connect to 127.0.0.1 that hangs fails in 5 s.
_TEST_DEFAULTS: dict[str, dict[str, Any]] = {
    "retry": {"retries": 3, "initial_delay_s": 0.01, "max_delay_s": 0.05},
    "timeouts": {"connect_s": 5.0},
}
# Small read buffers and write batches, so that progress (and the bandwidth limiter) moves in
# small steps a test can measure.
SMALL_STEPS: dict[str, Any] = {"read_buffer_bytes": 64 * KiB, "write_batch_bytes": 64 * KiB}


def blob(size: int, seed: int = 0) -> bytes:
    """Incompressible, position-dependent bytes: any misplaced byte changes the digest."""
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_config(**overrides: Any) -> DownloadConfig:
    """A ``DownloadConfig`` for tests: fast retries and a 5 s connect timeout.

    Each keyword names a field of ``DownloadConfig`` or of one of its policies, and goes where
    that field lives: ``connections=4`` to ``SegmentPolicy``, ``retries=0`` to ``RetryPolicy``,
    ``stall_s=0.5`` to ``Timeouts``, ``rate_bytes_per_s=...`` to ``RateLimit``,
    ``verify_tls=False`` to ``DownloadConfig`` itself. A policy may also be given whole, as
    the policy or as a dict of its fields: ``segments={"connections": 2}``.

    >>> download_config(connections=2, stall_s=0.5).segments.connections
    2
    """
    fields: dict[str, dict[str, Any]] = {holder: dict(d) for holder, d in _TEST_DEFAULTS.items()}
    top: dict[str, Any] = {}
    for name, value in overrides.items():
        if name in _POLICIES and isinstance(value, Mapping):
            fields.setdefault(name, {}).update(value)
        elif name in _POLICY_OF_FIELD:
            fields.setdefault(_POLICY_OF_FIELD[name], {})[name] = value
        else:
            top[name] = value  # a DownloadConfig field (or a whole policy): it checks the name
    for holder, values in fields.items():
        if holder in top:
            raise TypeError(f"{holder}= given whole and field by field: {sorted(values)}")
        top[holder] = _POLICIES[holder](**values)
    return DownloadConfig(**top)


def small_steps_config(**overrides: Any) -> DownloadConfig:
    """``download_config`` with ``SMALL_STEPS`` (64 KiB reads and write batches) unless
    overridden: for tests that watch progress or the bandwidth limiter move."""
    return download_config(**{**SMALL_STEPS, **overrides})


def to_toml(data: dict[str, Any]) -> str:
    """Just enough TOML for manifests: scalars, arrays, and ``[[files]]`` tables."""
    lines: list[str] = []
    tables: list[dict[str, Any]] = []
    for key, value in data.items():
        if key == "files" and value and all(isinstance(e, dict) for e in value):
            tables = value
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    for entry in tables:
        lines.append("[[files]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in entry.items())
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if value is None:
        raise ValueError("TOML has no null")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def mounted_tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``path`` (made here) for a fixture to yield: a real full or
    read-only disk, since tests run as root, where chmod stops nothing. Skips the test where
    mounting is not allowed; unmounts afterwards."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
