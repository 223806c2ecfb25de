"""Case D: rate-limiter accuracy, measured from progress while the download runs."""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .cases import ARIA2
from .common import LIMIT_RATE, MiB, killpg, log
from .data import Blob
from .runner import Ctx, log_tail

BYTES_KEYS = (
    "bytes_done",
    "downloaded",
    "bytes_downloaded",
    "done",
    "completed",
    "bytes",
    "received",
    "bytes_received",
    "written",
    "bytes_written",
)
ID_KEYS = ("file", "name", "path", "dest", "output", "out", "filename", "target", "url", "id")

Series = list[tuple[float, int]]


def parse_progress(obj: object) -> list[tuple[str | None, int]]:
    """Pull (download id, bytes so far) out of one JSON progress line, whatever its schema."""
    if not isinstance(obj, dict):
        return []
    event = obj.get("event", obj.get("type"))
    if event is not None and event != "progress":
        return []
    for key in BYTES_KEYS:
        v = obj.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            ident = next((str(obj[k]) for k in ID_KEYS if isinstance(obj.get(k), str | int)), None)
            return [(ident, v)]
    found: list[tuple[str | None, int]] = []
    for key in ("files", "downloads", "items", "transfers"):
        if isinstance(obj.get(key), list):
            for item in obj[key]:
                if isinstance(item, dict):
                    found += parse_progress({**item, "event": "progress"})
    return found


@dataclass
class LimiterTool:
    name: str
    argv: Callable[[Path], list[str]]
    downloads: list[str]  # expected output names; used to attribute files/progress lines
    json_progress: bool
    modelhaul: bool = False


@dataclass
class LimiterRun:
    tool: str
    rep: int
    ok: bool
    error: str
    method: str = ""
    rate: float = 0.0  # bytes/s over the window
    shares: dict[str, float] = field(default_factory=dict)
    rate_1s_min: float = 0.0
    rate_1s_max: float = 0.0
    rejected: dict[str, str] = field(default_factory=dict)  # method -> why it was not usable
    cross: dict[str, float] = field(default_factory=dict)  # other usable methods -> their rate

    @property
    def err_pct(self) -> float:
        return (self.rate / LIMIT_RATE - 1) * 100

    @property
    def min_share_of_fair(self) -> float | None:
        if len(self.shares) < 2:
            return None
        return min(self.shares.values()) * len(self.shares)


def _attribute(ident: str | None, downloads: list[str]) -> str:
    if ident is None:
        return "*"
    for d in downloads:
        if d in ident or Path(d).stem in Path(ident).name:
            return d
    return "?" + ident


def _at(series: Series, t: float) -> float:
    """Linear interpolation of a cumulative byte count; 0 before the first point."""
    if not series or t < series[0][0]:
        return 0.0
    if t >= series[-1][0]:
        return float(series[-1][1])
    lo, hi = 0, len(series) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if series[mid][0] <= t:
            lo = mid
        else:
            hi = mid
    (t0, b0), (t1, b1) = series[lo], series[hi]
    return b0 + (b1 - b0) * (t - t0) / (t1 - t0) if t1 > t0 else float(b1)


def _method_series(
    method: str,
    json_events: list[tuple[float, str | None, int]],
    disk: list[tuple[float, dict[str, tuple[int, int]]]],
    downloads: list[str],
) -> dict[str, Series]:
    per: dict[str, Series] = collections.defaultdict(list)
    if method == "json":
        for t, ident, b in json_events:
            per[_attribute(ident, downloads)].append((t, b))
        if any(k != "*" for k in per) and "*" in per:
            del per["*"]  # aggregate lines next to per-file lines: use the per-file ones
        return dict(per)
    idx = 0 if method == "size" else 1
    for t, files in disk:
        sums: dict[str, int] = collections.defaultdict(int)
        for rel, st in files.items():
            sums[_attribute(rel, downloads)] += st[idx]
        for k in set(sums) | set(per):
            per[k].append((t, sums.get(k, 0)))
    return dict(per)


