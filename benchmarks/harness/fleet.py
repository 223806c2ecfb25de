"""Cases G and H share this: many processes at once against case F's static Hub.

A *variant* starts its servers (a mirror, olah, or one ``modelhaul serve`` per node), then
starts every client at once, each through the launcher of ``runner.py`` (so each has its own
wall time, fork to reap, and CPU), waits for all, stops the servers and checks every client's
output. The upstream bytes are the body bytes the Hub and the CDN sent during the variant,
from nginx's log (``Servers.upstream_bytes``), so they are counted at the origin whatever the
tool reports.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .common import GiB, MiB, log, machine_busy, process_cpu, stop_child
from .runner import Ctx, ProcResult, log_tail, run_proc


@dataclass(frozen=True)
class Proc:
    """One client (or node) of a variant: its command line, environment and output dir."""

    name: str
    argv: list[str]
    env: dict[str, str]
    out: Path


@dataclass(frozen=True)
class Server:
    """A long-running process of a variant (mirror, olah, a node's serve)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    host: str
    port: int
    cwd: Path | None = None


@dataclass
class FleetRun:
    variant: str
    rep: int
    ok: bool
    error: str
    walls: list[float]
    upstream_bytes: int
    client_cpu: float
    server_cpu: float
    bg: float
    extra: dict[str, int] = field(default_factory=dict)  # e.g. bytes_from_peers, as reported

    @property
    def slowest(self) -> float:
        return max(self.walls) if self.walls else float("nan")

    @property
    def cpu_floor(self) -> float:
        """The wall no schedule could beat on this machine: the clients' and the servers' CPU
        spread over every core (the Hub, its proxy and the kernel's writeback not counted, so
        the true floor is higher)."""
        return (self.client_cpu + self.server_cpu) / (os.cpu_count() or 1)


@dataclass
class Variant:
    name: str
    servers: Callable[[Path], list[Server]]  # run dir -> servers to start first
    procs: Callable[[Path, list[Server]], list[Proc]]  # run dir, servers -> clients
    skip: str = ""  # why this variant cannot run with this modelhaul (reported, not run)


def wait_listening(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    """Until ``host:port`` accepts a connection; fails early if the server process exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"exited with status {proc.returncode} before listening"
                ) from None
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"not listening on {host}:{port} after {timeout_s:.0f} s"
                ) from None
            time.sleep(0.1)


def start_servers(
    ctx: Ctx, servers: list[Server], key: str, variant: str, rep: int
) -> list[subprocess.Popen]:
    """Start every server (logs: ``<key>-<variant>-server-<name>-rep<N>.log``), wait until
    each listens; on failure stop those started and raise RuntimeError with the log's end."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for s in servers:
            lp = ctx.log_path(key, f"{variant}-server-{s.name}", rep)
            with open(lp, "wb") as lf:
                lf.write((" ".join(s.argv) + "\n").encode())
                lf.flush()
                started.append(
                    subprocess.Popen(
                        s.argv,
                        stdin=subprocess.DEVNULL,
                        stdout=lf,
                        stderr=subprocess.STDOUT,
                        env=s.env,
                        cwd=s.cwd,
                        start_new_session=True,
                    )
                )
        for s, p in zip(servers, started, strict=True):
            try:
                wait_listening(s.host, s.port, 120, p)
            except RuntimeError as exc:
                tail = log_tail(ctx.log_path(key, f"{variant}-server-{s.name}", rep))
                raise RuntimeError(f"{s.name}: {exc}: {tail}") from None
    except BaseException:
        for p in started:
            stop_child(p)
        raise
    return started


def settled_upstream_bytes(ctx: Ctx) -> int:
    """nginx logs a response when it ends; after the servers stopped, the last ones end within
    moments. Read until two reads 0.3 s apart agree (at most 5 s)."""
    last = ctx.srv.upstream_bytes()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = ctx.srv.upstream_bytes()
        if now == last:
            break
        last = now
    return last


def run_all_at_once(procs: list[Proc], logs: list[Path], timeout_s: float) -> list[ProcResult]:
    results: list[ProcResult | None] = [None] * len(procs)

    def one(i: int) -> None:
        results[i] = run_proc(procs[i].argv, logs[i], timeout_s, procs[i].env)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(procs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


def run_variant(
    ctx: Ctx,
    key: str,
    v: Variant,
    rep: int,
    timeout_s: float,
    verify: Callable[[Proc], str | None],
    extra: Callable[[Path], dict[str, int]] | None = None,
) -> FleetRun:
    """One timed run of one variant: empty run dir, servers up, every client at once, checks."""
    run_dir = ctx.fresh_out()
    servers = v.servers(run_dir)
    error = ""
    try:
        started = start_servers(ctx, servers, key, v.name, rep)
    except RuntimeError as exc:
        ctx.clear_out()
        return FleetRun(v.name, rep, False, str(exc), [], 0, 0.0, 0.0, 0.0)
    procs = v.procs(run_dir, servers)
    logs = [ctx.log_path(key, f"{v.name}-{p.name}", rep) for p in procs]
    os.sync()
    up0, busy0, srv0 = ctx.srv.upstream_bytes(), machine_busy(), ctx.srv.cpu()
    cpu0 = sum(process_cpu(p.pid) for p in started)
    t0 = time.perf_counter()
    try:
        results = run_all_at_once(procs, logs, timeout_s)
    finally:
        server_cpu = sum(process_cpu(p.pid) for p in started) - cpu0
        for p in started:
            stop_child(p)
    span = time.perf_counter() - t0
    upstream = settled_upstream_bytes(ctx) - up0
    client_cpu = sum(r.cpu for r in results)
    foreign = machine_busy() - busy0 - (ctx.srv.cpu() - srv0) - client_cpu - server_cpu
    bg = max(0.0, foreign) / (span * (os.cpu_count() or 1))
    for p, r, lp in zip(procs, results, logs, strict=True):
        if r.timed_out:
            error = f"{p.name} timed out after {timeout_s:.0f} s"
        elif r.rc != 0:
            error = f"{p.name} exit status {r.rc}: {log_tail(lp)}"
        else:
            error = verify(p) or ""
        if error:
            break
    counts: dict[str, int] = {}
    if extra:
        for lp in logs:
            for k, n in extra(lp).items():
                counts[k] = counts.get(k, 0) + n
    ctx.clear_out()
    return FleetRun(
        v.name,
        rep,
        not error,
        error,
        [r.wall for r in results],
        upstream,
        client_cpu,
        server_cpu,
        bg,
        counts,
    )


def run_fleet_case(
    ctx: Ctx,
    key: str,
    title: str,
    variants: list[Variant],
    reps: int,
    timeout_s: float,
    verify: Callable[[Proc], str | None],
    extra: Callable[[Path], dict[str, int]] | None = None,
    only: re.Pattern[str] | None = None,
) -> list[FleetRun]:
    """Every variant ``reps`` times (those ``only`` matches, if given), order rotating."""
    live = [v for v in variants if not v.skip and (only is None or only.search(v.name))]
    log(f"\n== {key}: {title} ({reps} rep(s), {len(live)} variants)")
    for v in variants:
        if v.skip:
            log(f"  [{key}] {v.name}: SKIPPED: {v.skip}")
    runs: list[FleetRun] = []
    for rep in range(reps):
        k = rep % max(1, len(live))
        for v in live[k:] + live[:k]:  # rotate the order between reps
            run = run_variant(ctx, key, v, rep, timeout_s, verify, extra)
            runs.append(run)
            status = "ok" if run.ok else f"FAILED: {run.error}"
            log(
                f"  [{key} {rep + 1}/{reps}] {v.name:<14} slowest {run.slowest:7.2f} s  "
                f"upstream {run.upstream_bytes / MiB:8.1f} MiB  clients cpu {run.client_cpu:6.1f} s"
                f"  server cpu {run.server_cpu:6.1f} s  bg {run.bg * 100:3.0f} %  "
                f"{' '.join(f'{k}={n / MiB:.1f}MiB' for k, n in run.extra.items())}  {status}"
            )
    return runs


def _cell(text: str) -> str:
    """An error as a table cell: one line, no pipes, its end (where the cause is)."""
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= 160 else "…" + text[-160:]


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"


def fleet_table(
    variants: list[Variant], runs: list[FleetRun], payload: int, ref: str
) -> tuple[str, dict[str, float]]:
    """Markdown rows per variant, and the median slowest wall of each variant that passed."""
    rows = [
        "| variant | processes | slowest s, median (min–max) | vs "
        f"{ref} | upstream MiB (max) | × model | clients CPU s | server CPU s "
        f"| CPU floor s (vs {ref}) | reported | bg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    medians = {
        v.name: statistics.median(r.slowest for r in mine)
        for v in variants
        if (mine := [r for r in runs if r.variant == v.name]) and all(r.ok for r in mine)
    }
    ref_s = medians.get(ref)
    for v in variants:
        mine = [r for r in runs if r.variant == v.name]
        if v.skip or not mine:
            why = f"skipped: {v.skip}" if v.skip else "not run"
            rows.append(f"| {v.name} | | {why} | | | | | | | | |")
            continue
        if v.name not in medians:
            bad = next(r for r in mine if not r.ok)
            good = [f"{r.slowest:.2f}" for r in mine if r.ok]
            passed = f"; the other runs' slowest: {', '.join(good)} s" if good else ""
            rows.append(
                f"| {v.name} | {len(mine[0].walls)} | FAILED ({sum(not r.ok for r in mine)} "
                f"of {len(mine)} runs) after {bad.slowest:.1f} s: {_cell(bad.error)}{passed} "
                f"| | {max(r.upstream_bytes for r in mine) / MiB:.0f} | | | "
                f"{statistics.median(r.server_cpu for r in mine):.1f} | | | |"
            )
            continue
        up = max(r.upstream_bytes for r in mine)
        ratio = f"{medians[v.name] / ref_s:.2f}×" if ref_s else "—"
        floor = statistics.median(r.cpu_floor for r in mine)
        floor_ratio = f" ({floor / ref_s:.2f}×)" if ref_s else ""
        keys = sorted({k for r in mine for k in r.extra})
        reported = ", ".join(
            f"{k} {statistics.median(r.extra.get(k, 0) for r in mine) / MiB:.0f} MiB" for k in keys
        )
        rows.append(
            f"| {v.name} | {len(mine[0].walls)} | {_spread([r.slowest for r in mine])} | {ratio} "
            f"| {up / MiB:.0f} | {up / payload:.2f} "
            f"| {statistics.median(r.client_cpu for r in mine):.1f} "
            f"| {statistics.median(r.server_cpu for r in mine):.1f} | {floor:.1f}{floor_ratio} "
            f"| {reported} "
            f"| {statistics.median(r.bg for r in mine) * 100:.0f} % |"
        )
    rows.append("")
    rows.append(
        f"Model payload {payload / MiB:.0f} MiB ({payload / GiB:.2f} GiB). Upstream = body bytes "
        "the Hub and the CDN sent during the run (nginx's log), the max over reps. CPU floor = "
        f"(clients + server CPU) / {os.cpu_count()} cores, median over reps: no schedule on this "
        "machine finishes sooner (the Hub, its proxy and the kernel's writeback are not in it)."
    )
    return "\n".join(rows) + "\n", medians
