"""Many small files: one request each, connections reused across files, little CPU per file.

Connections are counted at the origin (one client address and port per TCP connection); CPU
is the download process's own accounting (getrusage), measured in a subprocess so the origin's
work is not in it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import blob, sha
from modelhaul.config import ManagerConfig
from modelhaul.engine.downloader import Downloader
from modelhaul.errors import IntegrityError
from modelhaul.manager.downloads import DownloadManager
from origin import Fault, Origin

KiB = 1024


def _add_files(origin: Origin, n: int, *, seed: int = 0) -> dict[str, bytes]:
    """``n`` files of 1 KiB to 64 KiB, as a model repository's configs and tokenizers."""
    files = {f"f{i:03d}.bin": blob(KiB + (i * 7919) % (63 * KiB), seed + i) for i in range(n)}
    for name, data in files.items():
        origin.add_file(name, data)
    return files


async def _fetch_all(
    origin: Origin, files: dict[str, bytes], out: Path, state: Path, config: ManagerConfig
) -> None:
    async with DownloadManager(config, state_dir=state) as mgr:
        handles = [
            mgr.add(origin.url(name), out / name, sha256=sha(data)) for name, data in files.items()
        ]
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 60)
    for name, data in files.items():
        assert (out / name).read_bytes() == data


def test_a_small_file_costs_one_request(origin: Origin, tmp_path: Path) -> None:
    data = blob(300 * KiB)
    origin.add_file("one.bin", data)
    out = tmp_path / "out"

    async def go() -> None:
        async with Downloader(state_dir=tmp_path / "state") as dl:
            result = await dl.download(origin.url("one.bin"), out / "one.bin", sha256=sha(data))
        assert result.size == len(data)

    asyncio.run(asyncio.wait_for(go(), 30))
    assert (out / "one.bin").read_bytes() == data
    # No separate probe (HEAD or a first small range): the one GET brings the whole file.
    requests = origin.requests
    assert [(r.method, r.served) for r in requests] == [("GET", (0, len(data)))]
    # Nothing is left beside the file.
    assert sorted(p.name for p in out.iterdir()) == ["one.bin"]


def test_a_small_body_cut_short_resumes_from_memory(origin: Origin, tmp_path: Path) -> None:
    # A body that fits one write batch is held in memory until verified; a connection lost
    # midway resumes with a ranged request for the rest, as on disk.
    data = blob(300 * KiB, seed=3)
    origin.add_file("cut.bin", data)
    origin.plan("cut.bin", [Fault(drop_after=100 * KiB)])
    out = tmp_path / "out"

    async def go() -> None:
        async with Downloader(state_dir=tmp_path / "state") as dl:
            result = await dl.download(origin.url("cut.bin"), out / "cut.bin", sha256=sha(data))
        assert result.size == len(data) and result.sha256 == sha(data)

    asyncio.run(asyncio.wait_for(go(), 30))
    assert (out / "cut.bin").read_bytes() == data
    served = origin.ranges_served("cut.bin")
    assert served[0][0] == 0 and served[-1][1] == len(data) and len(served) == 2
    assert sorted(p.name for p in out.iterdir()) == ["cut.bin"]


def test_a_small_body_that_fails_its_checksum_leaves_nothing(
    origin: Origin, tmp_path: Path
) -> None:
    data = blob(40 * KiB, seed=4)
    origin.add_file("bad.bin", data)
    out = tmp_path / "out"
    state = tmp_path / "state"

    async def go() -> None:
        async with Downloader(state_dir=state) as dl:
            await dl.download(origin.url("bad.bin"), out / "bad.bin", sha256=sha(b"other"))

    with pytest.raises(IntegrityError):
        asyncio.run(asyncio.wait_for(go(), 30))
    # Verified before anything was written: no file, no partial file, no completion record.
    assert not out.exists() or sorted(out.iterdir()) == []
    assert not (state / "done").exists() or sorted((state / "done").iterdir()) == []


def test_small_files_share_connections_with_j4(origin: Origin, tmp_path: Path) -> None:
    files = _add_files(origin, 50)
    config = ManagerConfig(max_active_files=4, max_small_files=4, adaptive=False)
    asyncio.run(_fetch_all(origin, files, tmp_path / "out", tmp_path / "state", config))
    assert len(origin.requests) == 50  # one request per file
    # Four files at a time need four connections, kept alive from file to file.
    assert origin.connections() <= 5


def test_small_files_open_no_more_connections_than_in_flight(
    origin: Origin, tmp_path: Path
) -> None:
    # Default limits: up to 32 small files at once, 16 connections per host at most.
    files = _add_files(origin, 3)
    asyncio.run(_fetch_all(origin, files, tmp_path / "a", tmp_path / "state", ManagerConfig()))
    assert len(origin.requests) == 3
    assert origin.connections() <= 3
    origin.reset_stats()
    files = _add_files(origin, 100, seed=100)
    asyncio.run(_fetch_all(origin, files, tmp_path / "b", tmp_path / "state", ManagerConfig()))
    assert len(origin.requests) == 100
    assert origin.connections() <= ManagerConfig().max_connections_per_host


