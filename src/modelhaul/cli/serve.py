"""``modelhaul serve``: run the download service (REST API, live events, web page).

FastAPI and uvicorn are imported only when the command runs, so the rest of the CLI works
without the ``server`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ManagerConfig
from ..errors import InvalidInput, ModelhaulError
from ..policy.units import parse_rate
from ..policy.urls import check_url
from ..sources.hf import DEFAULT_ENDPOINT, default_token
from ..store.inventory import default_db_path
from ..store.repo import hf_cache_root
from .options import state_dir

if TYPE_CHECKING:
    from ..server.config import ServiceConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the download service: REST API, live events and a web page",
        description="One process that owns the download queue and the model store. Bound to "
        "loopback by default; bound elsewhere, every call needs the access token.",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any)"
    )
    p.add_argument(
        "-d",
        "--download-dir",
        metavar="DIR",
        help="where URL downloads go (default: MODELHAUL_DOWNLOAD_DIR, else the current directory)",
    )
    p.add_argument(
        "--require-token",
        action="store_true",
        help="demand the access token even on loopback (always demanded elsewhere)",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a further Host name to answer to on loopback (e.g. behind a reverse proxy)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a further web origin allowed to drive the service, e.g. https://example.org",
    )
    p.add_argument(
        "-j", "--jobs", type=int, metavar="N", help="files in flight (default: adaptive)"
    )
    p.add_argument(
        "--limit-rate",
        metavar="RATE",
        help="set the global speed limit at start (otherwise the last one set is kept)",
    )
    p.add_argument(
        "--upstream",
        metavar="URL",
        help="the Hub the mirror under /hf fetches from (default: HF_ENDPOINT, else "
        f"{DEFAULT_ENDPOINT})",
    )
    p.add_argument("--json", action="store_true", help="say where it listens as one JSON line")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    try:
        from ..server.app import create_app
        from ..server.runner import bind_socket, bound_url, make_server, run_service
        from ..server.security import AccessPolicy, load_or_create_token, requires_token
        from ..server.service import Service
    except ImportError as exc:
        raise ModelhaulError(
            f"'modelhaul serve' needs the server extra ({exc.name or 'a module'} is missing)",
            hint="Install it: pip install 'modelhaul[server]'",
        ) from None
    if not 0 <= args.port <= 65535:
        raise InvalidInput(f"--port must be 0..65535, got {args.port}")
    if args.jobs is not None and not 1 <= args.jobs <= 256:
        raise InvalidInput(f"-j must be between 1 and 256, got {args.jobs}")
    rate = parse_rate(args.limit_rate) if args.limit_rate is not None else None
    state = state_dir()
    store_root = hf_cache_root(os.environ)
    download_dir = Path(
        args.download_dir or os.environ.get("MODELHAUL_DOWNLOAD_DIR") or "."
    ).absolute()
    token = (
        load_or_create_token(state) if requires_token(args.host, force=args.require_token) else None
    )
    service = Service(_service_config(args, state, store_root, download_dir))
    policy = AccessPolicy(
        bind_host=args.host,
        token=token,
        allowed_hosts=frozenset(h.lower() for h in args.allow_host),
        allowed_origins=frozenset(o.rstrip("/") for o in args.allow_origin),
    )
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        raise ModelhaulError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
            hint="Another service may be running there ('modelhaul queue' asks it); "
            "choose another --port.",
        ) from None
    url = bound_url(sock)

    def announce() -> None:
        if rate is not None:
            service.set_limit(rate)
        _announce(args, url, token, state, download_dir, store_root)

    app = create_app(service, policy, version=_version())
    server = make_server(app, service, on_started=announce)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Replaces the CLI's handler (which cancels the command): a graceful stop pauses every
        # download with its journal saved, so the next start resumes it.
        loop.add_signal_handler(sig, server.request_exit)
    try:
        await run_service(server, sock)
    finally:
        sock.close()
    if not args.json:
        print("modelhaul: stopped; unfinished downloads resume at the next start", file=sys.stderr)
    return 0


def _service_config(
    args: argparse.Namespace, state: Path, store_root: Path, download_dir: Path
) -> ServiceConfig:
    """What the service is told, from the options and the environment the CLI reads."""
    from ..server.config import ServiceConfig

    env = os.environ
    manager = (
        ManagerConfig(max_active_files=args.jobs, max_small_files=args.jobs, adaptive=False)
        if args.jobs
        else ManagerConfig()
    )
    return ServiceConfig(
        download_dir=download_dir,
        store_root=store_root,
        state_dir=state,
        store_db=default_db_path(store_root, env.get("MODELHAUL_DB")),
        hf_endpoint=(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
        hf_token=default_token(),
        mirror_upstream=check_url(args.upstream).rstrip("/") if args.upstream else None,
        symlinks=env.get("HF_HUB_DISABLE_SYMLINKS", "").strip().lower()
        not in ("1", "true", "yes", "on"),
        manager=manager,
    )


def _announce(
    args: argparse.Namespace,
    url: str,
    token: str | None,
    state: Path,
    download_dir: Path,
    store_root: Path,
) -> None:
    """Say where the service listens: one JSON line with --json, else words on stderr."""
    if args.json:
        record = {
            "event": "listening",
            "url": url,
            "token_required": token is not None,
            "download_dir": str(download_dir),
            "store": str(store_root),
        }
        print(json.dumps(record), flush=True)
        return
    print(f"modelhaul: serving on {url}/", file=sys.stderr)
    print(f"  downloads go to {download_dir}; models to {store_root}", file=sys.stderr)
    if token is not None:
        print(f"  open {url}/?token={token} in a browser;", file=sys.stderr)
        print(
            f"  API clients send 'Authorization: Bearer TOKEN' (in {state}/server-token)",
            file=sys.stderr,
        )
    sys.stderr.flush()


def _version() -> str:
    try:
        return importlib.metadata.version("modelhaul")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