def _sum_series(per: dict[str, Series]) -> Series:
    """Aggregate of several cumulative series at every sample time of any of them."""
    times = sorted({t for s in per.values() for t, _ in s})
    return [(t, round(sum(_at(s, t) for s in per.values()))) for t in times]


def evaluate_limiter(
    method: str, per: dict[str, Series], ws: float, we: float, downloads: list[str]
) -> tuple[str, float, dict[str, float], float, float]:
    """-> (why unusable or "", rate, shares, min 1 s rate, max 1 s rate).

    Bytes-on-disk methods are rejected when the numbers cannot be received bytes: more than
    twice the limit since the process started (whole-file preallocation, sparse size) or a
    jump bigger than a 2 s token-bucket burst (fallocate in big steps). Bursty limiters (aria2
    releases ~1 s of tokens at once) pass. JSON progress is taken as reported: a jump there is
    the limiter's own fault and shows in the accuracy figures.
    """
    if not per:
        return "no data", 0, {}, 0, 0
    for k, s in per.items():
        if s[-1][0] < we - 0.5 and s[-1][1] == 0:
            return f"{k}: no progress", 0, {}, 0, 0
    if method != "json":
        for t, b in _sum_series(per):
            if b > 2 * LIMIT_RATE * t + 24 * MiB:
                return (
                    f"{b / MiB:.0f} MiB on disk after {t:.1f} s (preallocated or sparse?)",
                    0,
                    {},
                    0,
                    0,
                )
        for k, s in per.items():
            for (t0, b0), (t1, b1) in itertools.pairwise(s):
                if b1 - b0 > 2 * LIMIT_RATE + 5 * LIMIT_RATE * (t1 - t0):
                    return (
                        f"{k}: jumped by {(b1 - b0) / MiB:.0f} MiB in {t1 - t0:.2f} s "
                        "(allocated ahead?)",
                        0,
                        {},
                        0,
                        0,
                    )
    if max(s[-1][0] for s in per.values()) < we:
        return "series ends before the window does", 0, {}, 0, 0

    def agg(t: float) -> float:
        return sum(_at(s, t) for s in per.values())

    total = agg(we) - agg(ws)
    if total <= 0:
        return "no growth in window", 0, {}, 0, 0
    rate = total / (we - ws)
    named = [d for d in downloads if d in per]
    shares = {d: (_at(per[d], we) - _at(per[d], ws)) / total for d in named}
    if len(downloads) > 1 and len(named) < len(downloads):
        shares = {d: shares.get(d, 0.0) for d in downloads}
    steps = [agg(ws + i + 1) - agg(ws + i) for i in range(int(we - ws))]
    return "", rate, shares, min(steps), max(steps)


