"""The event loop's CPU per file of a list, for modelhaul and for the least an aiohttp client
does, so the per-file cost of issue 15's case C can be judged against what is left to cut.

    python benchmarks/loop_cpu.py LIST OUT_DIR [--reps N] [--connections N]

LIST is a ``modelhaul get -i`` list (URL lines, indented ``out=`` and ``sha256=``), served by
a local origin (the harness's nginx serves case C's files under /many/). Three rows, each the
main thread's CPU (the loop runs there) over the run, per file; median and range of the reps
after one warm-up run, in one process, so imports and start-up are not in it:

- ``aiohttp``: a GET per URL on a pool of connections, the body read into memory, nothing
  else: what the HTTP library alone costs the loop.
- ``aiohttp + publish``: and for each body one thread-pool job that hashes it, writes it to a
  new file, fsyncs and renames it: what a verified, durable file costs at the least. Worker
  threads that create, sync and rename files make the loop's own system calls dearer (the
  threads take the GIL at each of them) on a 2-core VM.
- ``modelhaul``: ``modelhaul get -i LIST -d OUT -q`` (the CLI's main, in this process).

Run it with the interpreter modelhaul is installed in.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp


def read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if "://" in line]


def aiohttp_run(urls: list[str], out: Path, connections: int, publish: bool) -> None:
    pool = ThreadPoolExecutor(4)

    def commit(i: int, body: bytes) -> None:
        hashlib.sha256(body).hexdigest()
        tmp = out / f"f{i}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, out / f"f{i}")

    async def one(session: aiohttp.ClientSession, sem: asyncio.Semaphore, i: int, url: str) -> None:
        async with sem:
            async with session.get(url) as r:
                r.raise_for_status()
                body = await r.read()
            if publish:
                await asyncio.wrap_future(pool.submit(commit, i, body))

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as s:
            sem = asyncio.Semaphore(connections)
            await asyncio.gather(*(one(s, sem, i, u) for i, u in enumerate(urls)))

    try:
        asyncio.run(main())
    finally:
        pool.shutdown()


def modelhaul_run(listing: Path, out: Path) -> None:
    from modelhaul.cli.main import main

    if main(["get", "-i", str(listing), "-d", str(out), "-q"]) != 0:
        raise SystemExit("modelhaul get failed")


def loop_cpu_s(run: Callable[[Path], None], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    before = time.thread_time()
    run(out)
    return time.thread_time() - before


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("list", type=Path)
    ap.add_argument("out", type=Path, help="a scratch directory on the disk to judge")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    urls = read_list(args.list)
    if not urls:
        ap.error(f"{args.list} names no URL")
    rows: dict[str, Callable[[Path], None]] = {
        "aiohttp": lambda out: aiohttp_run(urls, out, args.connections, publish=False),
        "aiohttp + publish": lambda out: aiohttp_run(urls, out, args.connections, publish=True),
        "modelhaul": lambda out: modelhaul_run(args.list, out),
    }
    print(f"{len(urls)} files; event-loop CPU per file, ms (median, min-max of {args.reps})")
    print("| client | median | min-max |\n|---|---:|---:|")
    for name, run in rows.items():
        loop_cpu_s(run, args.out)  # warm-up: imports, first connections
        per_file = [loop_cpu_s(run, args.out) * 1000 / len(urls) for _ in range(args.reps)]
        print(
            f"| {name} | {statistics.median(per_file):.3f} "
            f"| {min(per_file):.3f}-{max(per_file):.3f} |"
        )
    shutil.rmtree(args.out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
