"""Options shared by commands, and their conversion from loose CLI text to config values."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from ..config import (
    DownloadConfig,
    RateLimit,
    RetryPolicy,
    SegmentPolicy,
    Timeouts,
    default_state_dir,
)
from ..errors import InvalidInput
from ..policy.units import parse_rate, parse_size


# The options every transfer command takes, declared once; a command's own flags stay in
# its register(), alike in shape only.
def add_transfer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-x",
        "--connections",
        type=int,
        metavar="N",
        help="connections per file, 1-64 (default: automatic, up to 32)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=32,
        metavar="N",
        help="upper bound of the automatic connection count (default 32)",
    )
    p.add_argument(
        "--limit-rate",
        metavar="RATE",
        help="cap the total speed, bytes/s with optional K/M/G suffix (1024-based)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=3,
        metavar="N",
        help="consecutive attempts without progress before giving up (default 3)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="drop and resume a connection that delivers nothing for this long; the Hub's "
        "metadata calls get as long (default 30)",
    )
    p.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'Name: value'",
        help="extra request header (repeatable); never sent to another host after a redirect",
    )
    p.add_argument("--json", action="store_true", help="JSON lines on stdout, result line last")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--allow-insecure-redirects",
        action="store_true",
        help="follow https -> http redirects",
    )
    p.add_argument(
        "--insecure", action="store_true", help="do not verify TLS certificates (not advised)"
    )


def parse_headers(values: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for raw in values:
        name, sep, value = raw.partition(":")
        name = name.strip()
        if not sep or not name or any(c in name for c in " \t\r\n") or "\n" in value:
            raise InvalidInput(f"bad header {raw!r}", hint="Write headers as -H 'Name: value'.")
        out.append((name, value.strip()))
    return tuple(out)


def download_config(args: argparse.Namespace) -> DownloadConfig:
    if args.connections is not None and not 1 <= args.connections <= 64:
        raise InvalidInput(f"-x must be between 1 and 64, got {args.connections}")
    if not 1 <= args.max_connections <= 64:
        raise InvalidInput(
            f"--max-connections must be between 1 and 64, got {args.max_connections}"
        )
    if args.retries < 0:
        raise InvalidInput(f"--retries must be >= 0, got {args.retries}")
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        # inf and nan parse as floats but no socket timeout can hold them.
        raise InvalidInput(f"--timeout must be a positive number of seconds, got {args.timeout}")
    # An explicit -x is what the user asked for; the automatic ceiling must not cut it down.
    max_connections = max(args.max_connections, args.connections or 1)
    defaults = SegmentPolicy()
    return DownloadConfig(
        retry=RetryPolicy(retries=args.retries),
        timeouts=Timeouts(stall_s=args.timeout, connect_s=max(args.timeout, 10.0)),
        segments=SegmentPolicy(
            connections=args.connections,
            max_connections=max_connections,
            initial_connections=min(16, max_connections),
            hash_cpu_lag_bytes=lag_bytes("MODELHAUL_HASH_CPU_LAG", defaults.hash_cpu_lag_bytes),
            hash_recv_lag_bytes=lag_bytes("MODELHAUL_HASH_RECV_LAG", defaults.hash_recv_lag_bytes),
            hash_window_bytes=lag_bytes("MODELHAUL_HASH_WINDOW", defaults.hash_window_bytes),
        ),
        rate=RateLimit(rate_bytes_per_s=parse_rate(args.limit_rate)),
        headers=parse_headers(args.header),
        allow_https_downgrade=args.allow_insecure_redirects,
        verify_tls=not args.insecure,
    )


def lag_bytes(name: str, default: int | None) -> int | None:
    """A hash-lag threshold from the environment variable ``name`` ("64M"; "0" or "off":
    never); unset, ``default`` (the library's)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if text.lower() == "off":
        return None
    return parse_size(text, what=name) or None


def state_dir() -> Path:
    """Where modelhaul keeps locks and its own state: the library's rule, read from this
    process's environment."""
    return default_state_dir(os.environ)