# Runs `get -i` in a fresh interpreter, after the imports: one file (twice), then many (five
# times). The difference over the extra files is the cost of a file, start-up and set-up
# excluded: of the whole process, and of the event loop's thread alone (the loop runs in the
# main thread, so its CPU is time.thread_time there; the writer threads are not in it). A fixed
# piece of pure-Python work is timed beside it, and right after each run of the list: on a busy
# machine both slow down alike, so the cost is judged in units of it (the loop's, of the one
# timed next to it).
_CPU_DRIVER = """
import json, resource, sys, time
from modelhaul.cli.main import main

LOOP = {}  # the event loop's own CPU (it runs in this thread: asyncio.run), by run

def cpu_s(work, *args):
    before = resource.getrusage(resource.RUSAGE_SELF)
    loop_before = time.thread_time()
    work(*args)
    LOOP[len(LOOP)] = time.thread_time() - loop_before
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)

def get(args):
    assert main(args) == 0

def reference():
    for i in range(20_000):
        json.loads(json.dumps({"i": i, "name": "x" * (i % 50), "items": list(range(i % 20))}))

one, many, out = sys.argv[1:4]
ref = [cpu_s(reference)]
first = cpu_s(get, ["get", "-i", one, "-d", out + "/one", "-q"])
again = cpu_s(get, ["get", "-i", one, "-d", out + "/one-again", "-q"])
many_s = cpu_s(get, ["get", "-i", many, "-d", out + "/many", "-q"])
pairs = []  # (the loop's CPU for the list, the reference's right after it)
for k in range(5):
    if k:
        cpu_s(get, ["get", "-i", many, "-d", out + f"/many-{k}", "-q"])
    loop_s = LOOP[len(LOOP) - 1]
    pairs.append((loop_s, cpu_s(reference)))
ref.extend(r for _, r in pairs)
print(json.dumps({"one": min(first, again), "many": many_s, "reference": min(ref),
                  "loop_one": min(LOOP[1], LOOP[2]), "pairs": pairs}))
"""


def test_cpu_per_small_file(origin: Origin, tmp_path: Path, isolated_home: Path) -> None:
    n = 200
    files = _add_files(origin, n)
    lines = [
        f"{origin.url(name)}\n  out={name}\n  sha256={sha(data)}\n" for name, data in files.items()
    ]
    one, many = tmp_path / "one.txt", tmp_path / "many.txt"
    one.write_text(lines[0])
    many.write_text("".join(lines))
    proc = subprocess.run(
        [sys.executable, "-c", _CPU_DRIVER, str(one), str(many), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    cpu = json.loads(proc.stdout.strip().splitlines()[-1])
    per_file_s = (cpu["many"] - cpu["one"]) / (n - 1)
    for name, data in files.items():
        assert (tmp_path / "many" / name).read_bytes() == data
    # In units of the reference work (about 0.1 s of CPU here): measured 0.026-0.035 (2.8-4.1
    # ms) before the per-file work was cut, 0.019-0.021 (2.1-2.4 ms) after, on the shared VM;
    # 0.011-0.020 both before and after the small files' writer-thread jobs (issue 15), which
    # moved the loop's file system calls to a thread rather than removing them.
    ratio = per_file_s / cpu["reference"]
    # The loop's cost per file in units of the reference timed next to it; the best run.
    loop_ratio, loop_s = min(
        ((m - cpu["loop_one"]) / (n - 1) / r, (m - cpu["loop_one"]) / (n - 1))
        for m, r in cpu["pairs"]
    )
    print(
        f"PER_FILE_MS {per_file_s * 1000:.3f} LOOP_MS {loop_s * 1000:.3f} "
        f"REF_S {cpu['reference']:.3f} RATIO {ratio:.4f} LOOP_RATIO {loop_ratio:.4f}"
    )
    assert ratio < 0.025, f"{per_file_s * 1000:.2f} ms of CPU per small file ({ratio:.4f})"
    # The event loop's own thread (before session 10: the best of three runs of the list, over
    # the least reference): measured 0.0094-0.0166 (0.83-1.58 ms), most runs above 0.011,
    # while the loop still created, wrote, hashed and recorded each small file itself;
    # 0.0062-0.0103 (0.52-0.88 ms) once one writer-thread job does that. Session 10, each run
    # of the list over the reference timed right after it (the two met the same load), the
    # best run, load average 2.5-4.9, 20 runs each interleaved: that code 0.0061-0.0087
    # (median 0.0076); with -q building no events or result records, one listing per output
    # folder and the proxy known by origin 0.0049-0.0078 (median 0.0062). On a busy VM the two
    # overlap: the bound leaves the new code 5 % of margin under load (a red CI for noise
    # costs more than a regression caught a run later) and catches a return of the old
    # per-file work in about a third of the runs, a return of the pre-session-9 work always.
    # Session 12 (known_absent: no file system look-ups per file on the loop), three runs
    # each, interleaved: 0.0071-0.0072 (0.62-0.66 ms), that session's main 0.0079-0.0084.
    loop_ms = loop_s * 1000
    assert loop_ratio < 0.0082, f"{loop_ms:.2f} ms of loop CPU per file ({loop_ratio:.4f})"
