"""``modelhaul doctor [SOURCE]``: check the endpoint, token, clock and cache, each with a fix.

Output: a table on a terminal; plain ``ok|FAIL|skip  name: detail`` lines (plus ``  fix: ...``)
otherwise; with ``--json`` one JSON object, ``{"event": "result", "status": ..., "checks": [...]}``.
Exit status 0 when every check is ok or skipped, 1 when any failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import urllib.request
from pathlib import Path

from ..doctor.checks import Check, DoctorConfig
from ..errors import InvalidInput
from ..sources.hf import DEFAULT_ENDPOINT, default_token
from ..store.repo import hf_cache_root
from .options import state_dir
from .words import CLI_WORDS

EXIT_OK, EXIT_FAILED = 0, 1
_LABELS = {True: "ok", False: "FAIL", None: "skip"}
_MARKS = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]–[/]"}


# Parsers are declared whole, a command at a time: alike in shape only (each names its own
# flags and help, the CLI contract), so nothing is shared but add_transfer_options.
def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="check the endpoint, token, clock and cache (and that SOURCE resolves), with fixes",
        description="Check what downloads depend on: the endpoint (DNS, TCP, TLS, proxy), the "
        "token, the clock, and the cache directory (writable, free space, symlinks, file locks, "
        "partial downloads). Exit status 1 if any check fails.",
    )
    p.add_argument(
        "source",
        nargs="?",
        metavar="SOURCE",
        help="also check that this resolves: hf://ORG/NAME[@REV], ORG/NAME or an https:// URL",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="per network step (default 5)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object with every check")
    p.set_defaults(run=run_doctor_command)


def config_from_env(*, timeout_s: float) -> DoctorConfig:
    """The environment, read once here: endpoint, token, cache, proxies, CA bundle."""
    env = os.environ
    return DoctorConfig(
        cache_root=hf_cache_root(env),
        endpoint=(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
        token=default_token(),
        token_origin="HF_TOKEN" if env.get("HF_TOKEN") else "the token file",
        proxies=urllib.request.getproxies(),
        ca_file=env.get("SSL_CERT_FILE"),
        cwd=Path.cwd(),
        lock_dir=state_dir() / "locks",
        timeout_s=timeout_s,
        words=CLI_WORDS,
    )


async def run_doctor_command(args: argparse.Namespace) -> int:
    # The probes bring aiohttp: imported when the doctor runs, not when 'doctor --help' parses.
    from ..doctor.hub import parse_source
    from ..doctor.run import run_doctor

    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise InvalidInput(f"--timeout must be a positive number of seconds, got {args.timeout}")
    source = parse_source(args.source) if args.source else None
    checks = await run_doctor(config_from_env(timeout_s=args.timeout), source)
    failed = any(c.ok is False for c in checks)
    if args.json:
        record = {
            "event": "result",
            "status": "failed" if failed else "completed",
            "checks": [c.to_dict() for c in checks],
        }
        print(json.dumps(record, separators=(",", ":")), flush=True)
    elif sys.stdout.isatty():
        _print_table(checks)
    else:
        for line in plain_lines(checks):
            print(line)
    return EXIT_FAILED if failed else EXIT_OK


def plain_lines(checks: list[Check]) -> list[str]:
    """``ok    name: detail`` per check, and ``  fix: ...`` under those with a fix."""
    lines = []
    for c in checks:
        lines.append(f"{_LABELS[c.ok]:<4}  {c.name}: {c.detail}")
        if c.fix:
            lines.append(f"  fix: {c.fix}")
    return lines


def _print_table(checks: list[Check]) -> None:
    from rich.console import Console  # only for the table: rich is slow to import
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("")
    table.add_column("CHECK", no_wrap=True)
    table.add_column("RESULT", overflow="fold")
    for c in checks:
        result = escape(c.detail)
        if c.fix:
            result += f"\n[yellow]fix:[/] {escape(c.fix)}"
        table.add_row(_MARKS[c.ok], c.name, result)
    console = Console()
    console.print(table)
    failed = sum(c.ok is False for c in checks)
    console.print(
        f"[red]{failed} check{'s' if failed != 1 else ''} failed[/]"
        if failed
        else "[green]all checks passed[/]"
    )
