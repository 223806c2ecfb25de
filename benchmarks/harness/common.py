"""Paths, constants and process helpers shared by every part of the harness."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
REPO = HERE.parent
WORK = HERE / "_work"
DATA = WORK / "data"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

CAP_RATE = 20 * MiB  # nginx "limit_rate 20m" = 20 MiB/s per connection
LIMIT_RATE = 20 * MiB  # modelhaul "--limit-rate 20M" target for case D
HF_CHUNK = 10 * MiB  # huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE
MANY_SEED, MANY_COUNT, MANY_MIN, MANY_MAX = 20240611, 300, 1 * KiB, 2 * MiB
RTT_MS = 30  # the round trip of cases C, E and F
RSS_TARGET = 150_000_000  # bytes (150 MB, decimal)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, flush=True)


def clean_env() -> dict[str, str]:
    """Environment for every child: no HTTP proxies (everything targets 127.0.0.1)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    for k in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        env.pop(k, None)  # a case that needs a CA sets it itself
    for k in [k for k in env if k.startswith("HF_") or k.startswith("HUGGINGFACE_")]:
        del env[k]  # no token, endpoint or cache of the user's leaks into a run
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


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


def killpg(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_child(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """Stop a child started with start_new_session=True (its own process group)."""
    if p.poll() is None:
        killpg(p.pid, sig)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            killpg(p.pid)
            p.wait()
    killpg(p.pid)


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


def first_line(argv: list[str]) -> str:
    """First line a command prints (stdout, else stderr), or "?"."""
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=clean_env())
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    out = (cp.stdout or cp.stderr).strip().splitlines()
    return out[0] if out else "?"
