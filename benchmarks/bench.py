#!/usr/bin/env python3
"""modelhaul benchmark harness: modelhaul vs. peer downloaders, ratios from the same run.

Normally started through ``benchmarks/run.sh`` (which installs nginx/aria2 and the bench venv).
Everything generated lives in ``benchmarks/_work/`` (gitignored); downloads go to a tmpfs
(``/dev/shm``) and are deleted after each run.  See ``benchmarks/README.md``.

Cases
  A  4 GiB from /plain/ (unshaped loopback; modelhaul verifies SHA-256, peers verify nothing)
  B  1 GiB from /capped/ (nginx ``limit_rate 20m`` per connection, a CDN capping each flow)
  C  300 files 1 KiB..2 MiB (87 MB) through a 30 ms per-request delay proxy
  D  limiter accuracy: ``--limit-rate 20M`` over 4 downloads (and over one ``-x 4`` download)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import itertools
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work"
DATA = WORK / "data"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

CAP_RATE = 20 * MiB  # nginx "limit_rate 20m" = 20 MiB/s per connection
LIMIT_RATE = 20 * MiB  # modelhaul "--limit-rate 20M" target for case D
HF_CHUNK = 10 * MiB  # huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE
MANY_SEED, MANY_COUNT, MANY_MIN, MANY_MAX = 20240611, 300, 1 * KiB, 2 * MiB
MANY_DELAY_MS = 30
RSS_TARGET = 150_000_000  # bytes (150 MB, decimal)

HF_CODE = (
    "import sys, hf_transfer; hf_transfer.download(sys.argv[1], sys.argv[2], "
    "max_files=int(sys.argv[3]), chunk_size=int(sys.argv[4]), parallel_failures=3, max_retries=5)"
)


def log(msg: str) -> None:
    print(msg, flush=True)


def clean_env() -> dict[str, str]:
    """Environment for every child: no HTTP proxies (everything targets 127.0.0.1)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


# --------------------------------------------------------------------------------------------
# Test data (generated once, cached in _work/data)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    name: str
    size: int
    sha256: str

    @property
    def path(self) -> Path:
        return DATA / "blobs" / self.name


def _random_blocks(size: int, block: int = 16 * MiB) -> Iterator[bytes]:
    """os.urandom in big blocks, two generator threads ahead of the consumer."""
    sizes = iter([min(block, size - off) for off in range(0, size, block)])
    with ThreadPoolExecutor(2) as ex:
        pending = collections.deque(ex.submit(os.urandom, n) for n in itertools.islice(sizes, 4))
        while pending:
            data = pending.popleft().result()
            nxt = next(sizes, None)
            if nxt is not None:
                pending.append(ex.submit(os.urandom, nxt))
            yield data


def ensure_blob(name: str, size: int) -> Blob:
    path = DATA / "blobs" / name
    side = path.with_name(name + ".sha256")
    with contextlib.suppress(OSError, ValueError):
        hexd, n = side.read_text().split()
        if int(n) == size and path.stat().st_size == size:
            return Blob(name, size, hexd)
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"generating {path.relative_to(HERE)} ({size / MiB:.0f} MiB of random bytes)...")
    t0 = time.perf_counter()
    h = hashlib.sha256()
    tmp = path.with_name(name + ".tmp")
    with open(tmp, "wb") as f:
        for block in _random_blocks(size):
            h.update(block)
            f.write(block)
        f.flush()
        os.fsync(f.fileno())  # no writeback of GiBs of dirty pages competing with the runs
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    side.write_text(f"{h.hexdigest()}  {size}\n")
    log(f"  done in {time.perf_counter() - t0:.1f} s")
    return Blob(name, size, h.hexdigest())


@dataclass(frozen=True)
class ManyFile:
    name: str
    size: int
    sha256: str


def many_sizes() -> list[int]:
    r = random.Random(MANY_SEED)
    lo, hi = math.log(MANY_MIN), math.log(MANY_MAX)
    return [round(math.exp(r.uniform(lo, hi))) for _ in range(MANY_COUNT)]


def ensure_many() -> list[ManyFile]:
    d = DATA / "many"
    manifest = d / "MANIFEST.json"
    sizes = many_sizes()
    with contextlib.suppress(OSError, ValueError, KeyError):
        m = json.loads(manifest.read_text())
        files = [ManyFile(**f) for f in m["files"]]
        if (
            m["seed"] == MANY_SEED
            and [f.size for f in files] == sizes
            and all((d / f.name).stat().st_size == f.size for f in files)
        ):
            return files
    log(f"generating {MANY_COUNT} files ({sum(sizes) / 1e6:.1f} MB) in {d.relative_to(HERE)}...")
    d.mkdir(parents=True, exist_ok=True)
    files = []
    for i, n in enumerate(sizes):
        data = os.urandom(n)
        name = f"shard-{i:03d}.bin"
        (d / name).write_bytes(data)
        os.chmod(d / name, 0o644)
        files.append(ManyFile(name, n, hashlib.sha256(data).hexdigest()))
    (d / "SHA256SUMS").write_text("".join(f"{f.sha256}  {f.name}\n" for f in files))
    manifest.write_text(json.dumps({"seed": MANY_SEED, "files": [asdict(f) for f in files]}))
    return files


