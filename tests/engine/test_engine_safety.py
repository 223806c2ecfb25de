"""Engine tests for what must never go wrong: credentials leaking to another host, redirects to
nowhere, a full disk, two downloads of one file at once, a runaway bandwidth or memory use.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import blob, mounted_tmpfs, sha
from helpers import download_config as config
from modelhaul.config import MiB
from modelhaul.disk import files
from modelhaul.engine.downloader import Downloader
from modelhaul.errors import DiskFull, ModelhaulError, RedirectRefused
from modelhaul.events import Result
from modelhaul.policy.ratelimit import TokenBucket
from origin import Fault, Origin

KiB = 1024
SECRET = {"Authorization": "Bearer s3cret", "Cookie": "session=s3cret"}


def wait_bytes_while_running(
    origin: Origin, name: str, n: int, proc: subprocess.Popen[bytes], timeout: float = 60
) -> None:
    """origin.wait_bytes, but fail at once (with its stderr) if ``proc`` dies first."""
    for _ in range(int(timeout / 0.25)):
        try:
            origin.wait_bytes(name, n, timeout=0.25)
            return
        except TimeoutError:
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"the download exited with {proc.returncode}: {err.decode()}")
    raise TimeoutError(f"{n} bytes of {name} not served within {timeout} s")


# ---------------------------------------------------------------------- credentials and redirects


@pytest.mark.parametrize("via", ["argument", "config"])
async def test_credentials_never_follow_a_redirect_to_another_host(
    origin: Origin, tmp_path: Path, state_dir: Path, via: str
) -> None:
    data = blob(24 * MiB, seed=1)
    origin.add_file("cdn.bin", data)
    origin.add_redirect("api", origin.url("cdn.bin", alt=True))
    if via == "config":
        cfg, headers = config(headers=tuple(SECRET.items()), segments={"connections": 4}), None
    else:
        cfg, headers = config(segments={"connections": 4}), SECRET
    async with Downloader(cfg, state_dir=state_dir) as dl:
        await dl.download(origin.url("api"), tmp_path / "m.bin", headers=headers)
    assert (tmp_path / "m.bin").read_bytes() == data
    (first,) = origin.requests_for("api")
    assert first.headers.get("Authorization") == SECRET["Authorization"]
    assert first.headers.get("Cookie") == SECRET["Cookie"]
    cdn = origin.requests_for("cdn.bin")
    assert len(cdn) >= 2
    for r in cdn:
        assert r.local_addr == "127.0.0.2"
        assert "Authorization" not in r.headers
        assert "Cookie" not in r.headers


async def test_credentials_stay_on_a_same_host_redirect(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(1000, seed=2)
    origin.add_file("real.bin", data)
    origin.add_redirect("alias", "/real.bin")
    async with Downloader(config(), state_dir=state_dir) as dl:
        await dl.download(origin.url("alias"), tmp_path / "r.bin", headers=SECRET)
    (r,) = origin.requests_for("real.bin")
    assert r.headers.get("Authorization") == SECRET["Authorization"]


async def test_credentials_are_not_sent_to_the_same_address_on_another_port(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(1000, seed=3)
    origin.add_file("p.bin", data)
    # 127.0.0.2 -> 127.0.0.1: another host *and* port than the one the user named.
    origin.add_redirect("hop", origin.url("p.bin"))
    async with Downloader(config(), state_dir=state_dir) as dl:
        await dl.download(origin.url("hop", alt=True), tmp_path / "p.bin", headers=SECRET)
    (r,) = origin.requests_for("p.bin")
    assert "Authorization" not in r.headers and "Cookie" not in r.headers


async def test_a_redirect_loop_fails_at_once(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    origin.add_redirect("a", "/b")
    origin.add_redirect("b", origin.url("c", alt=True))
    origin.add_redirect("c", origin.url("a"))
    async with Downloader(config(), state_dir=state_dir) as dl:
        with pytest.raises(RedirectRefused) as info:
            await asyncio.wait_for(dl.download(origin.url("a"), tmp_path / "a"), 10)
    assert info.value.category == "client_error"
    assert "loop" in info.value.message
    # One pass round the loop, no retries.
    assert [len(origin.requests_for(n)) for n in "abc"] == [1, 1, 1]
    assert not (tmp_path / "a").exists()


async def test_too_many_redirects_fail(origin: Origin, tmp_path: Path, state_dir: Path) -> None:
    for i in range(5):
        origin.add_redirect(f"r{i}", f"/r{i + 1}")
    origin.add_file("r5", b"x")
    async with Downloader(config(max_redirects=3), state_dir=state_dir) as dl:
        with pytest.raises(RedirectRefused) as info:
            await dl.download(origin.url("r0"), tmp_path / "x")
    assert info.value.category == "client_error"
    assert len(origin.requests) == 4


@pytest.mark.parametrize(
    "target", ["file:///etc/passwd", "ftp://127.0.0.1/x", "javascript:alert(1)"]
)
async def test_a_redirect_to_another_scheme_is_refused(
    origin: Origin, tmp_path: Path, state_dir: Path, target: str
) -> None:
    origin.add_redirect("evil", target)
    async with Downloader(config(), state_dir=state_dir) as dl:
        with pytest.raises(RedirectRefused) as info:
            await dl.download(origin.url("evil"), tmp_path / "x")
    assert info.value.category == "client_error"
    assert len(origin.requests_for("evil")) == 1
    assert not (tmp_path / "x").exists()


async def test_a_symlink_planted_at_the_partial_path_is_not_followed(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    origin.add_file("s.bin", blob(100 * KiB, seed=18))
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "s.bin.modelhaul.part").symlink_to(victim)
    async with Downloader(config(), state_dir=state_dir) as dl:
        with pytest.raises(ModelhaulError) as info:
            await dl.download(origin.url("s.bin"), out / "s.bin")
    assert info.value.category == "permission"
    assert victim.read_bytes() == b"precious"
    assert not (out / "s.bin").exists()


# ---------------------------------------------------------------------- disk space


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs; skipped where mounting is not allowed."""
    yield from mounted_tmpfs(tmp_path / "disk", "size=4m")


