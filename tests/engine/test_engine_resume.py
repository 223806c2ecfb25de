"""Engine tests for crash-safe resume and for never mixing two versions of a file.

A resume must fetch only what the partial file lacks (checked on the origin's served ranges),
and any sign that the remote file changed (If-Range answered with 200, another ETag, another
size) must restart cleanly so that the result is exactly one version.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import cli_env, modelhaul_cmd
from helpers import blob, sha
from helpers import download_config as config
from modelhaul.config import MiB
from modelhaul.engine.downloader import Downloader
from modelhaul.errors import ModelhaulError, RemoteChanged
from modelhaul.policy.ranges import RangeSet
from origin import Fault, Origin

KiB = 1024
# Work stealing may fetch again the tail of a segment that was already on its way.
STEAL_SLACK = 4 * MiB


def served_total(origin: Origin, name: str) -> int:
    return sum(e - s for s, e in origin.ranges_served(name))


def overlap(ranges: list[tuple[int, int]], held: RangeSet) -> int:
    """Bytes of ``ranges`` that ``held`` already had."""
    fetched = RangeSet(ranges)
    return fetched.total() + held.total() - RangeSet([*fetched, *held]).total()


def journal_done(path: Path) -> RangeSet:
    return RangeSet(tuple(r) for r in json.loads(path.read_text())["done"])


def assert_journal_truthful(part: Path, journal: Path, data: bytes) -> RangeSet:
    """Every range the journal claims is really in the partial file."""
    done = journal_done(journal)
    held = part.read_bytes()
    for start, end in done:
        assert held[start:end] == data[start:end], f"journal claims [{start}, {end})"
    return done


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


# ---------------------------------------------------------------------- resume


async def test_cancelled_download_keeps_a_journal_and_resumes_without_refetching(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(24 * MiB, seed=1)
    origin.add_file("r.bin", data)
    origin.set_default("r.bin", Fault(rate_bytes_per_s=3 * MiB))
    dest = tmp_path / "r.bin"
    part = tmp_path / "r.bin.modelhaul.part"
    journal = tmp_path / "r.bin.modelhaul.journal"
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        task = asyncio.create_task(dl.download(origin.url("r.bin"), dest))
        await origin.wait_bytes_async("r.bin", 8 * MiB, timeout=20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not dest.exists()
    done = assert_journal_truthful(part, journal, data)
    assert done.total() >= 4 * MiB
    first = origin.ranges_served("r.bin")

    origin.set_default("r.bin", None)
    origin.reset_stats()
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("r.bin"), dest)
    assert dest.read_bytes() == data
    assert result.sha256 == sha(data)
    assert result.resumed_from == done.total()
    second = origin.ranges_served("r.bin")
    # The second run fetched what the journal lacked and nothing it held.
    assert overlap(second, done) == 0
    # Only work stealing can fetch a byte twice within the second run.
    assert sum(e - s for s, e in second) <= len(data) - done.total() + STEAL_SLACK
    # Over both runs, only bytes still in flight at the cancel came twice.
    assert sum(e - s for s, e in first + second) <= len(data) + 4 * MiB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "r.bin"]


async def test_resume_starts_exactly_where_the_journal_ends(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(6 * MiB + 123, seed=2)
    origin.add_file("f.bin", data)
    cut = 3 * MiB + 17
    # A reset after progress is retried; the retry gets nothing, which spends retries=0.
    origin.plan("f.bin", [Fault(drop_after=cut), Fault(drop_after=0)])
    dest = tmp_path / "f.bin"
    async with Downloader(config(retries=0, connections=1), state_dir=state_dir) as dl:
        with pytest.raises(ModelhaulError) as info:
            await dl.download(origin.url("f.bin"), dest)
        assert info.value.category == "network"
        assert not dest.exists()
        done = assert_journal_truthful(
            tmp_path / "f.bin.modelhaul.part", tmp_path / "f.bin.modelhaul.journal", data
        )
        # All of it, unless bytes still buffered in the client were lost with the reset.
        held = done.prefix_end()
        assert done == RangeSet([(0, held)])
        assert cut - 8 * MiB < held <= cut

        result = await dl.download(origin.url("f.bin"), dest)
    assert dest.read_bytes() == data
    assert result.resumed_from == held
    requests = origin.requests_for("f.bin")
    starts = [(r.range_header or "").partition("=")[2].partition("-")[0] for r in requests]
    assert starts == ["0", str(held), str(held)]
    assert origin.ranges_served("f.bin") == [(0, cut), (held, held), (held, len(data))]


async def test_resumed_and_parallel_requests_carry_if_range(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(20 * MiB, seed=3)
    origin.add_file("v.bin", data)
    origin.plan("v.bin", [Fault(drop_after=2 * MiB), Fault(drop_after=0)])
    dest = tmp_path / "v.bin"
    async with Downloader(config(retries=0, connections=1), state_dir=state_dir) as dl:
        with pytest.raises(ModelhaulError):
            await dl.download(origin.url("v.bin"), dest)
    held = journal_done(tmp_path / "v.bin.modelhaul.journal").prefix_end()
    etag = origin.requests_for("v.bin")[0]
    origin.reset_stats()
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        await dl.download(origin.url("v.bin"), dest)
    assert dest.read_bytes() == data
    requests = origin.requests_for("v.bin")
    assert len(requests) >= 2
    assert requests[0].range_header is not None
    assert requests[0].range_header.startswith(f"bytes={held}-")
    validators = {r.headers.get("If-Range") for r in requests}
    assert validators == {'"' + sha(data)[:16] + '"'}
    assert etag.headers.get("If-Range") is None  # the first probe had nothing to validate


def wait_journal_holds(
    path: Path, n: int, proc: subprocess.Popen[bytes], timeout: float = 30
) -> None:
    """Poll (bounded) until the journal at ``path`` claims at least ``n`` bytes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = json.loads(path.read_bytes())["done"]
            if sum(e - s for s, e in done) >= n:
                return
        except (OSError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"the journal never claimed {n} bytes")


