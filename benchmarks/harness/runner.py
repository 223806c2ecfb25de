"""Timed runs: every tool is started by a tiny launcher that reports its wall time and rusage.

Each run gets an empty output directory; ``sync`` runs before it (outside the timing) so one
tool's dirty pages are not written back on the next tool's time, and again right after it,
timed separately: the "then sync" column is what it would still cost to make the output
durable (modelhaul fsyncs before it exits, curl and aria2c do not).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .common import WORK, GiB, MiB, clean_env, killpg, log, machine_busy
from .data import warm_cache
from .servers import Servers


@dataclass
@dataclass
class ProcResult:
    rc: int
    wall: float
    cpu: float
    maxrss: int  # bytes
    timed_out: bool


# Spawning the tool straight from this (large) process would make ru_maxrss report *our* RSS:
# Linux carries the forking parent's RSS into the child's maxrss. So a tiny launcher
# (python -S -I, ~8 MB) forks+execs the tool, wait4()s it and reports the tool's own rusage and
# wall time (fork -> reaped) as JSON to a side file. Measurement floor: ~8 MB RSS.
LAUNCHER = """\
import json, os, sys, time
res, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
rc = os.waitstatus_to_exitcode(status)
with open(res, "w") as f:
    json.dump({"rc": rc, "wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss": ru.ru_maxrss}, f)
"""


def run_proc(argv: list[str], log_path: Path, timeout: float, env: dict[str, str]) -> ProcResult:
    """Run one tool to completion; the tool and anything it spawns is killed on timeout."""
    res = log_path.with_suffix(".rusage.json")
    res.unlink(missing_ok=True)
    timed_out = threading.Event()
    with open(log_path, "wb") as lf:
        lf.write((shlex.join(argv) + "\n").encode())
        lf.flush()
        p = subprocess.Popen(
            [sys.executable, "-S", "-I", "-c", LAUNCHER, str(res), *argv],
            stdin=subprocess.DEVNULL,
            stdout=lf,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def on_timeout() -> None:
        timed_out.set()
        killpg(p.pid)

    timer = threading.Timer(timeout, on_timeout)
    timer.daemon = True
    timer.start()
    try:
        p.wait()
    except BaseException:
        killpg(p.pid)
        p.wait()
        raise
    finally:
        timer.cancel()
    killpg(p.pid)  # anything the tool left behind in its session
    try:
        r = json.loads(res.read_text())
    except (OSError, ValueError):
        return ProcResult(p.returncode or -1, float(timeout), 0.0, 0, timed_out.is_set())
    return ProcResult(r["rc"], r["wall"], r["cpu"], r["maxrss"] * 1024, timed_out.is_set())


def log_tail(path: Path, n: int = 300) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = text.splitlines()[1:]  # first line is the command
    return " | ".join(lines)[-n:]


@dataclass
class Tool:
    name: str
    argv: Callable[[Path], list[str]]  # output dir -> command line
    modelhaul: bool = False
    env: Callable[[Path], dict[str, str]] | None = None  # output dir -> extra environment


@dataclass
class Case:
    key: str
    title: str
    emulates: str
    payload: int  # bytes per run
    tools: list[Tool]
    verify: Callable[[Path, int], str | None]
    timeout: float
    warm: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every tool


@dataclass
class Run:
    tool: str
    rep: int
    ok: bool
    error: str
    wall: float
    cpu: float
    maxrss: int
    rc: int
    bg: float = 0.0  # share of all cores busy with something else than tool/server (noise)
    sync_s: float = 0.0  # a sync(2) right after the tool exited: what durability still cost


@dataclass
class Summary:
    tool: str
    modelhaul: bool
    payload: int
    runs: list[Run]

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.ok for r in self.runs)

    @property
    def wall(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    @property
    def cpu_per_gib(self) -> float:
        return statistics.median(r.cpu for r in self.runs) / (self.payload / GiB)

    @property
    def rss(self) -> int:
        return max(r.maxrss for r in self.runs)

    @property
    def mib_s(self) -> float:
        return self.payload / MiB / self.wall

    @property
    def bg(self) -> float:
        return statistics.median(r.bg for r in self.runs)

    @property
    def sync_s(self) -> float:
        return statistics.median(r.sync_s for r in self.runs)


class Ctx:
    """What every case needs: servers, the modelhaul command, the output root, logs."""

    def __init__(
        self,
        servers: Servers,
        mh: list[str] | None,
        *,
        peer_python: str,
        hf_python: str,
        out_root: Path,
        quick: bool,
    ) -> None:
        self.srv = servers
        self.mh = mh
        self.peer_python = peer_python
        self.hf_python = hf_python
        self.out_root = out_root
        self.quick = quick
        self.logs = WORK / "logs"
        self.lists = WORK / "lists"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.lists.mkdir(parents=True, exist_ok=True)

    def fresh_out(self) -> Path:
        """Empty output dir (and empty modelhaul state dir) for the next run."""
        self.clear_out()
        (self.out_root / "state").mkdir(parents=True)
        out = self.out_root / "run"
        out.mkdir(parents=True)
        return out

    def clear_out(self) -> None:
        shutil.rmtree(self.out_root / "run", ignore_errors=True)
        shutil.rmtree(self.out_root / "state", ignore_errors=True)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Child environment: no proxies, and modelhaul's locks/done-records in a per-run dir
        (nothing carries over between runs, nothing lands in ~/.cache)."""
        return {**clean_env(), "MODELHAUL_STATE_DIR": str(self.out_root / "state"), **(extra or {})}

    def log_path(self, case: str, tool: str, rep: int) -> Path:
        return self.logs / f"{case}-{tool}-rep{rep}.log"