@pytest.mark.parametrize("connections", [1, 4])
async def test_not_enough_space_fails_before_writing(
    origin: Origin,
    tmp_path: Path,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    connections: int,
) -> None:
    # Big enough that the probe's body cannot all sit in buffers: it must be closed.
    data = blob(64 * MiB, seed=4)
    origin.add_file("big.bin", data)
    real = shutil.disk_usage

    def tiny(path: Any) -> Any:
        usage = real(path)
        return usage._replace(free=MiB)

    monkeypatch.setattr(shutil, "disk_usage", tiny)
    out = tmp_path / "out"
    async with Downloader(config(segments={"connections": connections}), state_dir=state_dir) as dl:
        with pytest.raises(DiskFull) as info:
            await dl.download(origin.url("big.bin"), out / "big.bin")
        assert info.value.category == "disk_full"
        assert "1.0 MiB free" in info.value.message
        assert str(out) in info.value.hint
        assert sorted(p.name for p in out.iterdir()) == []
        # The probe was the only request, and it was not left hanging.
        assert len(origin.requests_for("big.bin")) == 1
        await origin.wait_idle_async(timeout=10)


async def test_not_enough_space_on_a_real_small_disk(
    origin: Origin, small_disk: Path, state_dir: Path
) -> None:
    origin.add_file("big.bin", blob(8 * MiB, seed=5))
    async with Downloader(config(), state_dir=state_dir) as dl:
        with pytest.raises(DiskFull):
            await dl.download(origin.url("big.bin"), small_disk / "big.bin")
    assert sorted(p.name for p in small_disk.iterdir()) == []


