"""Case H (issue 17): 8 simulated nodes pull one model, alone or as peers.

Node i (0..7) is the address 127.0.0.(i+2) with its own store (``HF_HUB_CACHE``), ``HF_HOME``
and ``MODELHAUL_STATE_DIR`` under the run dir. The upstream is case F's static Hub (20 MiB/s
per connection, 30 ms per new connection and per request). Variants:

- ``alone-1``: one node runs ``modelhaul pull hf://REPO --json -q``, nobody else (reference);
- ``alone-8``: the 8 nodes each run that pull at once, each straight from the Hub;
- ``peers-8``: every node runs ``modelhaul serve --host 127.0.0.N --upstream HUB`` on its own
  store, then the 8 pulls run at once with ``--peers URL,...`` naming all 8 services (the same
  list, in the same order, on every node: the slice owners then agree). The pull's ``--json``
  result line reports ``bytes_from_peers`` and ``bytes_from_upstream``; the table shows their
  sums over the nodes beside the upstream bytes counted at nginx.

``peers-8`` is skipped, with the reason in the report, while ``modelhaul pull --help`` does not
offer ``--peers``. The pulls themselves connect from 127.0.0.1 (the CLI has no source-address
option); only the services are bound to the node addresses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from .common import MiB, clean_env, free_port
from .fleet import FleetRun, Proc, Server, Variant, fleet_table, run_fleet_case
from .hubrepo import HubModel
from .pull import verify_cache
from .runner import Ctx

NODES = 8
REPORTED = ("bytes_from_peers", "bytes_from_upstream")


def node_host(i: int) -> str:
    return f"127.0.0.{i + 2}"


def peers_skip(mh: list[str] | None) -> str:
    """Why the peers variant cannot run with this modelhaul ("" if it can)."""
    if not mh:
        return "no modelhaul command"
    try:
        cp = subprocess.run(
            [*mh, "pull", "--help"], capture_output=True, text=True, timeout=60, env=clean_env()
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`modelhaul pull --help` failed: {exc}"
    if "--peers" not in cp.stdout:
        return "this modelhaul's `pull --help` has no --peers (issue 17 not built in it yet)"
    return ""


def _node_env(ctx: Ctx, home: Path) -> dict[str, str]:
    return ctx.env(
        {
            "HF_ENDPOINT": ctx.srv.url("", via="hub"),
            "HF_HOME": str(home / "hf_home"),
            "HF_HUB_CACHE": str(home / "hub"),
            "MODELHAUL_STATE_DIR": str(home / "state"),
        }
    )


def _pulls(ctx: Ctx, run: Path, n: int, repo: str, peers: list[str]) -> list[Proc]:
    assert ctx.mh is not None
    procs = []
    for i in range(n):
        home = run / f"node{i}"
        argv = [*ctx.mh, "pull", f"hf://{repo}", "--json", "-q"]
        if peers:
            argv += ["--peers", ",".join(peers)]
        procs.append(Proc(f"node{i}", argv, _node_env(ctx, home), home))
    return procs


def _serves(ctx: Ctx, run: Path) -> list[Server]:
    assert ctx.mh is not None
    port = free_port()  # the same port on every node address, as on a real cluster
    servers = []
    for i in range(NODES):
        home, host = run / f"node{i}", node_host(i)
        argv = [*ctx.mh, "serve", "--host", host, "--port", str(port)]
        argv += ["--upstream", ctx.srv.url("", via="hub"), "-d", str(home / "downloads")]
        servers.append(Server(f"node{i}", argv, _node_env(ctx, home), host, port))
    return servers


def _sum_key(obj: Any, key: str) -> int:
    """``obj[key]`` if the object has it at top level, else the sum over its children."""
    if isinstance(obj, dict):
        if isinstance(obj.get(key), int):
            return int(obj[key])
        return sum(_sum_key(v, key) for v in obj.values())
    if isinstance(obj, list):
        return sum(_sum_key(v, key) for v in obj)
    return 0


def reported_bytes(log_path: Path) -> dict[str, int]:
    """bytes_from_peers / bytes_from_upstream from the pull's ``--json`` result line."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()[1:]
    except OSError:
        return {}
    for line in reversed(lines):
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("event") == "result":
            text = json.dumps(obj)
            return {k: _sum_key(obj, k) for k in REPORTED if f'"{k}"' in text}
    return {}


def nodes_variants(ctx: Ctx, model: HubModel) -> list[Variant]:
    repo = model.repo_id
    skip_all = "" if ctx.mh else "no modelhaul command"

    def peers_procs(run: Path, servers: list[Server]) -> list[Proc]:
        urls = [f"http://{s.host}:{s.port}" for s in servers]
        return _pulls(ctx, run, NODES, repo, urls)

    return [
        Variant("alone-1", lambda run: [], lambda run, s: _pulls(ctx, run, 1, repo, []), skip_all),
        Variant(
            f"alone-{NODES}",
            lambda run: [],
            lambda run, s: _pulls(ctx, run, NODES, repo, []),
            skip_all,
        ),
        Variant(
            f"peers-{NODES}",
            lambda run: _serves(ctx, run),
            peers_procs,
            skip_all or peers_skip(ctx.mh),
        ),
    ]


def nodes_case(
    ctx: Ctx, model: HubModel, reps: int, only: re.Pattern[str] | None = None
) -> tuple[str, list[FleetRun]]:
    """Run case H; its markdown section and its runs."""
    variants = nodes_variants(ctx, model)
    title = (
        f"{NODES} nodes (127.0.0.2–127.0.0.{NODES + 1}) pull {model.repo_id} "
        f"({model.payload / MiB:.0f} MiB), Hub at 20 MiB/s per connection, 30 ms RTT"
    )
    runs = run_fleet_case(
        ctx,
        "H",
        title,
        variants,
        reps,
        only=only,
        timeout_s=120 + NODES * model.payload / (16 * MiB),
        verify=lambda p: verify_cache(p.out, model),
        extra=reported_bytes,
    )
    table, med = fleet_table(variants, runs, model.payload, "alone-1")
    md = [f"## H: {title}\n", table]
    peers = [r for r in runs if r.variant == f"peers-{NODES}" and r.ok]
    if peers and "alone-1" in med:
        ratio = med[f"peers-{NODES}"] / med["alone-1"]
        up = max(r.upstream_bytes for r in peers) / model.payload
        rows = [
            "| issue-17 figure | measured | test's bound |\n|---|---|---|",
            f"| slowest node with --peers / one node alone | {ratio:.2f}× | ≤ 1.3× |",
            f"| upstream bytes with --peers / model | {up:.3f}× | ≤ 1.05× |",
        ]
        if f"alone-{NODES}" in med:
            vs8 = med[f"peers-{NODES}"] / med[f"alone-{NODES}"]
            rows.append(f"| slowest node with --peers / slowest of {NODES} alone | {vs8:.2f}× | |")
        md.append("\n".join(rows) + "\n")
        md.append(
            f"All {NODES} nodes share this machine's {os.cpu_count()} cores and disk, so the "
            "wall ratios measure the machine as much as the network.\n"
        )
    return "\n".join(md), runs
