"""``modelhaul get`` says only what is so (issue 13): one result per path, invalid URLs and
output folders refused at once, a closed stdout ending the program quietly, and errors that
name the user's file rather than the partial file beside it.

CLI tests run real subprocesses against tests/support/origin.py and judge them by what a user sees;
library tests call the public API the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

import modelhaul
from conftest import cli_env, modelhaul_cmd
from helpers import blob, mounted_tmpfs, sha
from modelhaul.config import DownloadConfig, RetryPolicy, SegmentPolicy
from modelhaul.disk import files
from modelhaul.disk.partials import lock_file_for
from modelhaul.engine.downloader import Downloader
from modelhaul.errors import InvalidInput, TargetConflict
from modelhaul.manager.downloads import DownloadManager
from modelhaul.policy.paths import part_paths, plan_paths
from modelhaul.sources.manifest import manifest_from_data
from modelhaul.sources.url import parse_input_list
from origin import Origin

MiB = 1024 * 1024
RUN_TIMEOUT_S = 60


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        modelhaul_cmd(*args),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=cwd,
        env=env,
    )


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def assert_one_line_error(r: subprocess.CompletedProcess[str], code: int) -> str:
    """Failed with ``code``, one error line plus a hint, no traceback; returns stderr."""
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    assert "internal error" not in r.stderr
    assert "modelhaul: error:" in r.stderr and "hint:" in r.stderr, r.stderr
    return r.stderr


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def fast_config(**kw: Any) -> DownloadConfig:
    return DownloadConfig(
        retry=RetryPolicy(retries=3, initial_delay_s=0.01, max_delay_s=0.05), **kw
    )


# ------------------------------------------------------------------- item 2: one path, one result


def test_two_urls_for_one_path_are_refused_before_any_request(origin: Origin, work: Path) -> None:
    origin.add_file("a/f.txt", b"from a")
    origin.add_file("b/f.txt", b"from b, longer")
    a, b = origin.url("a/f.txt"), origin.url("b/f.txt")

    r = cli("get", a, b, "-d", "out", "--json", cwd=work)

    err = assert_one_line_error(r, 2)
    target = str(work / "out" / "f.txt")
    assert target in err and a in err and b in err
    result = json_lines(r.stdout)[-1]
    assert result["status"] == "failed"
    assert result["error"]["category"] == "invalid_input"
    assert target in result["error"]["message"]
    assert origin.requests == []
    assert list(work.iterdir()) == []


def test_two_urls_for_one_out_name_in_a_list_are_refused(origin: Origin, work: Path) -> None:
    origin.add_file("one.bin", b"1")
    origin.add_file("two.bin", b"22")
    listing = work / "urls.txt"
    listing.write_text(
        f"{origin.url('one.bin')}\n  out=same.bin\n{origin.url('two.bin')}\n  out=same.bin\n"
    )

    r = cli("get", "-i", str(listing), "-d", "out", cwd=work)

    err = assert_one_line_error(r, 2)
    assert str(work / "out" / "same.bin") in err
    assert origin.url("one.bin") in err and origin.url("two.bin") in err
    assert origin.requests == []
    assert sorted(p.name for p in work.iterdir()) == ["urls.txt"]


def test_the_same_url_twice_for_one_path_is_fetched_once(origin: Origin, work: Path) -> None:
    data = blob(100_000, seed=1)
    origin.add_file("dup.bin", data)
    url = origin.url("dup.bin")

    r = cli("get", url, url, "-d", str(work), "--json", cwd=work)

    assert r.returncode == 0, r.stderr
    result = json_lines(r.stdout)[-1]
    records = result.get("files", [result])
    assert [rec["path"] for rec in records] == [str(work / "dup.bin")]
    assert records[0]["sha256"] == sha(data)
    assert (work / "dup.bin").read_bytes() == data
    assert len(origin.requests_for("dup.bin")) == 1


def test_names_from_the_response_never_publish_two_files_at_one_path(
    origin: Origin, work: Path
) -> None:
    # Both names come from Content-Disposition, known only once each response starts.
    first, second = blob(50_000, seed=2), blob(70_000, seed=3)
    origin.add_file("x", first, content_disposition='attachment; filename="same.bin"')
    origin.add_file("y", second, content_disposition='attachment; filename="same.bin"')

    r = cli("get", origin.url("x"), origin.url("y"), "-d", str(work), "-j", "1", "--json", cwd=work)

    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    files = json_lines(r.stdout)[-1]["files"]
    done = [f for f in files if f["status"] == "completed"]
    failed = [f for f in files if f["status"] == "failed"]
    assert len(done) == 1 and len(failed) == 1, files
    on_disk = (work / "same.bin").read_bytes()
    assert done[0]["path"] == str(work / "same.bin")
    assert done[0]["sha256"] == sha(on_disk)
    assert failed[0]["error"]["category"] == "invalid_input"
    assert str(work / "same.bin") in failed[0]["error"]["message"]
    assert sorted(p.name for p in work.iterdir()) == ["same.bin"]


def test_one_checksum_under_two_names_gives_each_name_its_own_result(
    origin: Origin, work: Path
) -> None:
    data = blob(30_000, seed=10)
    origin.add_file("c.bin", data)
    digest = sha(data)
    (work / "y.bin").write_bytes(b"stale")  # left by something else; must not pass as done
    listing = work / "urls.txt"
    listing.write_text(
        f"{origin.url('c.bin')}\n  out=x.bin\n  sha256={digest}\n"
        f"{origin.url('c.bin')}?mirror\n  out=y.bin\n  sha256={digest}\n"
    )

    r = cli("get", "-i", str(listing), "-d", str(work), "--json", cwd=work)

    assert r.returncode == 0, r.stderr
    files = json_lines(r.stdout)[-1]["files"]
    assert sorted(f["path"] for f in files) == [str(work / "x.bin"), str(work / "y.bin")]
    for f in files:
        assert Path(f["path"]).read_bytes() == data
        assert f["sha256"] == digest


async def test_the_manager_lets_one_download_of_a_path_publish(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    first, second = blob(40_000, seed=4), blob(60_000, seed=5)
    origin.add_file("p", first, content_disposition='attachment; filename="m.bin"')
    origin.add_file("q", second, content_disposition='attachment; filename="m.bin"')
    async with DownloadManager(download_config=fast_config(), state_dir=state_dir) as mgr:
        a = mgr.add(origin.url("p"), directory=tmp_path)
        b = mgr.add(origin.url("q"), directory=tmp_path)
        outcomes = await asyncio.gather(a.wait(), b.wait(), return_exceptions=True)
        # A fixed path wanted by a third URL is refused too, before any request for it.
        c = mgr.add(origin.url("p") + "?again", tmp_path / "m.bin")
        with pytest.raises(TargetConflict):
            await c.wait()
    results = [o for o in outcomes if not isinstance(o, BaseException)]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(results) == 1 and len(errors) == 1, outcomes
    assert isinstance(errors[0], TargetConflict)
    assert errors[0].path == str(tmp_path / "m.bin")
    assert (tmp_path / "m.bin").read_bytes() in (first, second)
    assert results[0].sha256 == sha((tmp_path / "m.bin").read_bytes())
    assert len(origin.requests_for("p")) == 1


# ------------------------------------------------------------------- item 6: a closed stdout


def test_a_closed_stdout_stops_a_download_quietly_and_keeps_its_partial(
    origin: Origin, work: Path
) -> None:
    data = blob(64 * MiB, seed=6)
    origin.add_file("big.bin", data)
    out = work / "big.bin"
    proc = subprocess.Popen(
        modelhaul_cmd(
            "get", origin.url("big.bin"), "-o", str(out), "--json", "--limit-rate", "2M", "-x", "2"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=work,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = json.loads(proc.stdout.readline())  # as `| head -1` reads
        assert first["event"] == "progress"
        proc.stdout.close()
        # At 2 MiB/s the file needs 32 s; stopping is immediate.
        code = proc.wait(timeout=20)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 141, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert not out.exists()
    part, journal = part_paths(out)
    assert part.exists()
    done = json.loads(journal.read_text())["done"]
    assert sum(end - start for start, end in done) > 0
    for start, end in done:
        assert part.read_bytes()[start:end] == data[start:end]


def test_doctor_into_a_closed_pipe_ends_quietly(work: Path) -> None:
    proc = subprocess.Popen(
        modelhaul_cmd("doctor", "--json", "--timeout", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=work,
        env=cli_env(HF_ENDPOINT="http://127.0.0.1:9"),
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written
    try:
        code = proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    proc.stderr.close()
    assert code == 141, err
    assert "Traceback" not in err and "internal error" not in err and "Exception" not in err, err


# ------------------------------------------------------------------- item 7: invalid URLs


BAD_URLS = {
    "space-in-host": "http://127.0.0.1 :{port}/x.bin",
    "empty-host": "http://:{port}/x.bin",
    "port-out-of-range": "http://127.0.0.1:99999/x.bin",
    "port-0": "http://127.0.0.1:0/x.bin",
    "port-not-a-number": "http://127.0.0.1:8o80/x.bin",
    "newline-in-host": "http://127.0.0.1\n:{port}/x.bin",
}


@pytest.mark.parametrize("case", sorted(BAD_URLS))
def test_an_invalid_url_is_invalid_input_at_once(origin: Origin, work: Path, case: str) -> None:
    port = origin.base_url.rsplit(":", 1)[1]
    url = BAD_URLS[case].format(port=port)
    started = time.monotonic()
    r = cli("get", url, "-d", str(work), "--json", cwd=work)
    assert time.monotonic() - started < 10  # no retries: there is nothing to retry
    err = assert_one_line_error(r, 2)
    assert "bad URL" in err
    assert json_lines(r.stdout)[-1]["error"]["category"] == "invalid_input"
    assert origin.requests == []
    assert list(work.iterdir()) == []


def test_an_invalid_url_in_a_list_is_invalid_input(work: Path) -> None:
    listing = work / "urls.txt"
    listing.write_text("http://127.0.0.1:9/ok.bin\nhttp://127.0.0.1 :9/x.bin\n")
    with pytest.raises(InvalidInput, match="line 2"):
        parse_input_list(listing.read_text(), source="urls.txt")
    r = cli("get", "-i", str(listing), cwd=work)
    assert "line 2" in assert_one_line_error(r, 2)


@pytest.mark.parametrize("field", ["url", "mirrors"])
def test_an_invalid_url_in_a_manifest_is_invalid_input(field: str) -> None:
    entry: dict[str, Any] = {
        "path": "m.bin",
        "size": 1,
        "sha256": "0" * 64,
        "url": "http://127.0.0.1:9/m.bin",
    }
    if field == "url":
        entry["url"] = "http://127.0.0.1 :9/m.bin"
    else:
        entry["mirrors"] = ["http://:9/m.bin"]
    with pytest.raises(InvalidInput, match=field):
        manifest_from_data({"name": "org/m", "files": [entry]}, source="m.json")


@pytest.mark.parametrize("url", ["http://127.0.0.1 :9/x.bin", "http://127.0.0.1:70000/x.bin"])
def test_the_library_refuses_an_invalid_url_without_a_request(
    tmp_path: Path, state_dir: Path, url: str
) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidInput):
        modelhaul.download(url, tmp_path / "x.bin", state_dir=state_dir)
    assert time.monotonic() - started < 5
    assert list(tmp_path.glob("x.bin*")) == []


# ------------------------------------------------------------------- item 14: -d names a file


def test_an_output_directory_that_is_a_file_is_not_a_directory(origin: Origin, work: Path) -> None:
    origin.add_file("f.bin", b"x")
    (work / "urls.txt").write_text("not a folder")

    for folder in ("urls.txt", "urls.txt/sub"):
        r = cli("get", origin.url("f.bin"), "-d", folder, cwd=work)
        err = assert_one_line_error(r, 2)
        assert "not a directory" in err and "File exists" not in err, err
    assert origin.requests == []
    assert (work / "urls.txt").read_text() == "not a folder"


async def test_the_library_calls_a_file_in_the_way_not_a_directory(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    origin.add_file("f.bin", b"x")
    blocker = tmp_path / "urls.txt"
    blocker.write_text("not a folder")
    async with Downloader(fast_config(), state_dir=state_dir) as dl:
        with pytest.raises(InvalidInput, match="not a directory"):
            await dl.download(origin.url("f.bin"), directory=blocker)
    assert origin.requests == []


# ------------------------------------------------------------------- item 15: the user's file


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs: tests run as root, where chmod does not stop writes."""
    yield from mounted_tmpfs(tmp_path / "ro", "ro,size=1m")


