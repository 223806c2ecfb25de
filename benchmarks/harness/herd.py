"""Case G (issue 16): a herd of stock ``snapshot_download`` clients, through a mirror or not.

Case F's model on case F's static Hub (20 MiB/s per connection, 30 ms per new connection and
per request, LFS files 302 to a separate CDN). Each client is
``python -c "snapshot_download(REPO)"`` (huggingface_hub of the bench venv, 8 worker threads)
with its own empty ``HF_HOME``/``HF_HUB_CACHE`` on disk and no token. Variants:

- ``direct-1``: one client, ``HF_ENDPOINT`` = the Hub (the reference time);
- ``direct-8``: 8 clients at once, each straight from the Hub;
- ``olah-8``: 8 clients through olah (PyPI ``olah``, in its own venv ``_work/olah-venv``),
  its upstream the same Hub and CDN (``--hf-scheme http --hf-netloc ... --hf-lfs-netloc ...``);
  ``olah-8-t1800`` the same with ``HF_HUB_DOWNLOAD_TIMEOUT`` and ``HF_HUB_ETAG_TIMEOUT`` at
  1800 s, as olah's users set them;
- ``modelhaul-8``: 8 clients through ``modelhaul serve --upstream HUB``,
  ``HF_ENDPOINT=http://127.0.0.1:PORT/hf``, its store empty.

Clients reach the mirrors straight on loopback (a LAN); the mirrors reach the Hub through the
same delay proxy as the direct clients. A mirror is started and listening before the clock
starts and is stopped after the last client exits.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .common import WORK, MiB, first_line, free_port, log
from .fleet import FleetRun, Proc, Server, Variant, fleet_table, run_fleet_case
from .hubrepo import HubModel
from .pull import HF_ENV, SNAPSHOT_CODE, verify_cache
from .runner import Ctx

CLIENTS = 8
# What olah users set so that a cold file does not trip huggingface_hub's 10 s timeouts.
LONG_TIMEOUTS = {"HF_HUB_DOWNLOAD_TIMEOUT": "1800", "HF_HUB_ETAG_TIMEOUT": "1800"}
OLAH_VENV = WORK / "olah-venv"


def ensure_olah() -> tuple[str | None, str]:
    """olah's CLI, installed on first use into its own venv; (None, why) if it cannot be."""
    cli = OLAH_VENV / "bin" / "olah-cli"
    if not cli.exists():
        log(f"installing olah into {OLAH_VENV} (pip)")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(OLAH_VENV)], check=True)
            subprocess.run(
                [str(OLAH_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "olah"],
                check=True,
                timeout=900,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"pip install olah failed: {exc}"
    if not cli.exists():
        return None, f"{cli} missing after install"
    code = "import importlib.metadata as m; print('olah', m.version('olah'))"
    return str(cli), first_line([str(OLAH_VENV / "bin" / "python"), "-c", code])


def _client(
    ctx: Ctx, run: Path, i: int, endpoint: str, repo: str, extra_env: dict[str, str]
) -> Proc:
    out = run / f"client{i}"
    env = ctx.env(
        {
            **HF_ENV,
            **extra_env,
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(out / "hf_home"),
            "HF_HUB_CACHE": str(out / "hub"),
        }
    )
    return Proc(f"client{i}", [ctx.hf_python, "-c", SNAPSHOT_CODE, repo], env, out)


def _mirror(ctx: Ctx, run: Path) -> list[Server]:
    assert ctx.mh is not None
    home, port = run / "mirror", free_port()
    env = ctx.env(
        {
            "HF_HOME": str(home / "hf_home"),
            "HF_HUB_CACHE": str(home / "hub"),
            "MODELHAUL_STATE_DIR": str(home / "state"),
        }
    )
    argv = [*ctx.mh, "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--upstream", ctx.srv.url("", via="hub"), "-d", str(home / "downloads")]
    return [Server("modelhaul", argv, env, "127.0.0.1", port)]


def _olah(ctx: Ctx, run: Path, cli: str) -> list[Server]:
    home, port = run / "olah", free_port()
    home.mkdir(parents=True)
    own = f"127.0.0.1:{port}"
    argv = [cli, "--host", "127.0.0.1", "--port", str(port), "--hf-scheme", "http"]
    argv += ["--hf-netloc", f"127.0.0.1:{ctx.srv.proxy_ports['hub']}"]
    argv += ["--hf-lfs-netloc", f"127.0.0.1:{ctx.srv.proxy_ports['cdn']}"]
    argv += ["--mirror-netloc", own, "--mirror-lfs-netloc", own]
    argv += ["--repos-path", str(home / "repos"), "--log-path", str(home / "logs")]
    return [Server("olah", argv, ctx.env(), "127.0.0.1", port, cwd=home)]


def herd_variants(ctx: Ctx, model: HubModel) -> tuple[list[Variant], str]:
    repo, hub = model.repo_id, ctx.srv.url("", via="hub")

    def direct(n: int) -> Variant:
        return Variant(
            f"direct-{n}",
            lambda run: [],
            lambda run, _s: [_client(ctx, run, i, hub, repo, {}) for i in range(n)],
        )

    def through(
        name: str,
        servers: Callable[[Path], list[Server]],
        skip: str = "",
        extra_env: dict[str, str] | None = None,
        tag: str = "",
    ) -> Variant:
        def procs(run: Path, s: list[Server]) -> list[Proc]:
            base = f"http://{s[0].host}:{s[0].port}" + ("/hf" if name == "modelhaul" else "")
            return [_client(ctx, run, i, base, repo, extra_env or {}) for i in range(CLIENTS)]

        return Variant(f"{name}-{CLIENTS}{tag}", servers, procs, skip)

    cli, olah_note = ensure_olah()
    variants = [direct(1), direct(CLIENTS)]
    if cli:
        variants.append(through("olah", lambda run: _olah(ctx, run, cli)))
        # olah stores a block before serving it; users raise the client's timeouts to cope
        variants.append(
            through("olah", lambda run: _olah(ctx, run, cli), extra_env=LONG_TIMEOUTS, tag="-t1800")
        )
    else:
        variants.append(Variant(f"olah-{CLIENTS}", lambda r: [], lambda r, s: [], olah_note))
    mh_skip = "" if ctx.mh else "no modelhaul command"
    variants.append(through("modelhaul", lambda run: _mirror(ctx, run), mh_skip))
    return variants, olah_note


def herd_case(
    ctx: Ctx, model: HubModel, reps: int, only: re.Pattern[str] | None = None
) -> tuple[str, list[FleetRun]]:
    """Run case G; its markdown section and its runs."""
    variants, olah_note = herd_variants(ctx, model)
    title = (
        f"{CLIENTS} snapshot_download clients of {model.repo_id} "
        f"({model.payload / MiB:.0f} MiB), Hub at 20 MiB/s per connection, 30 ms RTT"
    )
    runs = run_fleet_case(
        ctx,
        "G",
        title,
        variants,
        reps,
        only=only,
        timeout_s=120 + CLIENTS * model.payload / (16 * MiB),
        verify=lambda p: verify_cache(p.out, model),
    )
    table, med = fleet_table(variants, runs, model.payload, "direct-1")
    md = [f"## G: {title}\n", table]
    md.append(f"olah: {olah_note}.\n")
    mine = [r for r in runs if r.variant == f"modelhaul-{CLIENTS}" and r.ok]
    if "direct-1" in med and f"modelhaul-{CLIENTS}" in med and mine:
        ratio = med[f"modelhaul-{CLIENTS}"] / med["direct-1"]
        up = max(r.upstream_bytes for r in mine) / model.payload
        md.append(
            "| issue-16 target | measured | result |\n|---|---|---|\n"
            f"| slowest of {CLIENTS} through modelhaul ≤ 1.5× one direct client | {ratio:.2f}× "
            f"| {'met' if ratio <= 1.5 else 'not met'} |\n"
            f"| upstream bytes ≤ 1.05× the model | {up:.3f}× "
            f"| {'met' if up <= 1.05 else 'not met'} |\n"
        )
        md.append(_reach_note(runs, med["direct-1"]))
    return "\n".join(md), runs


def _reach_note(runs: list[FleetRun], direct_s: float) -> str:
    """Whether 1.5x was within this machine's reach at all: what the clients' CPU alone needs."""
    cores = os.cpu_count() or 1
    by = {
        name: statistics.median(r.client_cpu for r in runs if r.variant == name and r.ok)
        for name in (f"direct-{CLIENTS}", f"modelhaul-{CLIENTS}")
        if any(r.variant == name and r.ok for r in runs)
    }
    if not by:
        return ""
    parts = [
        f"{name}'s {CLIENTS} clients alone used {cpu:.1f} CPU-s: {cpu / cores:.1f} s on "
        f"{cores} cores, {cpu / cores / direct_s:.2f}× direct-1"
        for name, cpu in by.items()
    ]
    return (
        "Reach: " + "; ".join(parts) + ". Where that is near or above 1.5×, the stock clients' "
        "own CPU, not the mirror, decides the target on this machine (on a LAN they run on "
        "their own machines).\n"
    )
