"""``modelhaul queue | pause | resume | cancel | priority | limit``: commands that talk to a
running ``modelhaul serve`` over its REST API (through ``client/``), and the options and error
report they share with ``get``/``pull --via-server`` (``via_server.py``).

The address comes from ``--server``, else ``MODELHAUL_SERVER``, else the default
http://127.0.0.1:8765. The token from ``--token``, else ``MODELHAUL_TOKEN``, else, for a
service on loopback only, the token file in this machine's state directory. Only the standard
library speaks HTTP here, so these commands need no extra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlsplit

from ..client.service import DEFAULT_SERVER, FINAL_STATES, ServiceClient, ServiceUnreachable
from ..errors import InvalidInput, ModelhaulError, human_bytes
from ..policy.units import parse_rate
from .options import state_dir
from .render import print_error
from .words import cli_hint

_NO_LIMIT = frozenset({"none", "off", "unlimited", "0"})


# ---------------------------------------------------------------------- options


def add_server_options(p: argparse.ArgumentParser) -> None:
    """Add ``--server`` and ``--token``, the service's address and access token."""
    p.add_argument(
        "--server",
        metavar="URL",
        help=f"the service's address (default: MODELHAUL_SERVER, else {DEFAULT_SERVER})",
    )
    p.add_argument(
        "--token", metavar="TOKEN", help="the service's access token (default: MODELHAUL_TOKEN)"
    )


def client_from_args(args: argparse.Namespace) -> ServiceClient:
    """The client for the service the options (or the environment) name."""
    base = getattr(args, "server", None) or os.environ.get("MODELHAUL_SERVER") or DEFAULT_SERVER
    base = base.strip().rstrip("/")
    try:
        parts = urlsplit(base)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # a bad port raises ValueError
    except ValueError:
        usable = False
    if not usable:
        raise InvalidInput(
            f"bad service address {base!r}", hint="Use http://HOST:PORT, e.g. " + DEFAULT_SERVER
        )
    token = getattr(args, "token", None) or os.environ.get("MODELHAUL_TOKEN") or None
    if token is None and _is_loopback_url(base):
        # The token file is this machine's; never send it to a service elsewhere.
        from ..server.security import read_token, token_path

        with contextlib.suppress(ModelhaulError):
            token = read_token(token_path(state_dir()))
    return ServiceClient(base, token)


def _is_loopback_url(url: str) -> bool:
    from ..server.security import is_loopback_host

    return is_loopback_host(urlsplit(url).hostname or "")


# ---------------------------------------------------------------------- commands


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command(
        sub,
        "queue",
        "list the downloads of a running service",
        "List the downloads of a running service (modelhaul serve): state, progress, speed, "
        "time left, priority.",
        json_help="one JSON array",
        run=run_queue,
    )
    for name, verb in (
        ("pause", "pause downloads of a running service (partial data kept)"),
        ("resume", "resume paused (or retry failed) downloads of a running service"),
        ("cancel", "cancel downloads of a running service (partial data deleted)"),
    ):
        p = command(
            sub,
            name,
            verb,
            verb[0].upper() + verb[1:] + ".",
            json_help="JSON lines, one per download",
            run=run_action,
            action=name,
        )
        p.add_argument(
            "ids", nargs="+", metavar="ID", help="download IDs, as 'modelhaul queue' shows"
        )
    p = command(
        sub,
        "priority",
        "change a download's priority (higher runs first)",
        "Change the priority of a download of a running service; higher priorities run first.",
        json_help="the download as one JSON object",
        run=run_priority,
    )
    p.add_argument("id", metavar="ID", help="the download's ID, as 'modelhaul queue' shows")
    p.add_argument(
        "priority", type=int, metavar="N", help="the new priority, -1000 to 1000 (new downloads: 0)"
    )
    p = command(
        sub,
        "limit",
        "show or set a running service's global speed limit",
        "Show the speed limit of a running service, shared by all its downloads, or set it "
        "with RATE.",
        json_help='one JSON object, {"rate_bytes_per_s": N or null}',
        run=run_limit,
    )
    p.add_argument(
        "rate", nargs="?", metavar="RATE", help="e.g. 20M (bytes/s, 1024-based); 0 or none: off"
    )