async def test_enospc_while_writing_fails_at_once_and_keeps_the_journal(
    origin: Origin,
    small_disk: Path,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = blob(8 * MiB, seed=6)
    origin.add_file("full.bin", data)

    def no_fallocate(fd: int, offset: int, length: int) -> None:
        raise OSError(95, "Operation not supported")  # as on filesystems without it

    monkeypatch.setattr(files.os, "posix_fallocate", no_fallocate)
    dest = small_disk / "full.bin"
    cfg = config(check_disk_space=False, segments={"connections": 1})
    async with Downloader(cfg, state_dir=state_dir) as dl:
        with pytest.raises(DiskFull) as info:
            await asyncio.wait_for(dl.download(origin.url("full.bin"), dest), 30)
    assert info.value.category == "disk_full"
    assert "partial data was kept" in info.value.hint
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    # Not retried: a full disk does not get emptier by asking the server again.
    assert len(origin.requests_for("full.bin")) == 1
    assert sorted(p.name for p in small_disk.iterdir()) == [
        "full.bin.modelhaul.journal",
        "full.bin.modelhaul.part",
    ]
    # The journal still records what reached the disk, although the disk had no room for
    # a new journal file.
    journal = json.loads((small_disk / "full.bin.modelhaul.journal").read_text())
    [[start, end]] = journal["done"]
    assert start == 0 and end >= MiB
    assert (small_disk / "full.bin.modelhaul.part").read_bytes()[:end] == data[:end]

    # With room again, the next run resumes and completes.
    subprocess.run(["mount", "-o", "remount,size=32m", str(small_disk)], check=True)
    monkeypatch.undo()
    origin.reset_stats()
    async with Downloader(config(segments={"connections": 1}), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("full.bin"), dest)
    assert dest.read_bytes() == data
    assert result.resumed_from == end
    assert origin.bytes_served("full.bin") <= len(data) - result.resumed_from + MiB


# ---------------------------------------------------------------------- one target, two downloads


def run_in_thread(coro_fn: Any) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []

    def main() -> None:
        try:
            box.append(asyncio.run(coro_fn()))
        except BaseException as exc:  # handed to the test
            box.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, box


def test_two_downloaders_of_one_target_never_corrupt_it(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(12 * MiB, seed=7)
    origin.add_file("same.bin", data)
    origin.set_default("same.bin", Fault(rate_bytes_per_s=8 * MiB))
    dest = tmp_path / "same.bin"
    notices: list[str] = []

    async def first() -> Result:
        async with Downloader(config(segments={"connections": 2}), state_dir=state_dir) as dl:
            return await dl.download(origin.url("same.bin"), dest)

    async def second() -> Result:
        async with Downloader(config(segments={"connections": 2}), state_dir=state_dir) as dl:
            return await dl.download(origin.url("same.bin"), dest, on_notice=notices.append)

    t1, box1 = run_in_thread(first)
    origin.wait_bytes("same.bin", MiB, timeout=20)
    t2, box2 = run_in_thread(second)
    t1.join(60)
    t2.join(60)
    r1, r2 = box1[0], box2[0]
    assert isinstance(r1, Result), r1
    assert isinstance(r2, Result), r2
    assert dest.read_bytes() == data
    assert r2.already_complete and r2.sha256 == sha(data)
    assert notices and "another modelhaul process" in notices[0]
    assert origin.bytes_served("same.bin") <= len(data) + 2 * MiB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "same.bin"]


def test_two_processes_of_one_target_never_corrupt_it(origin: Origin, tmp_path: Path) -> None:
    data = blob(12 * MiB, seed=8)
    origin.add_file("proc.bin", data)
    origin.set_default("proc.bin", Fault(rate_bytes_per_s=8 * MiB))
    dest = tmp_path / "proc.bin"
    script = textwrap.dedent(
        """
        import asyncio, sys
        from modelhaul.engine.downloader import Downloader
        async def main():
            async with Downloader() as dl:
                r = await dl.download(sys.argv[1], sys.argv[2])
                print(r.already_complete, r.sha256)
        asyncio.run(main())
        """
    )
    cmd = [sys.executable, "-c", script, origin.url("proc.bin"), str(dest)]
    p1 = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_bytes_while_running(origin, "proc.bin", MiB, p1)
    p2 = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out1, err1 = p1.communicate(timeout=60)
    out2, err2 = p2.communicate(timeout=60)
    assert p1.returncode == 0, err1.decode()
    assert p2.returncode == 0, err2.decode()
    assert out1.split() == [b"False", sha(data).encode()]
    assert out2.split() == [b"True", sha(data).encode()]
    assert dest.read_bytes() == data
    assert origin.bytes_served("proc.bin") <= len(data) + 2 * MiB


# ---------------------------------------------------------------------- bandwidth


async def test_the_rate_limit_caps_throughput(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(5 * MiB, seed=9)
    origin.add_file("rl.bin", data)
    cfg = config(rate={"rate_bytes_per_s": 2 * MiB}, segments={"connections": 4})
    started = time.monotonic()
    async with Downloader(cfg, state_dir=state_dir) as dl:
        await asyncio.wait_for(dl.download(origin.url("rl.bin"), tmp_path / "rl.bin"), 30)
    elapsed = time.monotonic() - started
    assert (tmp_path / "rl.bin").read_bytes() == data
    assert elapsed >= 1.8  # 2.5 s at the cap


async def test_a_shared_limiter_caps_two_downloads_together(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    a, b = blob(3 * MiB, seed=10), blob(3 * MiB, seed=11)
    origin.add_file("a.bin", a)
    origin.add_file("b.bin", b)
    shared = TokenBucket(3 * MiB)
    started = time.monotonic()
    async with Downloader(config(), state_dir=state_dir, limiter=shared) as dl:
        await asyncio.wait_for(
            asyncio.gather(
                dl.download(origin.url("a.bin"), tmp_path / "a.bin"),
                dl.download(origin.url("b.bin"), tmp_path / "b.bin"),
            ),
            30,
        )
    assert time.monotonic() - started >= 1.5  # 6 MiB at 3 MiB/s: 2 s
    assert (tmp_path / "a.bin").read_bytes() == a
    assert (tmp_path / "b.bin").read_bytes() == b


async def test_an_extra_limiter_applies_on_top_of_the_shared_one(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(3 * MiB, seed=12)
    origin.add_file("x.bin", data)
    started = time.monotonic()
    async with Downloader(config(), state_dir=state_dir) as dl:
        await dl.download(origin.url("x.bin"), tmp_path / "x.bin", limiters=[TokenBucket(2 * MiB)])
    assert time.monotonic() - started >= 1.2


async def test_the_rate_limit_can_change_while_running(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(16 * MiB, seed=13)
    origin.add_file("ch.bin", data)
    cfg = config(rate={"rate_bytes_per_s": 512 * KiB}, segments={"connections": 2})
    async with Downloader(cfg, state_dir=state_dir) as dl:
        task = asyncio.create_task(dl.download(origin.url("ch.bin"), tmp_path / "ch.bin"))
        await origin.wait_bytes_async("ch.bin", 256 * KiB, timeout=20)
        lifted = time.monotonic()
        dl.set_rate_limit(None)
        # 32 s at the old cap; moments without one.
        await asyncio.wait_for(task, 20)
        assert time.monotonic() - lifted < 10
    assert (tmp_path / "ch.bin").read_bytes() == data


async def test_the_rate_limit_can_be_lowered_while_running(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(6 * MiB, seed=14)
    origin.add_file("lo.bin", data)
    cfg = config(segments={"connections": 1})
    async with Downloader(cfg, state_dir=state_dir) as dl:
        dl.set_rate_limit(MiB)
        task = asyncio.create_task(dl.download(origin.url("lo.bin"), tmp_path / "lo.bin"))
        await origin.wait_bytes_async("lo.bin", 512 * KiB, timeout=20)
        dl.set_rate_limit(4 * MiB)
        started = time.monotonic()
        await asyncio.wait_for(task, 30)
        # At most ~5.5 MiB left at 4 MiB/s.
        assert time.monotonic() - started < 4
        assert dl.limiter.rate_bytes_per_s == 4 * MiB
    assert (tmp_path / "lo.bin").read_bytes() == data


# ---------------------------------------------------------------------- memory


MEMORY_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from modelhaul.engine.downloader import Downloader

    def peak_mib():
        # VmHWM, not ru_maxrss: the latter keeps the forking test process's peak across exec.
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024

    async def main():
        async with Downloader() as dl:
            await dl.download(sys.argv[1], sys.argv[2] + ".warm")
            before = peak_mib()
            r = await dl.download(sys.argv[1].replace("warm", "big"), sys.argv[2])
            print(before, peak_mib(), r.size)

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_memory_stays_flat_for_a_big_file(origin: Origin, tmp_path: Path) -> None:
    size = 200 * MiB
    origin.add_file("warm", blob(20 * MiB, seed=15))
    origin.add_file("big", os.urandom(size))
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, origin.url("warm"), str(tmp_path / "big")],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    before, after, got = (float(x) for x in done.stdout.split())
    assert got == size
    assert after - before < 100, f"peak RSS grew {after - before:.0f} MiB"


# ---------------------------------------------------------------------- cancel while waiting


async def test_cancel_while_waiting_for_the_lock_leaves_the_lock_free(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(3 * MiB, seed=16)  # journaled, so locked (a smaller file takes no lock)
    origin.add_file("lk.bin", data)
    # The holder pauses briefly, then finishes while the cancelled waiter's lock attempt
    # (a thread polling for up to half a second) is still running.
    origin.plan("lk.bin", [Fault(stall_after=256 * KiB, stall_s=0.3)])
    dest = tmp_path / "lk.bin"
    async with (
        Downloader(config(), state_dir=state_dir) as holder,
        Downloader(config(), state_dir=state_dir) as waiter,
    ):
        first = asyncio.create_task(holder.download(origin.url("lk.bin"), dest))
        await origin.wait_bytes_async("lk.bin", 256 * KiB, timeout=10)
        waiting = asyncio.Event()
        second = asyncio.create_task(
            waiter.download(origin.url("lk.bin"), dest, on_notice=lambda _: waiting.set())
        )
        await asyncio.wait_for(waiting.wait(), 10)
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await second
        await asyncio.wait_for(first, 20)
        # A third download of the same target must get the lock (and find the work done).
        third = await asyncio.wait_for(waiter.download(origin.url("lk.bin"), dest), 10)
    assert third.already_complete
    assert dest.read_bytes() == data


async def test_cancelled_download_raises_cancelled_error_not_a_modelhaul_error(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    origin.add_file("c.bin", blob(4 * MiB, seed=17))
    origin.set_default("c.bin", Fault(rate_bytes_per_s=MiB))
    async with Downloader(config(), state_dir=state_dir) as dl:
        task = asyncio.create_task(dl.download(origin.url("c.bin"), tmp_path / "c.bin"))
        await origin.wait_bytes_async("c.bin", 100 * KiB, timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Nothing is left hanging on the wire once the cancel returns.
        await origin.wait_idle_async(timeout=10)
    assert not (tmp_path / "c.bin").exists()


@pytest.mark.parametrize(("first_piece_s", "calls"), [(0.0, 2), (0.05, 1)])
def test_preallocation_stops_after_the_first_piece_where_it_zero_fills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_piece_s: float, calls: int
) -> None:
    seen: list[tuple[int, int]] = []
    clock = iter([0.0, first_piece_s])
    monkeypatch.setattr(files.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(files.os, "posix_fallocate", lambda fd, o, n: seen.append((o, n)))
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        files.preallocate(fd, 200 * MiB)
    finally:
        os.close(fd)
    # Extent-based filesystems answer at once and get the whole file reserved; a slow first
    # piece (tmpfs zero-fills) means the rest is left to the writes.
    assert seen == [(0, 64 * MiB), (64 * MiB, 136 * MiB)][:calls]


def test_preallocation_reserves_real_blocks(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        files.preallocate(fd, 3 * MiB)
        assert os.fstat(fd).st_size == 3 * MiB
    finally:
        os.close(fd)
