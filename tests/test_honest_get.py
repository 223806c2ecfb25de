"""``modelhaul get`` says only what is so (issue 13): one result per path, invalid URLs and
output folders refused at once, a closed stdout ending the program quietly, and errors that
name the user's file rather than the partial file beside it.

CLI tests run real subprocesses against tests/origin.py and judge them by what a user sees;
library tests call the public API the same way.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import modelhaul
from conftest import cli_env, modelhaul_cmd
from helpers import blob
from modelhaul import engine
from modelhaul.config import DownloadConfig, RetryPolicy
from modelhaul.errors import InvalidInput
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
    part, journal = engine.part_paths(out)
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
