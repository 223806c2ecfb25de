"""The markdown report: one table per case, the environment, and the header that says what
each column charges."""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from .common import REPO, MiB, first_line
from .runner import Case, Ctx, Summary

HEADER = (
    "Speed ratio = peer median wall time / modelhaul (default settings) median wall time; > 1 "
    "means modelhaul is faster. Wall = the tool's process from fork to reap (interpreter start "
    "included); modelhaul fsyncs its output before it exits, curl, aria2c, hf_transfer and "
    'huggingface_hub do not: "then sync s" is a sync(2) timed right after the tool exited, '
    "what making their output durable would still cost (not in wall). CPU = user+sys of the "
    "tool's process tree (wait4 rusage), peak RSS = ru_maxrss. MiB = 2^20 bytes, MB = 10^6 "
    "bytes. bg CPU = median share of all cores busy with other work during the run (machine "
    "busy − tool − nginx/proxy): noise from other jobs; runs with high bg are suspect.\n"
)

Extra = dict[str, dict[str, str]]  # column title -> tool -> cell


def fmt_ratio(peer: Summary, ref: Summary | None) -> str:
    if ref is None or not ref.ok or not peer.ok:
        return "—"
    return f"{peer.wall / ref.wall:.2f}×"


def case_table(
    case: Case, sums: list[Summary], ref: str = "modelhaul", extra: Extra | None = None
) -> str:
    mh = next((s for s in sums if s.tool == ref), None)
    extra = extra or {}
    cols = "".join(f" {c} |" for c in extra)
    rows = [
        f"### {case.key} — {case.title}\n",
        f"Emulates: {case.emulates}. Payload {case.payload / MiB:.1f} MiB per run.\n",
        "| tool | median wall s | min–max s | MiB/s | CPU s/GiB | peak RSS MB | then sync s "
        f"| speed ratio vs {ref} |{cols} bg CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extra) + "---:|",
    ]
    for s in sums:
        if not s.runs:
            continue
        if not s.ok:
            bad = [r for r in s.runs if not r.ok]
            blank = " |" * (6 + len(extra))
            rows.append(
                f"| {s.tool} | FAILED {len(bad)}/{len(s.runs)} | {bad[0].error[:160]} |{blank}"
            )
            continue
        walls = [r.wall for r in s.runs]
        cells = "".join(f" {col.get(s.tool, '')} |" for col in extra.values())
        rows.append(
            f"| {s.tool} | {s.wall:.2f} | {min(walls):.2f}–{max(walls):.2f} | {s.mib_s:.0f} "
            f"| {s.cpu_per_gib:.2f} | {s.rss / 1e6:.0f} | {s.sync_s:.2f} | {fmt_ratio(s, mh)} |"
            f"{cells} {s.bg * 100:.0f} % |"
        )
    return "\n".join(rows) + "\n"


def tls_cpu(https: list[Summary], plain: list[Summary]) -> dict[str, str]:
    """Per tool: CPU s/GiB over HTTPS minus over plain HTTP, same file, proxy and cap."""
    base = {s.tool: s for s in plain if s.ok}
    out = {}
    for s in https:
        p = base.get(s.tool)
        if s.ok and p is not None:
            out[s.tool] = f"{s.cpu_per_gib - p.cpu_per_gib:+.2f}"
    return out


def out_dir_line(out_root: Path) -> str:
    fs = first_line(["findmnt", "-no", "FSTYPE,SOURCE", "-T", str(out_root)])
    return (
        f"- downloads written to `{out_root}` ({fs}), emptied before every run, `sync` before "
        "every run outside the timing; served files read once before each case (page cache warm)"
    )


def sha256_rate() -> float:
    """SHA-256 on one core here, GiB/s: 256 MiB in 16 MiB pieces, best of three (what any
    verifying tool's hash costs at the least; it varies between VMs and between runs)."""
    piece = os.urandom(16 * MiB)
    best = float("inf")
    for _ in range(3):
        h, start = hashlib.sha256(), time.perf_counter()
        for _ in range(16):
            h.update(piece)
        best = min(best, time.perf_counter() - start)
    return 0.25 / best


def environment(ctx: Ctx, sha_gib_s: float) -> list[str]:
    py = ctx.peer_python
    git = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"])
    meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    hf_ver = first_line([ctx.hf_python, "-c", "import huggingface_hub as h; print(h.__version__)"])
    return [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}; host: {os.cpu_count()} CPUs, "
        f"{int(meminfo) / 2**20:.0f} GiB RAM, Linux {platform.release()}; "
        f"load average at start {os.getloadavg()[0]:.2f}; SHA-256 on one core "
        f"{sha_gib_s:.2f} GiB/s",
        f"- repo: {git}{' (src/ has uncommitted changes)' if dirty not in ('', '?') else ''}; "
        f"modelhaul command: `{shlex.join(ctx.mh) if ctx.mh else 'not available (peers only)'}`",
        f"- {first_line(['curl', '--version'])}",
        f"- {first_line(['aria2c', '--version'])}",
        f"- {first_line([shutil.which('nginx') or '/usr/sbin/nginx', '-v'])}",
        "- hf_transfer "
        + first_line([py, "-c", "import hf_transfer; print(hf_transfer.__version__)"])
        + ", requests "
        + first_line([py, "-c", "import requests; print(requests.__version__)"])
        + f", huggingface_hub {hf_ver} (`{ctx.hf_python}`)",
        out_dir_line(ctx.out_root),
    ]
