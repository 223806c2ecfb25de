"""``modelhaul pull SOURCE --ray [ADDRESS]``: the pull on every node of a Ray cluster.

Ray is imported only when ``--ray`` is given (``modelhaul.cluster`` imports it when a pull starts).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from ..cluster import PULL_OPTIONS
from ..errors import InvalidInput, ModelhaulError, human_bytes
from .output import make_renderer
from .render import error_dict, print_error


def add_ray_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="pull on every node of a Ray cluster, the nodes serving each other (ADDRESS as "
        "ray.init takes it; without it: RAY_ADDRESS, else the cluster on this machine, else a "
        "new local one); needs the ray extra. Put it after SOURCE",
    )


def wants_ray(args: argparse.Namespace) -> bool:
    return getattr(args, "ray", None) is not None


def pull_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, as keywords for ``pull_on_ray``."""
    if getattr(args, "peers", None):
        raise InvalidInput(
            "--peers and --ray do not go together: the cluster's mirrors are the peers"
        )
    if getattr(args, "via_server", False):
        raise InvalidInput("--via-server and --ray do not go together")
    defaults = {"max_connections": 32, "retries": 3, "timeout": 30.0}
    options = {}
    for name in sorted(PULL_OPTIONS):  # the cluster's list: the one source of truth
        value = getattr(args, name, None)
        if value in (None, False, []) or defaults.get(name) == value:
            continue
        options[name] = value
    if "local_dir" in options:  # as the command means it: from where it runs
        options["local_dir"] = os.path.abspath(options["local_dir"])
    return options


async def run_ray_pull(args: argparse.Namespace) -> int:
    """Run the pull across the cluster; a line per node, then the result line. Exit status 0
    when every node completed, 1 when any failed, 2 for a bad command line."""
    renderer = make_renderer(json_mode=args.json, quiet=args.quiet)
    try:
        from ..cluster import pull_on_ray, ray_session

        options = pull_options(args)
        # The command's Hub, when it names one, is every node's (each node's own otherwise).
        endpoint = os.environ.get("HF_ENDPOINT") or None
        with ray_session(args.ray or None):
            if not args.json:  # with --json, stdout is the result line alone
                renderer.notice(f"pulling {args.source} on every node of the Ray cluster")
            # pull_on_ray blocks (Ray's API does): a thread keeps this loop free for Ctrl-C.
            result = await asyncio.to_thread(pull_on_ray, args.source, endpoint=endpoint, **options)
    except ModelhaulError as exc:
        renderer.stop()
        print_error(exc)
        renderer.result(
            {"event": "result", "status": "failed", "nodes": [], "error": error_dict(exc)}
        )
        return 2 if isinstance(exc, InvalidInput) else 1
    renderer.stop()
    record = result.to_dict()
    if not args.json:
        for n in result.nodes:
            print(f"modelhaul: {n.describe()}", file=sys.stderr)
        if not args.quiet:
            done = len(result.nodes) - len(result.failed)
            print(
                f"modelhaul: {done}/{len(result.nodes)} nodes completed, "
                f"{human_bytes(record['bytes_from_upstream'])} from upstream, "
                f"{human_bytes(record['bytes_from_peers'])} from peers",
                file=sys.stderr,
            )
    renderer.result(record)
    return 0 if result.ok else 1
