#!/usr/bin/env python3
"""modelhaul benchmark harness: modelhaul vs. peer downloaders, ratios from the same run.

Normally started through ``benchmarks/run.sh`` (which installs nginx/aria2 and the bench venv).
Everything generated lives in ``benchmarks/_work/`` (gitignored); downloads go to
``_work/out`` on the project's disk (``--tmpfs`` for /dev/shm) and are deleted after each run.
See ``benchmarks/README.md``; the parts live in ``benchmarks/harness/``.

Cases
  A  4 GiB from /plain/ (unshaped loopback; modelhaul verifies SHA-256, peers verify nothing)
  B  1 GiB from /capped/ (nginx ``limit_rate 20m`` per connection, a CDN capping each flow)
  C  300 files 1 KiB..2 MiB (87 MB), 30 ms per new connection and per request
  D  limiter accuracy: ``--limit-rate 20M`` over 4 downloads (and over one ``-x 4`` download)
  E  1 GiB over HTTPS, 20 MiB/s per connection, 30 ms RTT at the TCP level (+ E0: plain HTTP)
  F  ``pull`` of a model (4 x 256 MiB + 20 small files) from a static Hub, 20 MiB/s, 30 ms RTT
  G  8 stock ``snapshot_download`` clients of F's model at once: direct, via olah, via
     ``modelhaul serve`` (issue 16's mirror); slowest client and upstream bytes
  H  8 nodes (127.0.0.2-9) pull F's model: each alone vs ``--peers`` (issue 17); slowest node
     and upstream bytes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from harness.cases import blob_case, many_case
from harness.common import REPO, WORK, GiB, MiB, clean_env, log
from harness.data import ensure_blob, ensure_many, warm_cache
from harness.fleet import FleetRun
from harness.herd import herd_case
from harness.https import https_cases
from harness.hubrepo import HubModel, ensure_hub_model, log_model
from harness.limiter import LimiterRun, limiter_table, run_limiter_case
from harness.nodes import nodes_case
from harness.proxycheck import ProxyCheck, proxy_check, proxy_table, tls_line, tls_timings
from harness.pull import pull_case
from harness.report import HEADER, case_table, environment, sha256_rate, tls_cpu
from harness.runner import Case, Ctx, Summary, run_case
from harness.servers import Servers
from harness.targets import targets_table
from harness.tls import TlsFiles, ensure_tls

CASE_ALIASES = {
    "a": "A",
    "plain": "A",
    "b": "B",
    "capped": "B",
    "c": "C",
    "many": "C",
    "d": "D",
    "limiter": "D",
    "limit": "D",
    "e": "E",
    "https": "E",
    "tls": "E",
    "f": "F",
    "pull": "F",
    "hub": "F",
    "g": "G",
    "mirror": "G",
    "herd": "G",
    "h": "H",
    "peers": "H",
    "nodes": "H",
}
ALL_CASES = {"A", "B", "C", "D", "E", "F", "G", "H"}
HUB_CASES = {"F", "G", "H"}  # the cases that use the static Hub and its model


def find_modelhaul(cmd: str | None) -> list[str] | None:
    argv = shlex.split(cmd) if cmd else [str(REPO / ".venv" / "bin" / "modelhaul")]
    try:
        cp = subprocess.run(
            [*argv, "get", "--help"], capture_output=True, text=True, timeout=60, env=clean_env()
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log(f"modelhaul CLI not usable ({e}); running peers only")
        return None
    if cp.returncode != 0:
        log(f"modelhaul CLI not usable (`get --help` exit {cp.returncode}); running peers only")
        return None
    missing = [o for o in ("--sha256", "-x", "--limit-rate", "-i", "--json") if o not in cp.stdout]
    if missing:
        log(f"warning: `modelhaul get --help` does not mention {missing}")
    compile_bytecode(argv)
    return argv


def compile_bytecode(argv: list[str]) -> None:
    """Compile modelhaul's modules once, as `pip install` does: with PYTHONDONTWRITEBYTECODE set
    (as on the project's machines) a source checkout is otherwise recompiled by every timed run."""
    if "-m" in argv:
        python = argv[: argv.index("-m")]
    else:
        try:
            shebang = Path(argv[-1]).read_text().splitlines()[0]
        except (OSError, IndexError):
            return
        if not shebang.startswith("#!"):
            return
        python = [*argv[:-1], *shlex.split(shebang[2:])]
    code = "import compileall, os, modelhaul; compileall.compile_dir(os.path.dirname(modelhaul.__file__), quiet=1)"
    env = {k: v for k, v in clean_env().items() if k != "PYTHONDONTWRITEBYTECODE"}
    cp = subprocess.run([*python, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    if cp.returncode != 0:
        log(f"warning: could not compile modelhaul's bytecode: {cp.stderr.strip()[-200:]}")


def default_peer_python() -> str:
    venv = WORK / "venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def default_hf_python(peer_python: str) -> str:
    """A python with huggingface_hub (and its ``hf`` CLI): the bench venv's, else the project's."""
    for py in (peer_python, str(REPO / ".venv" / "bin" / "python")):
        ok = subprocess.run(
            [py, "-c", "import huggingface_hub"], capture_output=True, env=clean_env()
        )
        if ok.returncode == 0 and (Path(py).parent / "hf").exists():
            return py
    return peer_python


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="modelhaul vs. peer downloaders on loopback (see benchmarks/README.md)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 rep, smaller files")
    ap.add_argument("--reps", type=int, help="repetitions per tool (default 3; 1 with --quick)")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="cases to run: A|plain, B|capped, C|many, D|limiter, E|https, F|pull, "
        "G|mirror|herd (8 snapshot_download clients: direct, olah, modelhaul serve), "
        "H|peers|nodes (8 nodes: each alone vs --peers) (comma list, repeatable)",
    )
    ap.add_argument("--tools", metavar="REGEX", help="only tools whose name matches")
    ap.add_argument(
        "--tool-cmd",
        help="modelhaul command (default: .venv/bin/modelhaul), e.g. "
        "'.venv/bin/python -m modelhaul.cli.main'",
    )
    ap.add_argument("--no-modelhaul", action="store_true", help="peers only")
    ap.add_argument("--peer-python", default=default_peer_python(), help="bench venv python")
    ap.add_argument(
        "--hf-python",
        help="python with huggingface_hub for case F (default: bench venv's if it "
        "has it, else the project's .venv)",
    )
    out = ap.add_mutually_exclusive_group()
    out.add_argument(
        "--out-dir", type=Path, help="where downloads go (default: benchmarks/_work/out, on disk)"
    )
    out.add_argument("--tmpfs", action="store_true", help="download to /dev/shm instead of disk")
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results.md")
    args = ap.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.out_dir is None:
        args.out_dir = (
            Path(f"/dev/shm/modelhaul-bench-{os.getpid()}") if args.tmpfs else WORK / "out"
        )
    args.hf_python = args.hf_python or default_hf_python(args.peer_python)
    cases = set()
    for item in args.only:
        for name in filter(None, (x.strip().lower() for x in item.split(","))):
            if name not in CASE_ALIASES:
                ap.error(f"unknown case {name!r}")
            cases.add(CASE_ALIASES[name])
    args.cases = cases or set(ALL_CASES)
    return args


class Data:
    """The files this run's cases need (generated once, cached in _work/data)."""

    def __init__(self, args: argparse.Namespace) -> None:
        want = args.cases
        big = ensure_blob("1g.bin", GiB)
        self.big = big
        if args.quick:
            self.plain, self.capped = big, ensure_blob("256m.bin", 256 * MiB)
        else:
            self.plain = ensure_blob("4g.bin", 4 * GiB) if "A" in want else big
            self.capped = big
        # distinct content per download: modelhaul fetches identical SHA-256s only once
        need_lim = "D" in want or (bool(HUB_CASES & want) and not args.quick)
        self.links = [ensure_blob(f"lim{i}.bin", 256 * MiB) for i in range(4)] if need_lim else []
        self.files = ensure_many() if "C" in want else []
        self.tls: TlsFiles | None = ensure_tls() if "E" in want else None
        self.hub: HubModel | None = None
        if HUB_CASES & want:
            if args.quick:
                shards = [ensure_blob(f"hubq{i}.bin", 64 * MiB) for i in range(4)]
                self.hub = ensure_hub_model("bench-model-quick", shards)
            else:
                self.hub = ensure_hub_model("bench-model", self.links)
            log_model(self.hub)


class Results:
    def __init__(self) -> None:
        self.sums: dict[str, list[Summary]] = {}
        self.cases: dict[str, Case] = {}
        self.limiter: list[LimiterRun] | None = None
        self.pcheck: ProxyCheck | None = None
        self.tls_timings: list[tuple[float, float]] = []
        self.hf_note = ""
        self.env_lines: list[str] = []
        self.sha_gib_s: float | None = None  # SHA-256 on one core, best of three
        self.fleet: dict[str, list[FleetRun]] = {}  # cases G and H
        self.fleet_md: dict[str, str] = {}


def build_cases(ctx: Ctx, data: Data, want: set[str], res: Results) -> dict[str, Case]:
    cases: dict[str, Case] = {}
    if "A" in want:
        cases["A"] = blob_case(
            ctx,
            "A",
            "plain",
            data.plain,
            "a fast unshaped link (local mirror / datacenter); modelhaul includes "
            "its SHA-256 verification, peers verify nothing",
            floor=16 * MiB,
        )
    if "B" in want:
        cases["B"] = blob_case(
            ctx,
            "B",
            "capped",
            data.capped,
            "a CDN that caps every TCP flow at 20 MiB/s (nginx limit_rate 20m)",
            floor=8 * MiB,
        )
    if "C" in want:
        cases["C"] = many_case(ctx, data.files)
    if "E" in want and data.tls is not None:
        cases["E"], cases["E0"], res.hf_note = https_cases(ctx, data.capped, data.tls)
    if "F" in want and data.hub is not None:
        cases["F"] = pull_case(ctx, data.hub)
    return cases


def run_all(args: argparse.Namespace, data: Data, mh: list[str] | None) -> Results:
    res = Results()
    tool_re = re.compile(args.tools) if args.tools else None
    shutil.rmtree(args.out_dir, ignore_errors=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with Servers(args.peer_python, data.tls, data.hub) as srv:
            ctx = Ctx(
                srv,
                mh,
                peer_python=args.peer_python,
                hf_python=args.hf_python,
                out_root=args.out_dir,
                quick=args.quick,
            )
            res.cases = build_cases(ctx, data, args.cases, res)
            if "C" in args.cases:
                res.pcheck = proxy_check(ctx, data.files, data.capped, reps=2 if args.quick else 4)
            if data.tls is not None:
                url = srv.url("/plain/1g.bin.sha256", via="tls", scheme="https")
                res.tls_timings = tls_timings(url, data.tls.ca)
            for key, case in res.cases.items():
                if tool_re:
                    case.tools = [t for t in case.tools if tool_re.search(t.name)]
                if case.tools:
                    res.sums[key] = run_case(ctx, case, 1 if key == "E0" else args.reps)
            if "D" in args.cases:
                warm_cache([data.big.path, *(b.path for b in data.links)])
                res.limiter = run_limiter_case(ctx, data.links, data.big, args.reps, tool_re)
            for key, fleet_case in (("G", herd_case), ("H", nodes_case)):
                if key in args.cases and data.hub is not None:
                    warm_cache([f.source for f in data.hub.files])
                    res.fleet_md[key], res.fleet[key] = fleet_case(
                        ctx, data.hub, args.reps, tool_re
                    )
            res.sha_gib_s = sha256_rate()
            res.env_lines = environment(ctx, res.sha_gib_s)
    finally:
        shutil.rmtree(args.out_dir, ignore_errors=True)
    return res


def render(args: argparse.Namespace, argv: list[str] | None, res: Results, elapsed: float) -> str:
    cmd = shlex.join(["benchmarks/run.sh", *(argv if argv is not None else sys.argv[1:])])
    md = [
        "# modelhaul benchmark results\n",
        f"Command: `{cmd}` — {'QUICK smoke run (smaller files), ' if args.quick else ''}"
        f"{args.reps} rep(s) per tool, medians; total {elapsed / 60:.1f} min.\n",
        *res.env_lines,
        "",
        HEADER,
    ]
    for key in sorted(res.sums):
        if key == "E":
            extra = {"TLS CPU s/GiB (vs E0)": tls_cpu(res.sums["E"], res.sums.get("E0", []))}
            md.append(case_table(res.cases[key], res.sums[key], extra=extra))
            md.append(tls_line(res.tls_timings))
            if res.hf_note:
                md.append(
                    f"hf_transfer is left out: it cannot be given the test CA ({res.hf_note}).\n"
                )
        elif key == "F":
            md.append(case_table(res.cases[key], res.sums[key], ref="modelhaul-pull"))
        else:
            md.append(case_table(res.cases[key], res.sums[key]))
    if res.pcheck:
        md.append(proxy_table(res.pcheck, res.sums.get("C")))
    if res.limiter is not None:
        md.append(limiter_table(res.limiter))
    md += [res.fleet_md[k] for k in sorted(res.fleet_md)]
    tt = targets_table(res.sums, res.limiter, args.quick, sha_gib_s=res.sha_gib_s)
    if tt:
        md.append(tt)
    return "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_begin = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    WORK.mkdir(parents=True, exist_ok=True)
    mh = None if args.no_modelhaul else find_modelhaul(args.tool_cmd)
    data = Data(args)
    res = run_all(args, data, mh)
    elapsed = time.monotonic() - t_begin
    text = render(args, argv, res, elapsed)
    log("\n" + text)
    args.results.write_text(text)
    raw = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "cases": {k: [asdict(s) for s in v] for k, v in res.sums.items()},
        "limiter": [asdict(r) for r in res.limiter or []],
        "fleet": {k: [asdict(r) for r in v] for k, v in res.fleet.items()},
        "proxy_check": asdict(res.pcheck) if res.pcheck else None,
        "tls_timings": res.tls_timings,
    }
    (WORK / "results.json").write_text(json.dumps(raw, indent=1, default=str))
    log(f"wrote {args.results} and {WORK / 'results.json'} ({elapsed / 60:.1f} min)")
    failed = any(not s.ok for v in res.sums.values() for s in v) or any(
        not r.ok for r in res.limiter or []
    )
    failed = failed or any(not r.ok for v in res.fleet.values() for r in v)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
