"""Case A's tail, A/B: modelhaul variants (environment settings) alternating, one URL.

For each run: wall, CPU (the child's own accounting), and the tail, i.e. the time from the
last ``--json`` progress event that moved ``bytes_done`` to the exit. Progress events come
every 0.3 s, so the tail is an upper bound by up to that much; the hashing and the final
fsync are in it. Runs alternate (A B C A B C ...) so a drifting machine hits every variant.

    python benchmarks/hash_tail.py --url http://127.0.0.1:PORT/plain/4g.bin \\
        --sha256 HEX --out-dir benchmarks/_work/out --reps 5 \\
        off=MODELHAUL_HASH_CPU_LAG=off cpu= recv=MODELHAUL_HASH_RECV_LAG=64M

A variant is ``NAME=`` (the defaults) or ``NAME=VAR=VALUE[,VAR=VALUE...]``. Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition("=")
    env = {}
    for pair in filter(None, settings.split(",")):
        var, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"bad setting {pair!r} in {text!r}: write VAR=VALUE")
        env[var] = value
    return name, env


def run_once(cmd: list[str], env: dict[str, str], out: Path) -> tuple[int, float, float, float]:
    """(exit status, wall s, CPU s, tail s) of one download into an empty ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env={**os.environ, **env}, text=True)
    assert proc.stdout is not None
    last_move, done = start, -1
    for line in proc.stdout:
        now = time.monotonic()
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "progress" and event.get("bytes_done") != done:
            done, last_move = event.get("bytes_done"), now
    status = proc.wait()
    end = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    shutil.rmtree(out, ignore_errors=True)
    return status, end - start, cpu, end - last_move


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--sha256", required=True)
    ap.add_argument("--out-dir", type=Path, required=True, help="emptied, then deleted")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--tool-cmd",
        default=f"{sys.executable} -m modelhaul.cli.main",
        help="how to start modelhaul (default: this Python's)",
    )
    ap.add_argument("variants", nargs="+", help="NAME= or NAME=VAR=VALUE[,VAR=VALUE...]")
    args = ap.parse_args()
    variants = [parse_variant(v) for v in args.variants]
    out = args.out_dir / "hash-tail"
    cmd = [*shlex.split(args.tool_cmd), "get", args.url, "-o", str(out / "file")]
    cmd += ["--sha256", args.sha256, "--json"]
    runs: dict[str, list[tuple[int, float, float, float]]] = {name: [] for name, _ in variants}
    for rep in range(args.reps):
        for name, env in variants:
            r = run_once(cmd, env, out)
            runs[name].append(r)
            print(
                f"rep {rep + 1} {name}: exit {r[0]} wall {r[1]:.2f} s CPU {r[2]:.2f} s "
                f"tail {r[3]:.2f} s",
                flush=True,
            )
    print("\n| variant | wall s | CPU s | tail s | failed |\n|---|---:|---:|---:|---:|")
    for name, _ in variants:
        rs = runs[name]
        failed = sum(r[0] != 0 for r in rs)
        print(
            f"| {name} | {spread([r[1] for r in rs])} | {spread([r[2] for r in rs])} | "
            f"{spread([r[3] for r in rs])} | {failed} |"
        )
    return int(any(r[0] for rs in runs.values() for r in rs))


if __name__ == "__main__":
    sys.exit(main())