def command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str,
    *,
    json_help: str,
    run: Callable[[argparse.Namespace], Awaitable[int]],
    **defaults: Any,
) -> argparse.ArgumentParser:
    """A command that talks to a running service: ``--json`` and the server options come with
    it; the caller adds its own arguments (the help lists positionals apart, so order is free)."""
    p = sub.add_parser(name, help=summary, description=description)
    p.add_argument("--json", action="store_true", help=json_help)
    add_server_options(p)
    p.set_defaults(run=run, **defaults)
    return p


def report_failure(exc: ModelhaulError) -> int:
    """What went wrong talking to the service: one line and the hint, exit status 1.

    Not print_error: its download-failure guidance (endpoint, proxy, HF_TOKEN) would send
    someone whose service is simply not running down the wrong path.
    """
    print(f"modelhaul: error: {exc.message}", file=sys.stderr)
    hint = cli_hint(exc)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)
    return 1


def _service_errors(
    fn: Callable[[argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], Awaitable[int]]:
    @functools.wraps(fn)
    async def run(args: argparse.Namespace) -> int:
        try:
            return await fn(args)
        except InvalidInput:
            raise  # a usage error: the CLI's own report, exit status 2
        except ModelhaulError as exc:
            return report_failure(exc)

    return run


async def call(client: ServiceClient, method: str, path: str, body: Any = None) -> Any:
    """``client.call`` in a thread, so the loop (and Ctrl-C) stays responsive."""
    return await asyncio.to_thread(client.call, method, path, body)


def _id_path(download_id: str) -> str:
    return quote(download_id, safe="")


@_service_errors
async def run_queue(args: argparse.Namespace) -> int:
    client = client_from_args(args)
    data = await call(client, "GET", "/api/downloads")
    downloads = data.get("downloads", []) if isinstance(data, dict) else []
    if args.json:
        print(json.dumps(downloads))
        return 0
    from rich.console import Console  # only for the table: rich is slow to import
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    if not downloads:
        console.print(f"Nothing queued at {client.base_url}.")
        return 0
    table = Table(box=None, header_style="bold")
    for col in ("ID", "STATE", "PROGRESS", "SPEED", "ETA", "PRI", "NAME"):
        table.add_column(col, justify="right" if col in ("ID", "SPEED", "ETA", "PRI") else "left")
    for d in downloads:
        table.add_row(
            str(d["id"]),
            str(d["state"]),
            _progress_text(d),
            f"{human_bytes(d['speed'])}/s" if d.get("speed") else "",
            f"{d['eta']:.0f}s" if d.get("eta") is not None else "",
            str(d["priority"]),
            str(d["name"]),
            style="dim" if d["state"] in FINAL_STATES else None,
        )
    console.print(table)
    return 0


def _progress_text(d: dict[str, Any]) -> str:
    done, total = d.get("bytes_done") or 0, d.get("total")
    if total:
        return f"{100 * done / total:5.1f}% {human_bytes(done)}/{human_bytes(total)}"
    return human_bytes(done)


def _say(args: argparse.Namespace, verb: str, d: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(d))
    else:
        print(f"{verb} {d['id']}: {d['name']} ({d['state']})")


@_service_errors
async def run_action(args: argparse.Namespace) -> int:
    client = client_from_args(args)
    past = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[args.action]
    failed = 0
    for download_id in args.ids:
        try:
            d = await call(client, "POST", f"/api/downloads/{_id_path(download_id)}/{args.action}")
        except ServiceUnreachable:
            raise
        except ModelhaulError as exc:
            if len(args.ids) == 1:
                raise
            print_error(exc, what=download_id)
            failed += 1
            continue
        _say(args, past, d)
    return 1 if failed else 0


@_service_errors
async def run_priority(args: argparse.Namespace) -> int:
    client = client_from_args(args)
    d = await call(
        client,
        "PUT",
        f"/api/downloads/{_id_path(args.id)}/priority",
        {"priority": args.priority},
    )
    _say(args, f"priority {d['priority']} for", d)
    return 0


@_service_errors
async def run_limit(args: argparse.Namespace) -> int:
    client = client_from_args(args)
    if args.rate is None:
        data = await call(client, "GET", "/api/limit")
    else:
        text = args.rate.strip().lower()
        rate = None if text in _NO_LIMIT else parse_rate(text)
        data = await call(client, "PUT", "/api/limit", {"rate": rate})
    rate = data.get("rate_bytes_per_s") if isinstance(data, dict) else None
    if args.json:
        print(json.dumps({"rate_bytes_per_s": rate}))
    else:
        print(f"limit: {f'{human_bytes(rate)}/s' if rate else 'unlimited'}")
    return 0
