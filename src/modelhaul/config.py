"""Frozen configuration values, and the one default state directory.

Loose shorthand ("20M") is normalised at the CLI boundary. Each value checks itself in
``__post_init__`` and names the field it refuses.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .policy.backoff import backoff_delay_s

MiB = 1024 * 1024


def default_state_dir(environ: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """Where modelhaul keeps locks, completion records and the service's queue and token.

    ``MODELHAUL_STATE_DIR`` if set, else ``$XDG_CACHE_HOME/modelhaul``, else
    ``~/.cache/modelhaul``. The library and the CLI lock in the same place only if they
    agree, so this is the one rule, and the environment is read here and nowhere deeper:
    the CLI passes ``os.environ`` explicitly; the library calls it with nothing when its
    caller gave no ``state_dir`` (an application that wants no environment read passes one).

    Args:
        environ: the environment to read; None reads ``os.environ``.
        home: the home directory; None is ``Path.home()``.

    >>> default_state_dir({"XDG_CACHE_HOME": "/c"})
    PosixPath('/c/modelhaul')
    """
    env = os.environ if environ is None else environ
    explicit = env.get("MODELHAUL_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else (home or Path.home()) / ".cache"
    return base / "modelhaul"


def default_netrc_path(environ: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """The netrc file whose logins requests without an Authorization header of their own
    carry: ``$NETRC`` if set, else ``~/.netrc`` (as curl and requests read it).

    The environment is read here, not in ``http/``, which is handed the path.

    >>> default_netrc_path({"NETRC": "/etc/netrc"})
    PosixPath('/etc/netrc')
    """
    env = os.environ if environ is None else environ
    explicit = env.get("NETRC")
    # expanduser, not Path.home(): with no home directory it answers "~", which holds no
    # netrc, instead of raising (a netrc is optional).
    return Path(explicit) if explicit else (home or Path(os.path.expanduser("~"))) / ".netrc"


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How long to keep trying.

    ``retries`` counts consecutive attempts that gained no byte; an attempt that made progress
    resets the count, so a long download on a flaky line still completes.
    """

    retries: int = 3
    initial_delay_s: float = 1.0
    factor: float = 2.0
    max_delay_s: float = 60.0
    max_restarts: int = 3  # clean restarts because the remote file changed

    def __post_init__(self) -> None:
        _positive("retries", self.retries, allow_zero=True)
        _positive("initial_delay_s", self.initial_delay_s, allow_zero=True)
        if not math.isfinite(self.factor) or self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor!r}")
        _positive("max_delay_s", self.max_delay_s, allow_zero=True)
        _positive("max_restarts", self.max_restarts, allow_zero=True)

    def delay_s(self, attempt: int) -> float:
        return backoff_delay_s(
            attempt, initial_s=self.initial_delay_s, factor=self.factor, max_s=self.max_delay_s
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """``stall_s``: a connection that delivers no byte for this long is dropped and resumed."""

    connect_s: float = 30.0
    stall_s: float = 30.0

    def __post_init__(self) -> None:
        _positive("connect_s", self.connect_s)
        _positive("stall_s", self.stall_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentPolicy:
    """How one file is split over connections.

    ``connections=None`` is automatic: one connection for files under ``min_split_bytes``;
    otherwise start with ``initial_connections`` and add more while the aggregate speed still
    grows, up to ``max_connections``.
    """

    connections: int | None = None
    initial_connections: int = 4
    max_connections: int = 32
    min_split_bytes: int = 16 * MiB
    chunk_bytes: int | None = None  # None: derived from the file size
    min_steal_bytes: int = 2 * MiB
    write_batch_bytes: int = 1 * MiB
    read_buffer_bytes: int = 2 * MiB
    # Blocks of bodies read by blocking receives, summed over all connections of a file
    # (where the bytes are spliced through pipes instead, none are held).
    recv_budget_bytes: int = 48 * MiB
    journal_every_bytes: int = 8 * MiB
    journal_every_s: float = 1.0
    # While the SHA-256 trails the completed prefix by more than this, fewer receives run at
    # once (engine.hashlag). None: never.
    hash_recv_lag_bytes: int | None = 32 * MiB
    # Past this lag the receive threads leave the hash one CPU (2-4 CPUs; engine.cpus). Off by
    # default: on the shared VM it did not shorten the tail (the kernel's balancer moves other
    # tasks onto the CPU left free). None: never.
    hash_cpu_lag_bytes: int | None = None
    # While the hash runs and trails the completed prefix by more than this, a receive that
    # would start more than this far past the hashed bytes waits for it (the one continuing
    # the prefix never does; engine.hashlag). None: never.
    hash_window_bytes: int | None = 128 * MiB

    def __post_init__(self) -> None:
        if self.connections is not None and not 1 <= self.connections <= 64:
            raise ValueError(f"connections must be 1..64, got {self.connections!r}")
        if not 1 <= self.initial_connections <= 64:
            raise ValueError("initial_connections must be 1..64")
        if not 1 <= self.max_connections <= 64:
            raise ValueError("max_connections must be 1..64")
        for name in (
            "min_split_bytes",
            "min_steal_bytes",
            "write_batch_bytes",
            "read_buffer_bytes",
            "recv_budget_bytes",
            "journal_every_bytes",
        ):
            _positive(name, getattr(self, name))
        _positive("journal_every_s", self.journal_every_s, allow_zero=True)
        if self.chunk_bytes is not None:
            _positive("chunk_bytes", self.chunk_bytes)
        for name in ("hash_cpu_lag_bytes", "hash_recv_lag_bytes", "hash_window_bytes"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))

    def recv_block_for(self, connections: int, live_bytes: int = 0, live: int = 0) -> int:
        """Block size for the next blocking receive of a file with ``connections`` connections
        while ``live`` others hold ``live_bytes`` of blocks.

        4 MiB costs 0.1-0.15 CPU-s/GiB less than 1 MiB (fewer hand-offs, wake-ups and lock
        turns). What is left of the budget is shared among the connections still to come,
        down to ``write_batch_bytes`` each, so memory does not grow with the connection count.
        """
        left = max(0, self.recv_budget_bytes - live_bytes)
        share = left // max(1, connections - live)
        return max(self.write_batch_bytes, min(4 * MiB, share - share % MiB))

    def chunk_for(self, size: int, connections: int) -> int:
        """Request size for in-order chunks: small enough that the hashed prefix follows closely."""
        if self.chunk_bytes is not None:
            return self.chunk_bytes
        chunk = size // max(1, 4 * connections)
        return max(4 * MiB, min(64 * MiB, chunk - chunk % MiB))


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """A bandwidth cap in bytes per second; None means unlimited."""

    rate_bytes_per_s: int | None = None

    def __post_init__(self) -> None:
        if self.rate_bytes_per_s is not None:
            _positive("rate_bytes_per_s", self.rate_bytes_per_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class DownloadConfig:
    """Everything a Downloader needs, bundled."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeouts: Timeouts = field(default_factory=Timeouts)
    segments: SegmentPolicy = field(default_factory=SegmentPolicy)
    rate: RateLimit = field(default_factory=RateLimit)
    headers: tuple[tuple[str, str], ...] = ()
    user_agent: str = "modelhaul/0.1"
    verify_tls: bool = True
    trust_env: bool = True  # HTTPS_PROXY / NO_PROXY / SSL_CERT_FILE
    allow_https_downgrade: bool = False
    max_redirects: int = 10
    check_disk_space: bool = True
    # The xxh3-128 of each 2 MiB chunk, from the hash's pass (Result.chunk_xxh3), for a store
    # that repairs by chunk; a download that keeps no such record saves about 0.08 CPU-s/GiB
    # (measured: 0.3 per 4 GiB) on the hash thread, the one a large download's end waits for.
    chunk_digests: bool = True

    def __post_init__(self) -> None:
        _positive("max_redirects", self.max_redirects, allow_zero=True)
        if not self.user_agent or any(c in self.user_agent for c in "\r\n"):
            raise ValueError(f"user_agent must be one non-empty line, got {self.user_agent!r}")
        for pair in self.headers:
            if len(pair) != 2 or not all(isinstance(part, str) for part in pair):
                raise ValueError(f"headers must be (name, value) string pairs, got {pair!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagerConfig:
    """Limits of a DownloadManager.

    ``max_active_files`` bounds large files (and files of unknown size) in flight; small files
    (known to be under ``small_file_bytes``) may run alongside, up to ``max_small_files``
    in all, because for them the round trip, not the bandwidth, is the cost. Set
    ``adaptive=False`` to make ``max_active_files`` a hard count of every file (``-j N``).
    """

    max_active_files: int = 4
    max_small_files: int = 32
    small_file_bytes: int = 16 * MiB
    adaptive: bool = True
    max_connections_per_host: int = 16
    max_connections: int = 64
    rate_bytes_per_s: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "max_active_files",
            "max_small_files",
            "max_connections_per_host",
            "max_connections",
            "small_file_bytes",
        ):
            _positive(name, getattr(self, name))
        if self.rate_bytes_per_s is not None:
            _positive("rate_bytes_per_s", self.rate_bytes_per_s)