def run_limiter(ctx: Ctx, tool: LimiterTool, rep: int, warmup: float, window: float) -> LimiterRun:
    out = ctx.fresh_out()
    lp = ctx.log_path("D", tool.name, rep)
    argv = tool.argv(out)
    json_events: list[tuple[float, str | None, int]] = []
    disk: list[tuple[float, dict[str, tuple[int, int]]]] = []
    lp.write_text(shlex.join(argv) + "\n")
    with open(lp, "ab") as lf:  # O_APPEND: stderr and the stdout reader share the log
        t_start = time.monotonic()
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if tool.json_progress else lf,
            stderr=lf,
            env=ctx.env(),
            start_new_session=True,
        )

    def reader() -> None:
        assert p.stdout is not None
        with open(lp, "ab") as lf2:
            for raw in p.stdout:
                t = time.monotonic() - t_start
                lf2.write(raw)
                with contextlib.suppress(ValueError):
                    for ident, b in parse_progress(json.loads(raw)):
                        json_events.append((t, ident, b))

    th = threading.Thread(target=reader, daemon=True)
    if tool.json_progress:
        th.start()
    early: str = ""
    t_first: float | None = None
    try:
        while True:
            t = time.monotonic() - t_start
            files: dict[str, tuple[int, int]] = {}
            for path in out.rglob("*"):
                with contextlib.suppress(OSError):
                    st = path.lstat()
                    if path.is_file():
                        files[str(path.relative_to(out))] = (st.st_size, st.st_blocks * 512)
            disk.append((t, files))
            if t_first is None and (
                any(b > 0 for _, _, b in json_events) or any(s > 0 for s, _ in files.values())
            ):
                t_first = t
            if t_first is not None and t >= t_first + warmup + window + 1.5:
                break
            if t_first is None and t > 30:
                early = "no progress within 30 s"
                break
            pid, status, _ = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                early = f"exited (status {p.returncode}) after {t:.1f} s, before the window ended"
                break
            time.sleep(0.1)
    finally:
        if p.returncode is None:
            killpg(p.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(3)
            killpg(p.pid)
            p.wait()
        killpg(p.pid)
        if th.is_alive():
            th.join(5)
        ctx.clear_out()
    run = LimiterRun(tool.name, rep, False, early)
    if early:
        run.error += f"; log: {log_tail(lp)}"
        return run
    assert t_first is not None
    ws, we = t_first + warmup, t_first + warmup + window
    raw = {"window": [ws, we], "json": json_events, "disk": disk}
    lp.with_suffix(".samples.json").write_text(json.dumps(raw))
    methods = (["json"] if tool.json_progress else []) + ["alloc", "size"]
    for method in methods:  # first usable method wins; the others are kept as a cross-check
        per = _method_series(method, json_events, disk, tool.downloads)
        why, rate, shares, lo, hi = evaluate_limiter(method, per, ws, we, tool.downloads)
        if why:
            run.rejected[method] = why
        elif not run.ok:
            run.ok, run.method, run.rate, run.shares = True, method, rate, shares
            run.rate_1s_min, run.rate_1s_max = lo, hi
        else:
            run.cross[method] = rate
    if not run.ok:
        run.error = "no usable measurement: " + "; ".join(
            f"{k}: {v}" for k, v in run.rejected.items()
        )
    return run


def limiter_tools(ctx: Ctx, links: list[Blob], single: Blob) -> list[LimiterTool]:
    names = [b.name for b in links]
    urls = [ctx.srv.url(f"/plain/{b.name}") for b in links]
    one_url = ctx.srv.url(f"/plain/{single.name}")
    mh_list = ctx.lists / "limiter.modelhaul"
    mh_list.write_text(
        "".join(
            f"{u}\n  out={b.name}\n  sha256={b.sha256}\n" for u, b in zip(urls, links, strict=True)
        )
    )
    a2_list = ctx.lists / "limiter.aria2"
    a2_list.write_text("".join(f"{u}\n  out={b.name}\n" for u, b in zip(urls, links, strict=True)))
    j = str(len(links))
    lim = f"{LIMIT_RATE // MiB}M"
    # --disk-cache=0: aria2 buffers 16 MiB in memory by default, which would distort on-disk bytes
    a2 = [*ARIA2, "--file-allocation=none", "--disk-cache=0", f"--max-overall-download-limit={lim}"]
    mh = ctx.mh or []

    def mh_files(out: Path) -> list[str]:
        return [
            *mh,
            "get",
            "-i",
            str(mh_list),
            "-d",
            str(out),
            "-j",
            j,
            "--limit-rate",
            lim,
            "--json",
        ]

    def mh_x4(out: Path) -> list[str]:
        target = ["-o", str(out / single.name), "--sha256", single.sha256]
        return [*mh, "get", one_url, *target, "-x", "4", "--limit-rate", lim, "--json"]

    def a2_files(out: Path) -> list[str]:
        return [*a2, "-i", str(a2_list), "-j", j, "-d", str(out)]

    def a2_x4(out: Path) -> list[str]:
        return [*a2, "-x4", "-s4", "-k1M", "-d", str(out), "-o", single.name, one_url]

    tools: list[LimiterTool] = []
    if ctx.mh:
        tools.append(LimiterTool(f"modelhaul-{j}files", mh_files, names, True, modelhaul=True))
        tools.append(LimiterTool("modelhaul-x4", mh_x4, [single.name], True, modelhaul=True))
    tools.append(LimiterTool(f"aria2c-{j}files", a2_files, names, False))
    tools.append(LimiterTool("aria2c-x4", a2_x4, [single.name], False))
    return tools


def run_limiter_case(
    ctx: Ctx, links: list[Blob], single: Blob, reps: int, tool_re: re.Pattern[str] | None
) -> list[LimiterRun]:
    tools = [t for t in limiter_tools(ctx, links, single) if not tool_re or tool_re.search(t.name)]
    log(f"\n== D: limiter accuracy, --limit-rate {LIMIT_RATE // MiB}M ({reps} rep(s))")
    runs = []
    for rep in range(reps):
        for tool in tools:
            r = run_limiter(ctx, tool, rep, warmup=1.5, window=10.0)
            runs.append(r)
            if r.ok:
                fair = r.min_share_of_fair
                log(
                    f"  [D {rep + 1}/{reps}] {tool.name:<16} {r.rate / MiB:6.2f} MiB/s "
                    f"({r.err_pct:+.1f} %), 1 s rates {r.rate_1s_min / MiB:.1f}..{r.rate_1s_max / MiB:.1f}"
                    f", min share/fair {'n/a' if fair is None else f'{fair:.2f}'} via {r.method}"
                    + "".join(f"; {k} says {v / MiB:.2f}" for k, v in r.cross.items())
                    + "".join(f"; {k} unusable: {v}" for k, v in r.rejected.items())
                )
            else:
                log(f"  [D {rep + 1}/{reps}] {tool.name:<16} FAILED: {r.error}")
    return runs


def limiter_table(runs: list[LimiterRun]) -> str:
    rows = [
        f"### D — limiter accuracy (`--limit-rate {LIMIT_RATE // MiB}M`, 10 s window after 1.5 s)\n",
        "Target: aggregate within ±5 % of 20 MiB/s; no download below half its fair share. "
        "aria2c (`--max-overall-download-limit`) rows are a reference for the harness.\n",
        "| tool | reps ok | median MiB/s | worst error | 1 s rates MiB/s "
        "| worst min share / fair | measured via | pass |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    by: dict[str, list[LimiterRun]] = collections.defaultdict(list)
    for r in runs:
        by[r.tool].append(r)
    for tool, rs in by.items():
        ok = [r for r in rs if r.ok]
        if len(ok) < len(rs):
            bad = next(r for r in rs if not r.ok)
            rows.append(f"| {tool} | {len(ok)}/{len(rs)} | | | | | | FAIL: {bad.error[:150]} |")
            continue
        worst = max(ok, key=lambda r: abs(r.err_pct))
        fairs = [r.min_share_of_fair for r in ok if r.min_share_of_fair is not None]
        passed = all(abs(r.err_pct) <= 5 for r in ok) and all(f >= 0.5 for f in fairs)
        rows.append(
            f"| {tool} | {len(ok)}/{len(rs)} | {statistics.median(r.rate for r in ok) / MiB:.2f} "
            f"| {worst.err_pct:+.1f} % "
            f"| {min(r.rate_1s_min for r in ok) / MiB:.1f}–{max(r.rate_1s_max for r in ok) / MiB:.1f} "
            f"| {f'{min(fairs):.2f}' if fairs else 'n/a'} "
            f"| {', '.join(sorted({r.method for r in ok}))} "
            f"| {'PASS' if passed else 'FAIL'}{'' if ok[0].tool.startswith('modelhaul') else ' (ref)'} |"
        )
    return "\n".join(rows) + "\n"