@pytest.mark.parametrize("named_by", ["url", "-o"])
def test_permission_denied_names_the_target_not_the_partial_file(
    origin: Origin, work: Path, read_only_dir: Path, named_by: str
) -> None:
    origin.add_file("model.bin", blob(100_000, seed=7))
    target = read_only_dir / "model.bin"
    where = ["-d", str(read_only_dir)] if named_by == "url" else ["-o", str(target)]

    r = cli("get", origin.url("model.bin"), *where, "--json", cwd=work)

    err = assert_one_line_error(r, 1)
    message = json_lines(r.stdout)[-1]["error"]["message"]
    assert json_lines(r.stdout)[-1]["error"]["category"] == "permission"
    for text in (err, message):
        assert str(target) in text, text
        assert ".modelhaul" not in text, text


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, so every way of writing (pwritev, splice) meets a real full disk."""
    yield from mounted_tmpfs(tmp_path / "disk", "size=4m")


async def test_a_full_disk_while_writing_names_the_target(
    origin: Origin, small_disk: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin.add_file("full.bin", blob(8 * MiB, seed=8))
    dest = small_disk / "full.bin"

    def no_fallocate(fd: int, offset: int, length: int) -> None:
        raise OSError(95, "Operation not supported")  # as on filesystems without it

    monkeypatch.setattr(files.os, "posix_fallocate", no_fallocate)
    cfg = fast_config(check_disk_space=False, segments=SegmentPolicy(connections=1))
    async with Downloader(cfg, state_dir=state_dir) as dl:
        with pytest.raises(modelhaul.DiskFull) as info:
            await asyncio.wait_for(dl.download(origin.url("full.bin"), dest), 30)
    assert str(dest) in info.value.message
    assert ".modelhaul" not in info.value.message


# known_absent (a named target): the caller saw no file, partial file or journal; the lock
# file is still looked for, and another process's lock is still waited for.
@pytest.mark.parametrize("known_absent", [False, True])
async def test_waiting_for_another_process_names_the_target(
    origin: Origin, tmp_path: Path, state_dir: Path, known_absent: bool
) -> None:
    data = blob(10_000, seed=9)
    origin.add_file("w.bin", data)
    url = origin.url("w.bin")
    dest = tmp_path / "w.bin" if known_absent else None
    paths = plan_paths(url, dest, tmp_path)
    held = FileLock(str(lock_file_for(state_dir / "locks", paths.part)), thread_local=False)
    held.acquire()
    notices: list[str] = []
    noticed = threading.Event()

    def on_notice(message: str) -> None:
        notices.append(message)
        noticed.set()

    try:
        async with Downloader(fast_config(), state_dir=state_dir) as dl:
            task = asyncio.create_task(
                dl.download(
                    url, dest, directory=tmp_path, on_notice=on_notice, known_absent=known_absent
                )
            )
            await asyncio.wait_for(asyncio.to_thread(noticed.wait, 10), 15)
            held.release()
            result = await asyncio.wait_for(task, 30)
    finally:
        if held.is_locked:
            held.release()
    assert hashlib.sha256(Path(result.path).read_bytes()).hexdigest() == sha(data)
    assert str(tmp_path / "w.bin") in notices[0]
    assert ".modelhaul" not in notices[0]


async def test_a_second_name_that_cannot_be_written_is_named_as_such(
    origin: Origin, tmp_path: Path, read_only_dir: Path, state_dir: Path
) -> None:
    data = blob(20_000, seed=11)
    origin.add_file("s.bin", data)
    digest = sha(data)
    async with DownloadManager(download_config=fast_config(), state_dir=state_dir) as mgr:
        mgr.add(origin.url("s.bin"), tmp_path / "a.bin", sha256=digest)
        # One checksum: the manager fetches once and links the file to the second name.
        second = mgr.add(origin.url("s.bin") + "?b", read_only_dir / "b.bin", sha256=digest)
        with pytest.raises(modelhaul.PermissionDenied) as info:
            await second.wait()
    assert str(read_only_dir / "b.bin") in info.value.message
    assert ".tmp" not in info.value.message