def timed_sync() -> float:
    t0 = time.perf_counter()
    os.sync()
    return time.perf_counter() - t0


def run_one(ctx: Ctx, case: Case, tool: Tool, rep: int) -> Run:
    """One timed run of one tool: empty output, sync, run, sync (timed apart), check, clean."""
    out = ctx.fresh_out()
    lp = ctx.log_path(case.key, tool.name, rep)
    env = ctx.env({**case.env, **(tool.env(out) if tool.env else {})})
    argv = tool.argv(out)
    os.sync()  # the previous run's dirty pages are written back outside anybody's timing
    busy0, srv0 = machine_busy(), ctx.srv.cpu()
    pr = run_proc(argv, lp, case.timeout, env)
    foreign = machine_busy() - busy0 - (ctx.srv.cpu() - srv0) - pr.cpu
    bg = max(0.0, foreign) / (pr.wall * (os.cpu_count() or 1))
    sync_s = timed_sync()
    if pr.timed_out:
        err = f"timed out after {case.timeout:.0f} s"
    elif pr.rc != 0:
        err = f"exit status {pr.rc}: {log_tail(lp)}"
    else:
        err = case.verify(out, rep) or ""
    ctx.clear_out()
    return Run(tool.name, rep, not err, err, pr.wall, pr.cpu, pr.maxrss, pr.rc, bg, sync_s)


def run_case(ctx: Ctx, case: Case, reps: int) -> list[Summary]:
    log(f"\n== {case.key}: {case.title} ({reps} rep(s), {len(case.tools)} tools)")
    warm_cache(case.warm)
    runs: dict[str, list[Run]] = {t.name: [] for t in case.tools}
    for rep in range(reps):
        k = rep % len(case.tools)
        for tool in case.tools[k:] + case.tools[:k]:  # rotate the order between reps
            run = run_one(ctx, case, tool, rep)
            runs[tool.name].append(run)
            status = "ok" if run.ok else f"FAILED: {run.error}"
            log(
                f"  [{case.key} {rep + 1}/{reps}] {tool.name:<16} {run.wall:7.2f} s "
                f"{case.payload / MiB / run.wall:8.1f} MiB/s  cpu {run.cpu:6.2f} s  "
                f"rss {run.maxrss / 1e6:6.1f} MB  sync {run.sync_s:5.2f} s  "
                f"bg {run.bg * 100:3.0f} %  {status}"
            )
    return [Summary(t.name, t.modelhaul, case.payload, runs[t.name]) for t in case.tools]