def test_kill_9_mid_download_then_resume(origin: Origin, tmp_path: Path) -> None:
    data = blob(32 * MiB, seed=4)
    origin.add_file("k.bin", data)
    origin.set_default("k.bin", Fault(rate_bytes_per_s=2 * MiB))
    dest = tmp_path / "k.bin"
    cmd = modelhaul_cmd("get", origin.url("k.bin"), "-o", str(dest), "-x", "4", "-q")
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_bytes_while_running(origin, "k.bin", 16 * MiB, proc)
        # Kill only once the journal records data: on a loaded machine its once-a-second
        # flush may lag behind the bytes the origin has sent.
        wait_journal_holds(tmp_path / "k.bin.modelhaul.journal", 4 * MiB, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not dest.exists()
    done = assert_journal_truthful(
        tmp_path / "k.bin.modelhaul.part", tmp_path / "k.bin.modelhaul.journal", data
    )
    assert done.total() >= 4 * MiB
    origin.wait_idle(timeout=10)
    before = served_total(origin, "k.bin")

    origin.set_default("k.bin", None)
    origin.reset_stats()
    rerun = subprocess.run(cmd, env=cli_env(), capture_output=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha(data)
    second = origin.ranges_served("k.bin")
    assert overlap(second, done) == 0
    assert served_total(origin, "k.bin") <= len(data) - done.total() + STEAL_SLACK
    # What the killed run had received but not yet journaled is all that came twice.
    assert before + served_total(origin, "k.bin") <= len(data) + 4 * 8 * MiB + MiB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "k.bin"]


async def test_a_corrupt_journal_means_a_clean_restart(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(2 * MiB, seed=5)
    origin.add_file("j.bin", data)
    dest = tmp_path / "j.bin"
    (tmp_path / "j.bin.modelhaul.part").write_bytes(b"\xff" * MiB)
    (tmp_path / "j.bin.modelhaul.journal").write_text("{not json")
    async with Downloader(config(), state_dir=state_dir) as dl:
        await dl.download(origin.url("j.bin"), dest)
    assert dest.read_bytes() == data
    assert origin.ranges_served("j.bin") == [(0, len(data))]


async def test_a_journal_for_another_url_is_not_trusted(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    old, new = blob(3 * MiB, seed=6), blob(3 * MiB, seed=7)
    origin.add_file("old.bin", old)
    origin.add_file("new.bin", new)
    origin.plan("old.bin", [Fault(drop_after=MiB), Fault(drop_after=0)])
    dest = tmp_path / "x.bin"
    async with Downloader(config(retries=0, connections=1), state_dir=state_dir) as dl:
        with pytest.raises(ModelhaulError):
            await dl.download(origin.url("old.bin"), dest)
        await dl.download(origin.url("new.bin"), dest)
    assert dest.read_bytes() == new
    assert origin.ranges_served("new.bin") == [(0, len(new))]


async def test_directory_mode_resumes_and_names_the_file_from_the_response(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(3 * MiB, seed=23)
    origin.add_file("dl", data, content_disposition='attachment; filename="weights.bin"')
    origin.plan("dl", [Fault(drop_after=MiB), Fault(drop_after=0)])
    out = tmp_path / "out"
    async with Downloader(config(retries=0, connections=1), state_dir=state_dir) as dl:
        with pytest.raises(ModelhaulError):
            await dl.download(origin.url("dl"), directory=out)
        # The partial data is named after the URL, so the re-run finds it before any request.
        hidden = sorted(p.name for p in out.iterdir())
        assert len(hidden) == 2 and all(name.startswith(".modelhaul-") for name in hidden)
        result = await dl.download(origin.url("dl"), directory=out)
    assert result.path == str(out / "weights.bin")
    assert result.resumed_from == MiB
    assert sorted(p.name for p in out.iterdir()) == ["weights.bin"]
    assert (out / "weights.bin").read_bytes() == data


async def test_partial_data_of_unknown_length_is_not_kept(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(24 * MiB, seed=28)
    origin.add_file("u.bin", data)
    # Content-encoded: no usable length, so nothing to resume against.
    origin.set_default("u.bin", Fault(gzip=True, rate_bytes_per_s=2 * MiB))
    dest = tmp_path / "u.bin"
    async with Downloader(config(), state_dir=state_dir) as dl:
        task = asyncio.create_task(dl.download(origin.url("u.bin"), dest))
        await origin.wait_bytes_async("u.bin", 3 * MiB, timeout=20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    # The origin now does ranges: a plain, segmented download.
    origin.set_default("u.bin", None)
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("u.bin"), dest)
    assert dest.read_bytes() == data
    assert result.resumed_from == 0


async def test_a_journal_without_a_size_is_not_trusted(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    # What a killed download of a chunked or encoded body leaves behind.
    data = blob(12 * MiB, seed=29)
    origin.add_file("n.bin", data)
    dest = tmp_path / "n.bin"
    (tmp_path / "n.bin.modelhaul.part").write_bytes(data[:MiB])
    journal = {"version": 1, "url": origin.url("n.bin"), "size": None, "done": [[0, MiB]]}
    (tmp_path / "n.bin.modelhaul.journal").write_text(json.dumps(journal))
    async with Downloader(config(connections=2), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("n.bin"), dest)
    assert dest.read_bytes() == data
    assert result.resumed_from == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "n.bin"]


# ---------------------------------------------------------------------- never mix versions


async def test_content_change_between_probe_and_segments_restarts_on_the_new_version(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    old, new = blob(24 * MiB, seed=8), blob(24 * MiB, seed=9)
    origin.add_file("c.bin", old)
    origin.change_content_after("c.bin", 1, new)  # the probe sees old, the segments new
    dest = tmp_path / "c.bin"
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("c.bin"), dest)
    assert dest.read_bytes() == new
    assert result.sha256 == sha(new)
    assert result.etag == '"' + sha(new)[:16] + '"'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin", "home"]


@pytest.mark.parametrize("new_size", [16 * MiB, 20 * MiB])
async def test_content_change_mid_download_ends_with_exactly_the_new_version(
    origin: Origin, tmp_path: Path, state_dir: Path, new_size: int
) -> None:
    old, new = blob(16 * MiB, seed=10), blob(new_size, seed=11)
    origin.add_file("m.bin", old)
    origin.set_default("m.bin", Fault(rate_bytes_per_s=4 * MiB))
    dest = tmp_path / "m.bin"
    cfg = config(connections=4, chunk_bytes=2 * MiB, min_steal_bytes=256 * KiB)
    async with Downloader(cfg, state_dir=state_dir) as dl:
        task = asyncio.create_task(dl.download(origin.url("m.bin"), dest))
        await origin.wait_bytes_async("m.bin", 4 * MiB, timeout=20)
        origin.set_content("m.bin", new)
        origin.set_default("m.bin", None)
        result = await asyncio.wait_for(task, 60)
    assert dest.read_bytes() == new
    assert result.sha256 == sha(new)


async def test_content_change_between_runs_restarts_instead_of_resuming(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    old, new = blob(6 * MiB, seed=12), blob(6 * MiB, seed=13)
    origin.add_file("b.bin", old)
    origin.plan("b.bin", [Fault(drop_after=3 * MiB), Fault(drop_after=0)])
    dest = tmp_path / "b.bin"
    async with Downloader(config(retries=0, connections=1), state_dir=state_dir) as dl:
        with pytest.raises(ModelhaulError):
            await dl.download(origin.url("b.bin"), dest)
        origin.set_content("b.bin", new)
        origin.reset_stats()
        result = await dl.download(origin.url("b.bin"), dest)
    assert dest.read_bytes() == new
    assert result.sha256 == sha(new)
    assert result.resumed_from == 0


async def test_weak_etag_resumes_by_last_modified_and_notices_a_change(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    old, new = blob(4 * MiB, seed=14), blob(4 * MiB, seed=15)
    origin.add_file("w.bin", old, weak_etag=True)
    origin.plan("w.bin", [Fault(drop_after=MiB), Fault(drop_after=0)])
    dest = tmp_path / "w.bin"
    async with Downloader(config(retries=0, connections=1), state_dir=state_dir) as dl:
        with pytest.raises(ModelhaulError):
            await dl.download(origin.url("w.bin"), dest)
        origin.set_content("w.bin", new)
        result = await dl.download(origin.url("w.bin"), dest)
    assert dest.read_bytes() == new
    assert result.sha256 == sha(new)
    resumed = origin.requests_for("w.bin")[2]
    assert resumed.headers.get("If-Range", "").endswith("GMT")


async def test_another_etag_on_a_segment_restarts_cleanly(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(24 * MiB, seed=16)
    origin.add_file("e.bin", data)
    origin.plan("e.bin", [Fault(), Fault(headers={"ETag": '"something-else"'})])
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("e.bin"), tmp_path / "e.bin")
    assert (tmp_path / "e.bin").read_bytes() == data
    assert result.sha256 == sha(data)


async def test_a_file_that_keeps_changing_fails_cleanly(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(24 * MiB, seed=17)
    origin.add_file("flap.bin", data)
    # Every pass: a slow probe with the real ETag, then a segment with another one.
    one_pass = [Fault(rate_bytes_per_s=MiB), Fault(headers={"ETag": '"flapping"'})]
    origin.plan("flap.bin", one_pass * 4)
    dest = tmp_path / "flap.bin"
    async with Downloader(config(connections=2), state_dir=state_dir) as dl:
        with pytest.raises(RemoteChanged) as info:
            await asyncio.wait_for(dl.download(origin.url("flap.bin"), dest), 30)
    assert "restarts" in info.value.message
    assert len(origin.requests_for("flap.bin")) == 8  # max_restarts=3: four passes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


async def test_a_file_that_shrank_without_validators_restarts(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    old, new = blob(6 * MiB, seed=24), blob(MiB, seed=25)
    origin.add_file("s.bin", old, etag=None, last_modified=None)
    origin.plan("s.bin", [Fault(drop_after=3 * MiB), Fault(drop_after=0)])
    dest = tmp_path / "s.bin"
    async with Downloader(config(retries=0, connections=1), state_dir=state_dir) as dl:
        with pytest.raises(ModelhaulError):
            await dl.download(origin.url("s.bin"), dest)
        origin.add_file("s.bin", new, etag=None, last_modified=None)
        result = await dl.download(origin.url("s.bin"), dest)
    # Resuming at 3 MiB is unsatisfiable now (416): a clean restart, not a mix.
    assert dest.read_bytes() == new
    assert result.sha256 == sha(new)
    assert [r.status for r in origin.requests_for("s.bin")][2:] == [416, 206]


async def test_a_file_that_grew_without_validators_restarts(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    old, new = blob(4 * MiB, seed=26), blob(5 * MiB, seed=27)
    origin.add_file("g.bin", old, etag=None, last_modified=None)
    origin.plan("g.bin", [Fault(drop_after=MiB), Fault(drop_after=0)])
    dest = tmp_path / "g.bin"
    async with Downloader(config(retries=0, connections=1), state_dir=state_dir) as dl:
        with pytest.raises(ModelhaulError):
            await dl.download(origin.url("g.bin"), dest)
        origin.add_file("g.bin", new, etag=None, last_modified=None)
        result = await dl.download(origin.url("g.bin"), dest)
    assert dest.read_bytes() == new
    assert result.sha256 == sha(new)


# ---------------------------------------------------------------------- ranges ignored or garbled


async def test_range_ignored_on_the_probe_means_one_connection(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(24 * MiB, seed=18)
    origin.add_file("i.bin", data)
    origin.set_default("i.bin", Fault(ignore_range=True))
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("i.bin"), tmp_path / "i.bin")
    assert (tmp_path / "i.bin").read_bytes() == data
    assert result.sha256 == sha(data)
    assert len(origin.requests_for("i.bin")) == 1


async def test_origin_without_range_support(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(24 * MiB, seed=19)
    origin.add_file("nr.bin", data, accept_ranges=False)
    async with Downloader(config(), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("nr.bin"), tmp_path / "nr.bin")
    assert (tmp_path / "nr.bin").read_bytes() == data
    assert result.sha256 == sha(data)
    assert origin.ranges_served("nr.bin") == [(0, len(data))]


async def test_range_ignored_on_a_later_segment_restarts_and_completes(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(24 * MiB, seed=20)
    origin.add_file("il.bin", data)
    origin.plan("il.bin", [Fault(), Fault(ignore_range=True)])
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("il.bin"), tmp_path / "il.bin")
    assert (tmp_path / "il.bin").read_bytes() == data
    assert result.sha256 == sha(data)


@pytest.mark.parametrize("which", [0, 1])
async def test_a_wrong_content_range_once_still_gives_the_right_file(
    origin: Origin, tmp_path: Path, state_dir: Path, which: int
) -> None:
    data = blob(24 * MiB, seed=21)
    origin.add_file("wc.bin", data)
    faults = [Fault(), Fault()]
    faults[which] = Fault(wrong_content_range=True)
    origin.plan("wc.bin", faults)
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("wc.bin"), tmp_path / "wc.bin")
    assert (tmp_path / "wc.bin").read_bytes() == data
    assert result.sha256 == sha(data)


async def test_an_origin_that_always_garbles_content_range_fails_cleanly_or_succeeds(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(2 * MiB, seed=22)
    origin.add_file("g.bin", data)
    origin.set_default("g.bin", Fault(wrong_content_range=True))
    dest = tmp_path / "g.bin"
    async with Downloader(config(connections=2), state_dir=state_dir) as dl:
        try:
            result = await asyncio.wait_for(dl.download(origin.url("g.bin"), dest), 30)
        except ModelhaulError as exc:
            assert exc.category in ("network", "client_error")
            assert not dest.exists()
        else:
            assert dest.read_bytes() == data
            assert result.sha256 == sha(data)
    assert len(origin.requests_for("g.bin")) <= 10