def warm_cache(paths: Sequence[Path]) -> None:
    """Read the served files once so no tool pays for the first read from disk."""
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(16 * MiB):
                pass


# --------------------------------------------------------------------------------------------
# Servers: nginx (own prefix/config under _work) and the delay proxy
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _killpg(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy in processes, plus hypervisor steal.

    irq/softirq time is left out: loopback TCP processing of the benchmark's own traffic lands
    there and belongs to no process, so it would be misread as somebody else's load.
    """
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = v
    return (user + nice + system + steal) / CLK_TCK


def process_cpu(pid: int) -> float:
    """user+sys seconds of one live process (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def stop_child(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """Stop a child started with start_new_session=True (its own process group)."""
    if p.poll() is None:
        _killpg(p.pid, sig)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            _killpg(p.pid)
            p.wait()
    _killpg(p.pid)


NGINX_CONF = """\
# generated by benchmarks/bench.py - local benchmark server, never a system service
{user}worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    types {{ }}
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    open_file_cache max=2000 inactive=60s;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        server_name localhost;
        location /plain/  {{ alias {data}/blobs/; }}
        location /capped/ {{ alias {data}/blobs/; limit_rate {cap}m; }}
        location /many/   {{ alias {data}/many/; }}
    }}
}}
"""


class Servers:
    """nginx on 127.0.0.1 plus the delay proxy in front of it; stopped on exit."""

    def __init__(self, peer_python: str) -> None:
        self.peer_python = peer_python
        self.nginx: subprocess.Popen[bytes] | None = None
        self.proxy: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.proxy_ports: dict[str, int] = {}

    def __enter__(self) -> Servers:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        prefix = WORK / "nginx"
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                user="user root;\n" if os.geteuid() == 0 else "",
                workers=max(1, os.cpu_count() or 1),
                prefix=prefix,
                port=self.port,
                data=DATA,
                cap=CAP_RATE // MiB,
            )
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        argv = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        subprocess.run([*argv, "-t", "-q"], check=True)
        self.nginx = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port)
        self.proxy = subprocess.Popen(
            [
                self.peer_python,
                str(HERE / "delay_proxy.py"),
                "--upstream",
                f"127.0.0.1:{self.port}",
                "--delay-ms",
                str(MANY_DELAY_MS),
                "--delay-ms",
                "0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proxy.stdout is not None
        line = self.proxy.stdout.readline()
        self.proxy_ports = {k: int(v) for k, v in json.loads(line)["ports"].items()}
        log(f"nginx on 127.0.0.1:{self.port}; delay proxy ports {self.proxy_ports}")

    def cpu(self) -> float:
        """CPU seconds used so far by nginx (master + workers) and the delay proxy."""
        pids = [p.pid for p in (self.nginx, self.proxy) if p]
        if self.nginx:
            with contextlib.suppress(OSError):
                kids = Path(f"/proc/{self.nginx.pid}/task/{self.nginx.pid}/children").read_text()
                pids += [int(x) for x in kids.split()]
        return sum(process_cpu(pid) for pid in pids)

    def url(self, path: str, via: str | None = None) -> str:
        port = self.port if via is None else self.proxy_ports[via]
        return f"http://127.0.0.1:{port}{path}"

    def __exit__(self, *exc: object) -> None:
        if self.proxy:
            stop_child(self.proxy)
        if self.nginx:
            stop_child(self.nginx, signal.SIGQUIT)  # graceful nginx shutdown


# --------------------------------------------------------------------------------------------
# Running one tool: subprocess + os.wait4 rusage
# --------------------------------------------------------------------------------------------


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
        _killpg(p.pid)

    timer = threading.Timer(timeout, on_timeout)
    timer.daemon = True
    timer.start()
    try:
        p.wait()
    except BaseException:
        _killpg(p.pid)
        p.wait()
        raise
    finally:
        timer.cancel()
    _killpg(p.pid)  # anything the tool left behind in its session
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


# --------------------------------------------------------------------------------------------
# Verification: a broken run must never report a great number
# --------------------------------------------------------------------------------------------


def _listing(d: Path) -> str:
    names = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "(empty)"


def verify_blob(out: Path, name: str, blob: Blob, seed: int) -> str | None:
    """Size must match exactly; content spot-checked against the source (34 x 1 MiB)."""
    p = out / name
    if not p.is_file():
        return f"{name} missing; output dir has: {_listing(out)}"
    size = p.stat().st_size
    if size != blob.size:
        return f"{name}: size {size} != {blob.size}"
    r = random.Random(seed)
    chunk = MiB
    offsets = [0, max(0, blob.size - chunk)] + [
        r.randrange(0, max(1, blob.size - chunk)) for _ in range(32)
    ]
    with open(p, "rb") as a, open(blob.path, "rb") as b:
        for off in offsets:
            a.seek(off)
            b.seek(off)
            if a.read(chunk) != b.read(chunk):
                return f"{name}: content differs from source at offset {off}"
    return None


def verify_many(out: Path, files: Sequence[ManyFile]) -> str | None:
    """Every file: exact size and SHA-256 (80 MB, cheap)."""
    for f in files:
        p = out / f.name
        try:
            data = p.read_bytes()
        except OSError:
            return f"{f.name} missing; output dir has: {_listing(out)}"
        if len(data) != f.size:
            return f"{f.name}: size {len(data)} != {f.size}"
        if hashlib.sha256(data).hexdigest() != f.sha256:
            return f"{f.name}: SHA-256 mismatch"
    return None


# --------------------------------------------------------------------------------------------
# Cases A/B/C: timed runs
# --------------------------------------------------------------------------------------------


@dataclass
class Tool:
    name: str
    argv: Callable[[Path], list[str]]  # output dir -> command line
    modelhaul: bool = False


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


class Ctx:
    def __init__(self, args: argparse.Namespace, servers: Servers, mh: list[str] | None) -> None:
        self.args = args
        self.srv = servers
        self.mh = mh
        self.peer_python = args.peer_python
        self.out_root = args.out_dir
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

    def env(self) -> dict[str, str]:
        """Child environment: no proxies, and modelhaul's locks/done-records in a per-run dir
        (nothing carries over between runs, nothing lands in ~/.cache)."""
        return {**clean_env(), "MODELHAUL_STATE_DIR": str(self.out_root / "state")}

    def log_path(self, case: str, tool: str, rep: int) -> Path:
        return self.logs / f"{case}-{tool}-rep{rep}.log"


def run_case(ctx: Ctx, case: Case, reps: int) -> list[Summary]:
    log(f"\n== {case.key}: {case.title} ({reps} rep(s), {len(case.tools)} tools)")
    warm_cache(case.warm)
    runs: dict[str, list[Run]] = {t.name: [] for t in case.tools}
    for rep in range(reps):
        k = rep % len(case.tools)
        for tool in case.tools[k:] + case.tools[:k]:  # rotate the order between reps
            out = ctx.fresh_out()
            lp = ctx.log_path(case.key, tool.name, rep)
            busy0, srv0 = machine_busy(), ctx.srv.cpu()
            pr = run_proc(tool.argv(out), lp, case.timeout, ctx.env())
            foreign = machine_busy() - busy0 - (ctx.srv.cpu() - srv0) - pr.cpu
            bg = max(0.0, foreign) / (pr.wall * (os.cpu_count() or 1))
            if pr.timed_out:
                err = f"timed out after {case.timeout:.0f} s"
            elif pr.rc != 0:
                err = f"exit status {pr.rc}: {log_tail(lp)}"
            else:
                err = case.verify(out, rep) or ""
            ctx.clear_out()
            run = Run(tool.name, rep, not err, err, pr.wall, pr.cpu, pr.maxrss, pr.rc, bg)
            runs[tool.name].append(run)
            status = "ok" if run.ok else f"FAILED: {err}"
            log(
                f"  [{case.key} {rep + 1}/{reps}] {tool.name:<16} {pr.wall:7.2f} s "
                f"{case.payload / MiB / pr.wall:8.1f} MiB/s  cpu {pr.cpu:6.2f} s  "
                f"rss {pr.maxrss / 1e6:6.1f} MB  bg {bg * 100:3.0f} %  {status}"
            )
    return [Summary(t.name, t.modelhaul, case.payload, runs[t.name]) for t in case.tools]


ARIA2 = ["aria2c", "--no-conf", "-q", "--allow-overwrite=true", "--auto-file-renaming=false"]


def single_file_tools(ctx: Ctx, url: str, blob: Blob, *, floors: bool = False) -> list[Tool]:
    name = blob.name
    py = ctx.peer_python

    def floor(verify: bool) -> Callable[[Path], list[str]]:
        script = str(HERE / "floor.py")
        sha = ["--sha256"] if verify else []
        return lambda out: [py, script, url, str(out / name), "8", *sha]

    def hf(n: int) -> Callable[[Path], list[str]]:
        return lambda out: [py, "-c", HF_CODE, url, str(out / name), str(n), str(HF_CHUNK)]

    def aria2(out: Path) -> list[str]:
        return [*ARIA2, "-x16", "-s16", "-k4M", "-d", str(out), "-o", name, url]

    tools = [
        Tool("curl", lambda out: ["curl", "-q", "-s", "-f", "-o", str(out / name), url]),
        Tool("aria2c-x16", aria2),
        Tool("hf_transfer-8", hf(8)),
        Tool("hf_transfer-16", hf(16)),
    ]
    if floors:
        # Not peers: the least any tool can spend here, with and without verification.
        tools += [Tool("floor-8", floor(False)), Tool("floor-8+sha256", floor(True))]
    if ctx.mh:
        mh = ctx.mh

        def modelhaul(extra: list[str]) -> Callable[[Path], list[str]]:
            def argv(out: Path) -> list[str]:
                verify = ["--sha256", blob.sha256]
                return [*mh, "get", url, "-o", str(out / name), *verify, "-q", *extra]

            return argv

        tools.append(Tool("modelhaul", modelhaul([]), modelhaul=True))
        tools.append(Tool("modelhaul-x8", modelhaul(["-x", "8"]), modelhaul=True))
        tools.append(Tool("modelhaul-x16", modelhaul(["-x", "16"]), modelhaul=True))
    return tools


def blob_case(ctx: Ctx, key: str, loc: str, blob: Blob, emulates: str, floor: float) -> Case:
    url = ctx.srv.url(f"/{loc}/{blob.name}")
    return Case(
        key=key,
        title=f"{blob.size / GiB:g} GiB from /{loc}/",
        emulates=emulates,
        payload=blob.size,
        tools=single_file_tools(ctx, url, blob, floors=key == "A"),
        verify=lambda out, rep: verify_blob(out, blob.name, blob, seed=rep),
        timeout=60 + blob.size / floor,
        warm=[blob.path],
    )


def many_lists(ctx: Ctx, files: Sequence[ManyFile], via: str | None, tag: str) -> dict[str, Path]:
    urls = [ctx.srv.url(f"/many/{f.name}", via) for f in files]
    paths = {k: ctx.lists / f"many-{tag}.{k}" for k in ("modelhaul", "aria2", "requests")}
    paths["modelhaul"].write_text(
        "".join(
            f"{u}\n  out={f.name}\n  sha256={f.sha256}\n" for u, f in zip(urls, files, strict=True)
        )
    )
    paths["aria2"].write_text(
        "".join(f"{u}\n  out={f.name}\n" for u, f in zip(urls, files, strict=True))
    )
    paths["requests"].write_text(
        "".join(f"{u}\t{f.name}\n" for u, f in zip(urls, files, strict=True))
    )
    return paths


def many_tools(ctx: Ctx, files: Sequence[ManyFile], via: str | None, tag: str) -> list[Tool]:
    lists = many_lists(ctx, files, via, tag)
    urls = [ctx.srv.url(f"/many/{f.name}", via) for f in files]
    curl_cfg = ctx.lists / f"many-{tag}.curl"

    def curl_argv(out: Path) -> list[str]:
        curl_cfg.write_text(
            "".join(
                f'url = "{u}"\noutput = "{out / f.name}"\n'
                for u, f in zip(urls, files, strict=True)
            )
        )
        return ["curl", "-q", "-s", "-f", "--parallel", "--parallel-max", "8", "-K", str(curl_cfg)]

    def mh_argv(out: Path) -> list[str]:
        return [*(ctx.mh or []), "get", "-i", str(lists["modelhaul"]), "-d", str(out), "-q"]

    def aria2_argv(out: Path) -> list[str]:
        return [*ARIA2, "-i", str(lists["aria2"]), "-j", "8", "-d", str(out)]

    def requests_argv(out: Path) -> list[str]:
        script = str(HERE / "peer_requests.py")
        return [ctx.peer_python, script, str(lists["requests"]), str(out), "--threads", "8"]

    tools = [Tool("modelhaul", mh_argv, modelhaul=True)] if ctx.mh else []
    tools += [
        Tool("aria2c-j8", aria2_argv),
        Tool("curl-parallel-8", curl_argv),
        Tool("requests-8threads", requests_argv),
    ]
    return tools


def many_case(ctx: Ctx, files: Sequence[ManyFile]) -> Case:
    return Case(
        key="C",
        title=f"{len(files)} files ({sum(f.size for f in files) / 1e6:.0f} MB), "
        f"{MANY_DELAY_MS} ms per-request delay",
        emulates="a model repo snapshot (many shards/configs) from a far-away server",
        payload=sum(f.size for f in files),
        tools=many_tools(ctx, files, str(MANY_DELAY_MS), "delay"),
        verify=lambda out, rep: verify_many(out, files),
        timeout=180,
        warm=[DATA / "many" / f.name for f in files],
    )


# --------------------------------------------------------------------------------------------
# Delay proxy self-check: does it delay, and is it a bottleneck?
# --------------------------------------------------------------------------------------------


@dataclass
class ProxyCheck:
    ttfb_direct: list[float]
    ttfb_delayed: list[float]
    walls: dict[str, list[float]]  # "direct" / "proxy0" / "delay": aria2c -j8 on case C's files
    proxy_cpu: float  # median proxy CPU seconds per run through the delaying port
    bulk_direct: float
    bulk_proxy0: float
    bulk_bytes: int

    @property
    def extra(self) -> float:
        """Proxy cost in seconds: best run through the 0 ms proxy minus best direct run.

        Minimums, not medians: on a busy 2-core VM the medians mostly measure other jobs.
        """
        return max(0.0, min(self.walls["proxy0"]) - min(self.walls["direct"]))

    def ok(self, case_c_best: float) -> bool:
        delays = min(self.ttfb_delayed) >= MANY_DELAY_MS / 1000
        cheap = self.proxy_cpu < 0.10 * case_c_best
        return delays and cheap and self.extra < 0.05 * case_c_best


def _ttfb(urls: list[str]) -> list[float]:
    argv = ["curl", "-q", "-s", "-f", "-w", "%{time_starttransfer}\\n"]
    for u in urls:
        argv += ["-o", "/dev/null", u]
    cp = subprocess.run(argv, capture_output=True, text=True, check=True, env=clean_env())
    return [float(x) for x in cp.stdout.split()]


def proxy_check(ctx: Ctx, files: Sequence[ManyFile], bulk: Blob, reps: int) -> ProxyCheck:
    log("\n== delay proxy self-check")
    srv = ctx.srv
    few = [f"/many/{f.name}" for f in files[:3]]
    ttfb_direct = _ttfb([srv.url(p) for p in few])
    ttfb_delayed = _ttfb([srv.url(p, str(MANY_DELAY_MS)) for p in few])
    log(
        "  time to first byte, 3 requests on one keep-alive connection: direct "
        + ", ".join(f"{t * 1000:.1f}" for t in ttfb_direct)
        + f" ms; via {MANY_DELAY_MS} ms proxy "
        + ", ".join(f"{t * 1000:.1f}" for t in ttfb_delayed)
        + " ms"
    )
    # the strongest peer (aria2c -j8) straight to nginx, through the 0 ms and the 30 ms proxy
    variants = [
        (label, next(t for t in many_tools(ctx, files, via, label) if t.name == "aria2c-j8"))
        for label, via in (("direct", None), ("proxy0", "0"), ("delay", str(MANY_DELAY_MS)))
    ]
    walls: dict[str, list[float]] = {label: [] for label, _ in variants}
    cpus: list[float] = []
    assert srv.proxy is not None
    for rep in range(reps):
        for label, tool in variants if rep % 2 == 0 else variants[::-1]:  # alternate the order
            out = ctx.fresh_out()
            lp = ctx.log_path("proxycheck", label, rep)
            c0 = process_cpu(srv.proxy.pid)
            pr = run_proc(tool.argv(out), lp, 120, ctx.env())
            if label == "delay":
                cpus.append(process_cpu(srv.proxy.pid) - c0)
            err = verify_many(out, files) if pr.rc == 0 else f"exit {pr.rc}: {log_tail(lp)}"
            ctx.clear_out()
            if err:
                raise RuntimeError(f"proxy check ({label}) failed: {err}")
            walls[label].append(pr.wall)
    proxy_cpu = statistics.median(cpus)
    log(
        "  aria2c -j8, case C files, min/median s: "
        + ", ".join(f"{k} {min(v):.3f}/{statistics.median(v):.3f}" for k, v in walls.items())
        + f"; proxy CPU per delayed run {proxy_cpu:.3f} s"
    )
    # raw proxy throughput ceiling: one curl stream of a big blob
    bulk_t: dict[str, float] = {}
    for label, via in (("direct", None), ("proxy0", "0")):
        out = ctx.fresh_out()
        url = srv.url(f"/plain/{bulk.name}", via)
        lp = ctx.log_path("proxycheck", f"bulk-{label}", 0)
        argv = ["curl", "-q", "-s", "-f", "-o", str(out / bulk.name), url]
        pr = run_proc(argv, lp, 300, ctx.env())
        err = verify_blob(out, bulk.name, bulk, 0) if pr.rc == 0 else f"exit {pr.rc}"
        ctx.clear_out()
        if err:
            raise RuntimeError(f"proxy bulk check ({label}) failed: {err}")
        bulk_t[label] = pr.wall
    log(
        f"  curl {bulk.size / MiB:.0f} MiB: direct {bulk.size / MiB / bulk_t['direct']:.0f} MiB/s, "
        f"via 0 ms proxy {bulk.size / MiB / bulk_t['proxy0']:.0f} MiB/s "
        f"(case C needs ~{sum(f.size for f in files) / MiB / 1.2:.0f} MiB/s at most)"
    )
    return ProxyCheck(
        ttfb_direct,
        ttfb_delayed,
        walls,
        proxy_cpu,
        bulk_t["direct"],
        bulk_t["proxy0"],
        bulk.size,
    )


# --------------------------------------------------------------------------------------------
# Case D: rate-limiter accuracy, measured from progress while the download runs
# --------------------------------------------------------------------------------------------

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
            _killpg(p.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(3)
            _killpg(p.pid)
            p.wait()
        _killpg(p.pid)
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


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt_ratio(peer: Summary, mh: Summary | None) -> str:
    if mh is None or not mh.ok or not peer.ok:
        return "—"
    return f"{peer.wall / mh.wall:.2f}×"


def case_table(case: Case, sums: list[Summary]) -> str:
    mh = next((s for s in sums if s.tool == "modelhaul"), None)
    rows = [
        f"### {case.key} — {case.title}\n",
        f"Emulates: {case.emulates}. Payload {case.payload / MiB:.1f} MiB per run.\n",
        "| tool | median wall s | min–max s | MiB/s | CPU s/GiB | peak RSS MB "
        "| modelhaul speed ratio (peer time / modelhaul time) | bg CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sums:
        if not s.runs:
            continue
        if not s.ok:
            bad = [r for r in s.runs if not r.ok]
            rows.append(
                f"| {s.tool} | FAILED {len(bad)}/{len(s.runs)} | {bad[0].error[:120]} | | | | | |"
            )
            continue
        walls = [r.wall for r in s.runs]
        rows.append(
            f"| {s.tool} | {s.wall:.2f} | {min(walls):.2f}–{max(walls):.2f} | {s.mib_s:.0f} "
            f"| {s.cpu_per_gib:.2f} | {s.rss / 1e6:.0f} | {fmt_ratio(s, mh)} | {s.bg * 100:.0f} % |"
        )
    return "\n".join(rows) + "\n"


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


def targets_table(
    sums: dict[str, list[Summary]], limiter: list[LimiterRun] | None, quick: bool
) -> str:
    def get(case: str, tool: str) -> Summary | None:
        s = next((s for s in sums.get(case, []) if s.tool == tool), None)
        return s if s and s.ok else None

    rows: list[tuple[str, str, str]] = []

    def ratio_row(label: str, case: str, peer: str, need: float) -> None:
        mh, p = get(case, "modelhaul"), get(case, peer)
        if case not in sums:
            return
        if not (mh and p):
            rows.append((label, "n/a (missing or failed run)", "—"))
            return
        r = p.wall / mh.wall
        rows.append((label, f"{r:.2f}×", "PASS" if r >= need else "FAIL"))

    ratio_row("B capped: modelhaul ≥ 1.1× hf_transfer-16", "B", "hf_transfer-16", 1.1)
    ratio_row("B capped: modelhaul ≥ 1.3× aria2c -x16", "B", "aria2c-x16", 1.3)
    ratio_row("A unshaped (+SHA-256): modelhaul wall ≤ hf_transfer-16", "A", "hf_transfer-16", 1.0)
    if "A" in sums:
        mh, curl = get("A", "modelhaul"), get("A", "curl")
        if mh and curl:
            rows.append(
                (
                    "A unshaped: modelhaul CPU s/GiB ≤ curl",
                    f"{mh.cpu_per_gib:.2f} vs {curl.cpu_per_gib:.2f}",
                    "PASS" if mh.cpu_per_gib <= curl.cpu_per_gib else "FAIL",
                )
            )
        else:
            rows.append(("A unshaped: modelhaul CPU s/GiB ≤ curl", "n/a", "—"))
    mh_rss = [s.rss for c in sums.values() for s in c if s.tool == "modelhaul" and s.ok]
    if mh_rss:
        rows.append(
            (
                "peak RSS < 150 MB (modelhaul default, all cases)",
                f"{max(mh_rss) / 1e6:.0f} MB",
                "PASS" if max(mh_rss) < RSS_TARGET else "FAIL",
            )
        )
    if "C" in sums:
        mh = get("C", "modelhaul")
        peers = [s for s in sums["C"] if not s.modelhaul and s.ok]
        if mh and peers:
            best = min(peers, key=lambda s: s.wall)
            r = best.wall / mh.wall
            rows.append(
                (
                    f"C many files: modelhaul ≥ 1.2× best peer ({best.tool})",
                    f"{r:.2f}×",
                    "PASS" if r >= 1.2 else "FAIL",
                )
            )
        else:
            rows.append(("C many files: modelhaul ≥ 1.2× best peer", "n/a", "—"))
    if limiter is not None:
        for name in sorted({r.tool for r in limiter if r.tool.startswith("modelhaul")}):
            rs = [r for r in limiter if r.tool == name]
            if not all(r.ok for r in rs):
                rows.append((f"D {name}: limiter", "failed run(s)", "FAIL"))
                continue
            worst = max(rs, key=lambda r: abs(r.err_pct))
            rows.append(
                (
                    f"D {name}: aggregate within 5 % of 20 MiB/s",
                    f"{worst.err_pct:+.1f} % (worst rep)",
                    "PASS" if all(abs(r.err_pct) <= 5 for r in rs) else "FAIL",
                )
            )
            fairs = [r.min_share_of_fair for r in rs if r.min_share_of_fair is not None]
            if fairs:
                rows.append(
                    (
                        f"D {name}: no download < ½ fair share",
                        f"min share = {min(fairs):.2f}× fair",
                        "PASS" if min(fairs) >= 0.5 else "FAIL",
                    )
                )
    if not rows:
        return ""
    head = "### Targets (modelhaul default)\n\n"
    if quick:
        head += "_Quick run: smaller files, 1 rep — indicative only._\n\n"
    return (
        head
        + "| target | measured | result |\n|---|---|---|\n"
        + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
        + "\n"
    )


def proxy_table(pc: ProxyCheck, case_c: list[Summary] | None) -> str:
    ok_runs = [s.wall for s in case_c or [] if s.ok]
    # without case C results, judge against its latency floor: 300 requests x 30 ms / 8 in flight
    best = min(ok_runs) if ok_runs else MANY_COUNT * MANY_DELAY_MS / 1000 / 8
    w = {k: (min(v), statistics.median(v)) for k, v in pc.walls.items()}
    return (
        "### Delay proxy self-check\n\n"
        f"- time to first byte of 3 requests on one keep-alive connection: "
        f"direct {', '.join(f'{t * 1000:.1f}' for t in pc.ttfb_direct)} ms; via the "
        f"{MANY_DELAY_MS} ms proxy {', '.join(f'{t * 1000:.1f}' for t in pc.ttfb_delayed)} ms\n"
        f"- aria2c -j8 on case C's files, min / median of {len(pc.walls['direct'])}: "
        f"direct {w['direct'][0]:.3f} / {w['direct'][1]:.3f} s, "
        f"0 ms proxy {w['proxy0'][0]:.3f} / {w['proxy0'][1]:.3f} s, "
        f"{MANY_DELAY_MS} ms proxy {w['delay'][0]:.3f} / {w['delay'][1]:.3f} s\n"
        f"- proxy cost: {pc.extra * 1000:+.0f} ms best-vs-best "
        f"({pc.extra / best * 100:.1f} % of case C's fastest median, {best:.2f} s); "
        f"proxy CPU {pc.proxy_cpu:.3f} s per delayed run ({pc.proxy_cpu / best * 100:.1f} %)\n"
        f"- proxy throughput ceiling (one curl stream of {pc.bulk_bytes / MiB:.0f} MiB): "
        f"direct {pc.bulk_bytes / MiB / pc.bulk_direct:.0f} MiB/s, "
        f"via proxy {pc.bulk_bytes / MiB / pc.bulk_proxy0:.0f} MiB/s\n"
        "- verdict: "
        + (
            "OK — delays every request; costs < 5 % of case C's time and < 10 % in CPU"
            if pc.ok(best)
            else "CHECK — the proxy may distort case C (delay missing or cost above limits)"
        )
        + "\n"
    )


def _first_line(argv: list[str]) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=clean_env())
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    out = (cp.stdout or cp.stderr).strip().splitlines()
    return out[0] if out else "?"


def environment(ctx: Ctx) -> list[str]:
    py = ctx.peer_python
    git = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"])
    meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}; host: {os.cpu_count()} CPUs, "
        f"{int(meminfo) / 2**20:.0f} GiB RAM, Linux {platform.release()}; "
        f"load average at start {os.getloadavg()[0]:.2f}",
        f"- repo: {git}{' (src/ has uncommitted changes)' if dirty not in ('', '?') else ''}; "
        f"modelhaul command: `{shlex.join(ctx.mh) if ctx.mh else 'not available (peers only)'}`",
        f"- {_first_line(['curl', '--version'])}",
        f"- {_first_line(['aria2c', '--version'])}",
        f"- {_first_line([shutil.which('nginx') or '/usr/sbin/nginx', '-v'])}",
        "- hf_transfer "
        + _first_line([py, "-c", "import hf_transfer; print(hf_transfer.__version__)"])
        + ", requests "
        + _first_line([py, "-c", "import requests; print(requests.__version__)"]),
        f"- downloads written to `{ctx.out_root}` (tmpfs), deleted after every run; "
        "served files read once before each case (page cache warm)",
    ]


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

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
}


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
    return argv


def default_peer_python() -> str:
    venv = WORK / "venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


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
        help="cases to run: A|plain, B|capped, C|many, D|limiter (comma list, repeatable)",
    )
    ap.add_argument("--tools", metavar="REGEX", help="only tools whose name matches")
    ap.add_argument(
        "--tool-cmd",
        help="modelhaul command (default: .venv/bin/modelhaul), e.g. "
        "'.venv/bin/python -m modelhaul.cli.main'",
    )
    ap.add_argument("--no-modelhaul", action="store_true", help="peers only")
    ap.add_argument("--peer-python", default=default_peer_python(), help="bench venv python")
    ap.add_argument("--out-dir", type=Path, default=Path(f"/dev/shm/modelhaul-bench-{os.getpid()}"))
    ap.add_argument("--results", type=Path, default=HERE / "results.md")
    args = ap.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    cases = set()
    for item in args.only:
        for name in filter(None, (x.strip().lower() for x in item.split(","))):
            if name not in CASE_ALIASES:
                ap.error(f"unknown case {name!r}")
            cases.add(CASE_ALIASES[name])
    args.cases = cases or {"A", "B", "C", "D"}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_begin = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    WORK.mkdir(parents=True, exist_ok=True)
    mh = None if args.no_modelhaul else find_modelhaul(args.tool_cmd)
    tool_re = re.compile(args.tools) if args.tools else None

    # data
    big = ensure_blob("1g.bin", GiB)
    if args.quick:
        plain, capped = big, ensure_blob("256m.bin", 256 * MiB)
    else:
        plain = ensure_blob("4g.bin", 4 * GiB) if "A" in args.cases else big
        capped = big
    # distinct content per download: modelhaul fetches identical SHA-256s only once
    links = [ensure_blob(f"lim{i}.bin", 256 * MiB) for i in range(4)] if "D" in args.cases else []
    files = ensure_many() if "C" in args.cases else []

    results: dict[str, list[Summary]] = {}
    cases: dict[str, Case] = {}
    limiter: list[LimiterRun] | None = None
    pcheck: ProxyCheck | None = None
    args.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with Servers(args.peer_python) as srv:
            ctx = Ctx(args, srv, mh)
            if "A" in args.cases:
                cases["A"] = blob_case(
                    ctx,
                    "A",
                    "plain",
                    plain,
                    "a fast unshaped link (local mirror / datacenter); modelhaul includes "
                    "its SHA-256 verification, peers verify nothing",
                    floor=16 * MiB,
                )
            if "B" in args.cases:
                cases["B"] = blob_case(
                    ctx,
                    "B",
                    "capped",
                    capped,
                    "a CDN that caps every TCP flow at 20 MiB/s (nginx limit_rate 20m)",
                    floor=8 * MiB,
                )
            if "C" in args.cases:
                cases["C"] = many_case(ctx, files)
                pcheck = proxy_check(ctx, files, capped, reps=4)
            for key, case in cases.items():
                if tool_re:
                    case.tools = [t for t in case.tools if tool_re.search(t.name)]
                if case.tools:
                    results[key] = run_case(ctx, case, args.reps)
            if "D" in args.cases:
                warm_cache([big.path, *(b.path for b in links)])
                limiter = run_limiter_case(ctx, links, big, args.reps, tool_re)
            env_lines = environment(ctx)
    finally:
        shutil.rmtree(args.out_dir, ignore_errors=True)

    elapsed = time.monotonic() - t_begin
    md = [
        "# modelhaul benchmark results\n",
        f"Command: `{shlex.join(['benchmarks/run.sh', *(argv if argv is not None else sys.argv[1:])])}` "
        f"— {'QUICK smoke run (smaller files), ' if args.quick else ''}{args.reps} rep(s) per "
        f"tool, medians; total {elapsed / 60:.1f} min.\n",
        *env_lines,
        "",
        "Speed ratio = peer median wall time / modelhaul (default settings) median wall time; "
        "> 1 means modelhaul is faster. CPU = user+sys of the tool process tree (wait4 rusage), "
        "peak RSS = ru_maxrss. MiB = 2^20 bytes, MB = 10^6 bytes. bg CPU = median share of all "
        "cores busy with other work during the run (machine busy − tool − nginx/proxy): "
        "noise from other jobs; runs with high bg are suspect.\n",
    ]
    for key in sorted(results):
        md.append(case_table(cases[key], results[key]))
    if pcheck:
        md.append(proxy_table(pcheck, results.get("C")))
    if limiter is not None:
        md.append(limiter_table(limiter))
    tt = targets_table(results, limiter, args.quick) if mh else ""
    if tt:
        md.append(tt)
    text = "\n".join(md)
    log("\n" + text)
    args.results.write_text(text)
    raw = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "cases": {k: [asdict(s) for s in v] for k, v in results.items()},
        "limiter": [asdict(r) for r in limiter or []],
        "proxy_check": asdict(pcheck) if pcheck else None,
    }
    (WORK / "results.json").write_text(json.dumps(raw, indent=1, default=str))
    log(f"wrote {args.results} and {WORK / 'results.json'} ({elapsed / 60:.1f} min)")
    failed = any(not s.ok for v in results.values() for s in v) or any(
        not r.ok for r in limiter or []
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
