"""``modelhaul doctor``'s findings and settings: the ``Check`` record and ``DoctorConfig``.

The checks themselves live beside this module: ``network`` (proxy, endpoint stages, clock),
``hub`` (token, source), ``filesystem`` (the cache directory), and ``run`` puts them together.
A check is a ``Check`` record: ``ok`` is True, False, or None when it was skipped or could not
tell. Configuration comes in a ``DoctorConfig`` built by the CLI; nothing in the doctor reads the
environment except OpenSSL, which honours SSL_CERT_FILE / SSL_CERT_DIR in the default context as
downloads do.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..remedies import LIBRARY_WORDS, Words
from ..sources.hf import DEFAULT_ENDPOINT

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: ``ok`` True (fine), False (fix it) or None (skipped, or could not tell)."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""
    items: tuple[str, ...] = ()  # what the detail summarises (e.g. partial file paths)

    @property
    def status(self) -> str:
        return {True: "ok", False: "fail", None: "skip"}[self.ok]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "ok": self.ok,
            "detail": self.detail,
            "fix": self.fix,
        }
        if self.items:
            out["items"] = list(self.items)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class DoctorConfig:
    """What to check and the thresholds; the CLI fills it from the environment."""

    cache_root: Path
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = None
    token_origin: str = "HF_TOKEN"  # where the token came from, for the report
    proxies: Mapping[str, str] = field(default_factory=dict)  # urllib.request.getproxies()
    ca_file: str | None = None  # SSL_CERT_FILE, for the report
    cwd: Path | None = None  # also look for partial downloads here (not recursively)
    lock_dir: Path | None = None  # modelhaul's download locks: tells running downloads apart
    timeout_s: float = 5.0
    clock_tolerance_s: float = 300.0
    min_free_bytes: int = GIB
    stale_partial_s: float = 7 * 24 * 3600.0
    clock: Callable[[], float] = time.time
    # How fixes that name a setting are worded: the CLI passes its flags (cli/words.py).
    words: Words = field(default_factory=lambda: LIBRARY_WORDS)

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")


def os_error_text(exc: BaseException | None) -> str:
    if isinstance(exc, TimeoutError) or exc is None:
        return "timed out"
    if isinstance(exc, OSError) and not isinstance(exc, socket.gaierror) and exc.errno:
        return os.strerror(exc.errno)  # asyncio words refusals as "Connect call failed (...)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


__all__ = ["GIB", "Check", "DoctorConfig", "os_error_text"]
