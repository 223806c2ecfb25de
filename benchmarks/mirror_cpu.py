"""The mirror's own CPU per GiB it serves: one ``modelhaul serve --upstream FAKEHUB``, N
concurrent ``curl`` readers of one large LFS file over loopback.

A micro benchmark of the serving path alone (case G measures stock clients too): the server's
CPU seconds come from /proc/PID/stat, so they hold on a busy machine where wall times do not.
Phases: ``cold`` (the file is fetched upstream once while every reader streams it from the
growing partial file), then ``--reps`` times ``warm`` (the file is in the store).

    PYTHONPATH=src .venv/bin/python benchmarks/mirror_cpu.py --size-mib 1024 --clients 8

Prints one line per phase: wall, server CPU-s (user, system), the readers' CPU-s (kernel work
can move between the two ends of a loopback connection), server CPU-s per GiB served (cold: the
upstream fetch included), and the server's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "support")]

from fakehub import FakeHub  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) * TICK_S, int(fields[12]) * TICK_S


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("modelhaul serve did not listen")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_cpu_s() -> float:
    """CPU seconds of this process's reaped children (the readers; the server runs on)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# What huggingface_hub's http_get does: httpx, a stream read 10 MB at a time into a file.
HTTPX_READER = """
import sys, httpx
n = 0
with open(sys.argv[2], "wb") as f, httpx.stream("GET", sys.argv[1], timeout=60) as r:
    for chunk in r.iter_bytes(10 * 1024 * 1024):
        n += f.write(chunk)
print(n)
"""


def reader_argv(kind: str, url: str, out: str) -> list[str]:
    if kind == "httpx":
        return [sys.executable, "-c", HTTPX_READER, url, out]
    return ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", url]


def readers(url: str, n: int, size: int, kind: str, tmp: str) -> float:
    """n concurrent readers of url (curl to /dev/null, or httpx into a file as huggingface_hub
    reads); wall seconds; each must get size bytes."""
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            reader_argv(kind, url, f"{tmp}/out-{i}"), stdout=subprocess.PIPE, text=True
        )
        for i in range(n)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0 or int(out or 0) != size:
            raise RuntimeError(f"a reader got {out} bytes (exit {p.returncode}), not {size}")
    for i in range(n):
        Path(f"{tmp}/out-{i}").unlink(missing_ok=True)
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3, help="warm phases")
    ap.add_argument("--reader", choices=("curl", "httpx"), default="curl")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    size = args.size_mib * MiB
    block = os.urandom(16 * MiB)
    content = (block * (size // len(block) + 1))[:size]
    results: list[dict[str, float | str]] = []
    with tempfile.TemporaryDirectory(prefix="mirrorcpu-") as tmp, FakeHub() as hub:
        hub.add_repo("bench/model", {"model.bin": content})
        del content
        port = free_port()
        env = {
            **os.environ,
            "HF_HOME": f"{tmp}/hf_home",
            "HF_HUB_CACHE": f"{tmp}/hub",
            "MODELHAUL_STATE_DIR": f"{tmp}/state",
        }
        argv = [sys.executable, "-m", "modelhaul.cli.main", "serve", "--port", str(port)]
        argv += ["--upstream", hub.endpoint, "-d", f"{tmp}/downloads"]
        server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
        try:
            wait_port(port)
            url = f"http://127.0.0.1:{port}/hf/bench/model/resolve/main/model.bin"
            phases = ["cold"] + ["warm"] * args.reps
            for phase in phases:
                (u0, s0), k0 = cpu_s(server.pid), children_cpu_s()
                wall = readers(url, args.clients, size, args.reader, tmp)
                (u1, s1), clients = cpu_s(server.pid), children_cpu_s() - k0
                used = u1 - u0 + s1 - s0
                served_gib = args.clients * size / GiB
                row = {
                    "phase": phase,
                    "wall_s": round(wall, 2),
                    "server_cpu_s": round(used, 2),
                    "user_s": round(u1 - u0, 2),
                    "sys_s": round(s1 - s0, 2),
                    "clients_cpu_s": round(clients, 2),
                    "cpu_s_per_gib_served": round(used / served_gib, 3),
                    "rss_peak_mb": round(rss_peak_mb(server.pid), 1),
                }
                results.append(row)
                print(
                    f"{phase:5}  wall {wall:6.2f} s  server CPU {used:6.2f} s "
                    f"(user {u1 - u0:.2f}, sys {s1 - s0:.2f})  clients CPU {clients:.2f} s  "
                    f"{used / served_gib:.3f} CPU-s/GiB served  peak RSS {row['rss_peak_mb']} MB",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(30)
    warm = [float(r["server_cpu_s"]) for r in results if r["phase"] == "warm"]
    if warm:
        print(
            f"warm median server CPU {statistics.median(warm):.2f} s "
            f"(min {min(warm):.2f}, max {max(warm):.2f})"
        )
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
