"""``modelhaul get`` from the outside: real subprocesses against the fault-injecting origin.

Each test runs the CLI as a user would (``python -m modelhaul.cli.main``) and judges it only by
what a user sees: exit status, stdout/stderr, files on disk, and what the origin was asked.
The environment comes from the test process, which conftest already points at a private HOME
and state directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import cli_env, modelhaul_cmd
from helpers import sha
from origin import Fault, Origin

MiB = 1024 * 1024
RUN_TIMEOUT_S = 60
RESULT_KEYS = {"event", "status", "path", "size", "sha256", "error"}


def payload(n: int, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"\x00" * (n % 32)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        modelhaul_cmd(*args),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=cwd,
        env=env,
    )


def start_cli(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        modelhaul_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd
    )


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def last_json(stdout: str) -> dict[str, Any]:
    lines = json_lines(stdout)
    assert lines, "no JSON line on stdout"
    return lines[-1]


def assert_clean_failure(r: Any, code: int) -> None:
    """Failed as expected, told the user in one line plus a hint, and showed no traceback."""
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert "Traceback" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert any(line.startswith("modelhaul: error:") for line in lines), r.stderr
    assert any(line.strip().startswith("hint:") for line in lines), r.stderr


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll something only the file system or a process can tell, with a bound."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        time.sleep(0.02)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """An empty directory for downloads (tmp_path also holds the isolated HOME)."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def refused_url() -> str:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/x.bin"


def journal_done(journal: Path) -> list[tuple[int, int]]:
    """The [start, end) ranges a partial file's journal says are on disk."""
    try:
        data = json.loads(journal.read_text())
    except (OSError, ValueError):
        return []
    return [(start, end) for start, end in data.get("done", [])]


def journal_done_bytes(journal: Path) -> int:
    return sum(end - start for start, end in journal_done(journal))


def refetched_bytes(origin: Origin, name: str, held: list[tuple[int, int]]) -> int:
    """How many bytes the requests for ``name`` asked for again out of ``held``.

    Judged by the Range headers, not by bytes served: on loopback a server pushes a whole
    stolen-from range into socket buffers before the client can close, which says nothing
    about what the client asked for.
    """
    total = 0
    for req in origin.requests_for(name):
        header = req.range_header
        assert header is not None and header.startswith("bytes="), header
        first, _, last = header[6:].partition("-")
        start, end = int(first), int(last) + 1 if last else 2**62
        total += sum(max(0, min(end, e) - max(start, s)) for s, e in held)
    return total


class LineReader:
    """Read a child's stdout or stderr in a thread, so a test can await a line with a bound."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put("")

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if not line:
                raise AssertionError("the process ended before the awaited line")
            self.seen.append(line)
            if predicate(line):
                return

    def rest(self) -> str:
        self._thread.join(RUN_TIMEOUT_S)
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            self.seen.append(line)
        return "".join(self.seen)


# ---------------------------------------------------------------------------- success paths


def test_json_result_line_shape(origin: Origin, work: Path) -> None:
    data = payload(3 * MiB)
    origin.add_file("model.bin", data)
    r = run_cli("get", origin.url("model.bin"), "-d", str(work), "--json")
    assert r.returncode == 0, r.stderr
    lines = json_lines(r.stdout)
    result = lines[-1]
    assert result.keys() >= RESULT_KEYS
    assert result["event"] == "result"
    assert result["status"] == "completed"
    assert result["error"] is None
    assert isinstance(result["path"], str) and Path(result["path"]) == work / "model.bin"
    assert isinstance(result["size"], int) and result["size"] == len(data)
    assert isinstance(result["sha256"], str) and result["sha256"] == sha(data)
    assert all(line["event"] != "result" for line in lines[:-1])
    assert (work / "model.bin").read_bytes() == data
    assert sorted(p.name for p in work.iterdir()) == ["model.bin"]


def test_quiet_success_prints_nothing(origin: Origin, work: Path) -> None:
    origin.add_file("q.bin", payload(MiB))
    r = run_cli("get", origin.url("q.bin"), "-o", str(work / "q.bin"), "-q")
    assert r.returncode == 0
    assert r.stderr == ""
    assert r.stdout == ""


def test_plain_output_when_not_a_terminal(origin: Origin, work: Path) -> None:
    data = payload(MiB, seed=1)
    origin.add_file("p.bin", data)
    r = run_cli("get", origin.url("p.bin"), "-d", str(work))
    assert r.returncode == 0
    assert r.stdout == ""
    assert "\x1b[" not in r.stderr  # no terminal control codes into a pipe
    assert sha(data) in r.stderr and "p.bin" in r.stderr


def test_output_file_and_headers(origin: Origin, work: Path) -> None:
    data = payload(2 * MiB, seed=2)
    origin.add_file("h.bin", data)
    out = work / "sub" / "named.bin"
    r = run_cli(
        "get", origin.url("h.bin"), "-o", str(out), "-H", "X-Token: abc", "-H", "X-Other:  v "
    )
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    requests = origin.requests_for("h.bin")
    assert requests and all(req.headers.get("X-Token") == "abc" for req in requests)
    assert all(req.headers.get("X-Other") == "v" for req in requests)


def test_limit_rate_caps_speed(origin: Origin, work: Path) -> None:
    data = payload(2 * MiB, seed=3)
    origin.add_file("slow.bin", data)
    started = time.monotonic()
    r = run_cli("get", origin.url("slow.bin"), "-d", str(work), "--limit-rate", "1M", "-q")
    elapsed = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    # 2 MiB at 1 MiB/s with at most half a second of burst cannot take under ~1.5 s.
    assert elapsed >= 1.2
    assert (work / "slow.bin").read_bytes() == data


def test_stalled_connection_is_dropped_after_timeout(origin: Origin, work: Path) -> None:
    data = payload(2 * MiB, seed=4)
    origin.add_file("stall.bin", data)
    origin.plan("stall.bin", [Fault(stall_after=256 * 1024, stall_s=120)])
    r = run_cli("get", origin.url("stall.bin"), "-d", str(work), "--timeout", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert last_json(r.stdout)["sha256"] == sha(data)
    ranges = [req.range_header for req in origin.requests_for("stall.bin")]
    assert len(ranges) >= 2
    assert ranges[1] is not None and not ranges[1].startswith("bytes=0-")  # resumed, not restarted


def test_retries_counts_attempts_without_progress(origin: Origin, work: Path) -> None:
    data = payload(MiB, seed=5)
    origin.add_file("flaky.bin", data)
    origin.plan("flaky.bin", [Fault(status=503), Fault(status=503)])
    r = run_cli("get", origin.url("flaky.bin"), "-d", str(work), "--retries", "2", "-q")
    assert r.returncode == 0, r.stderr
    assert (work / "flaky.bin").read_bytes() == data

    origin.add_file("down.bin", data)
    origin.plan("down.bin", [Fault(status=503), Fault(status=503)])
    r = run_cli("get", origin.url("down.bin"), "-d", str(work), "--retries", "1", "--json")
    assert_clean_failure(r, 1)
    assert last_json(r.stdout)["error"]["category"] == "server_error"
    assert len(origin.requests_for("down.bin")) == 2
    assert not (work / "down.bin").exists()


# ---------------------------------------------------------------------------- naming


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        ('attachment; filename="../../escape.bin"', "escape.bin"),
        ('attachment; filename=".bashrc"', "bashrc"),
        ("attachment; filename*=UTF-8''ctl%01%0Aname.bin", "ctlname.bin"),
        ('attachment; filename="nice.safetensors"', "nice.safetensors"),
    ],
)
def test_name_from_content_disposition_is_sanitised(
    origin: Origin, work: Path, disposition: str, expected: str
) -> None:
    data = payload(MiB, seed=6)
    origin.add_file("dl", data, content_disposition=disposition)
    target = work / "a" / "b"
    r = run_cli("get", origin.url("dl"), "-d", str(target), "--json")
    assert r.returncode == 0, r.stderr
    assert last_json(r.stdout)["path"] == str(target / expected)
    assert sorted(p.name for p in target.iterdir()) == [expected]
    assert (target / expected).read_bytes() == data
    assert sorted(p.name for p in work.iterdir()) == ["a"]  # nothing escaped upwards
    assert sorted(p.name for p in (work / "a").iterdir()) == ["b"]


def test_name_from_url_path_without_query(origin: Origin, work: Path) -> None:
    data = payload(MiB, seed=7)
    origin.add_file("models/weights.bin", data)
    r = run_cli("get", origin.url("models/weights.bin") + "?download=true", cwd=work)
    assert r.returncode == 0, r.stderr
    assert (work / "weights.bin").read_bytes() == data  # default -d is the current directory


# ---------------------------------------------------------------------------- usage errors


USAGE_ERRORS: dict[str, list[str]] = {
    "bad-url": ["get", "http://"],
    "not-a-url": ["get", "model.bin"],
    "ftp": ["get", "ftp://127.0.0.1/x.bin"],
    "bad-rate": ["get", "{url}", "--limit-rate", "12Q"],
    "bad-hex": ["get", "{url}", "--sha256", "abc123"],
    "o-two-urls": ["get", "{url}", "{url}2", "-o", "x.bin"],
    "missing-list": ["get", "-i", "{tmp}/missing.txt"],
    "empty-list": ["get", "-i", "{tmp}/empty.txt"],
    "bad-header": ["get", "{url}", "-H", "NoColonHere"],
    "x-0": ["get", "{url}", "-x", "0"],
    "x-65": ["get", "{url}", "-x", "65"],
    "x-text": ["get", "{url}", "-x", "many"],
    "timeout-inf": ["get", "{url}", "--timeout", "inf"],
    "retries-negative": ["get", "{url}", "--retries", "-1"],
    "no-url": ["get"],
    "out-escapes": ["get", "-i", "{tmp}/escape.txt"],
    "o-is-dir": ["get", "{url}", "-o", "{tmp}"],
}


@dataclass(frozen=True)
class UsageRun:
    result: subprocess.CompletedProcess[str]
    work: Path
    requests: int


@pytest.fixture(scope="module")
def usage_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, UsageRun]]:
    """Every usage-error case, run at once: they are independent and each is a cold start."""
    root = tmp_path_factory.mktemp("usage")
    home = root / "home"
    # Module scope runs before the per-test isolation in conftest, so isolate here too.
    env = dict(os.environ, HOME=str(home), MODELHAUL_STATE_DIR=str(home / "state"))
    env["NO_PROXY"] = "127.0.0.1,127.0.0.2,localhost"
    lists = root / "lists"
    lists.mkdir()
    (lists / "empty.txt").write_text("# only a comment\n\n   \n")
    with Origin() as origin:
        for case in USAGE_ERRORS:
            origin.add_file(f"{case}.bin", payload(MiB))
        (lists / "escape.txt").write_text(
            f"{origin.url('out-escapes.bin')}\n  out=../../outside.bin\n"
        )
        procs = {}
        for case, template in USAGE_ERRORS.items():
            url = origin.url(f"{case}.bin")
            work = root / case
            work.mkdir()
            args = [a.format(url=url, tmp=lists) for a in template]
            procs[case] = (
                work,
                subprocess.Popen(
                    modelhaul_cmd(*args),
                    cwd=work,
                    env=env,
                    text=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                ),
            )
        runs = {}
        for case, (work, proc) in procs.items():
            out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
            done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            runs[case] = UsageRun(done, work, len(origin.requests_for(f"{case}.bin")))
        yield runs


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_errors_exit_2_without_traceback_or_files(
    usage_runs: dict[str, UsageRun], case: str
) -> None:
    run = usage_runs[case]
    assert_clean_failure(run.result, 2)
    assert list(run.work.iterdir()) == []  # nothing written, not even a partial file
    assert run.requests == 0  # refused before any request


def test_usage_error_with_json_still_ends_with_a_result_line(work: Path) -> None:
    r = run_cli("get", "ftp://example.org/x", "--json", cwd=work)
    assert_clean_failure(r, 2)
    result = last_json(r.stdout)
    assert result.keys() >= RESULT_KEYS
    assert result["status"] == "failed"
    assert result["error"]["category"] == "invalid_input"
    assert result["error"]["hint"]


# ---------------------------------------------------------------------------- failures


def test_not_found_exit_1(origin: Origin, work: Path) -> None:
    r = run_cli("get", origin.url("nope.bin"), "-d", str(work), "--json")
    assert_clean_failure(r, 1)
    result = last_json(r.stdout)
    assert result.keys() >= RESULT_KEYS
    assert result["status"] == "failed"
    assert result["path"] is None and result["size"] is None and result["sha256"] is None
    assert result["error"]["category"] == "not_found"
    assert isinstance(result["error"]["message"], str) and result["error"]["hint"]
    assert list(work.iterdir()) == []


def test_connection_refused_with_no_retries_exit_1(work: Path) -> None:
    started = time.monotonic()
    r = run_cli("get", refused_url(), "-d", str(work), "--retries", "0", "--json")
    assert_clean_failure(r, 1)
    assert last_json(r.stdout)["error"]["category"] == "network"
    assert time.monotonic() - started < 20  # no retry loop
    assert list(work.iterdir()) == []


def test_checksum_mismatch_leaves_nothing(origin: Origin, work: Path) -> None:
    origin.add_file("m.bin", payload(MiB, seed=8))
    r = run_cli("get", origin.url("m.bin"), "-d", str(work), "--sha256", "0" * 64, "--json")
    assert_clean_failure(r, 1)
    assert last_json(r.stdout)["error"]["category"] == "integrity"
    assert list(work.iterdir()) == []


def test_several_files_one_missing(origin: Origin, work: Path) -> None:
    data = payload(MiB, seed=9)
    origin.add_file("ok.bin", data)
    r = run_cli("get", origin.url("ok.bin"), origin.url("gone.bin"), "-d", str(work), "--json")
    assert_clean_failure(r, 1)
    assert "gone.bin" in r.stderr  # says which file failed
    result = last_json(r.stdout)
    assert result["status"] == "failed" and result["error"]["category"] == "not_found"
    statuses = sorted(f["status"] for f in result["files"])
    assert statuses == ["completed", "failed"]
    assert (work / "ok.bin").read_bytes() == data


# ---------------------------------------------------------------------------- re-runs


def test_rerun_with_sha256_transfers_nothing(origin: Origin, work: Path) -> None:
    data = payload(2 * MiB, seed=10)
    origin.add_file("v.bin", data)
    out = str(work / "v.bin")
    r = run_cli("get", origin.url("v.bin"), "-o", out, "--sha256", sha(data).upper(), "-q")
    assert r.returncode == 0, r.stderr
    before = len(origin.requests)
    r = run_cli("get", origin.url("v.bin"), "-o", out, "--sha256", sha(data), "--json")
    assert r.returncode == 0, r.stderr
    assert last_json(r.stdout)["sha256"] == sha(data)
    assert len(origin.requests) == before
    # Even with no record of the first run, the digest proves the file is already there.
    env = dict(os.environ, MODELHAUL_STATE_DIR=str(work / "fresh-state"))
    r = run_cli("get", origin.url("v.bin"), "-o", out, "--sha256", sha(data), "-q", env=env)
    assert r.returncode == 0, r.stderr
    assert len(origin.requests) == before


def test_input_list_with_options_and_rerun_fetches_nothing(origin: Origin, work: Path) -> None:
    files = {f"f{i}.bin": payload((i + 1) * MiB, seed=20 + i) for i in range(3)}
    for name, data in files.items():
        origin.add_file(name, data)
    listing = work / "list.txt"
    listing.write_text(
        "# models\n"
        f"{origin.url('f0.bin')}\n"
        "  out=renamed.bin\n"
        f"  sha256={sha(files['f0.bin'])}\n"
        "\n"
        f"{origin.url('f1.bin')}\n"
        f"{origin.url('f2.bin')}\n"
        "\tout=nested/two.bin\n"
    )
    dest = work / "out"
    r = run_cli("get", "-i", str(listing), "-d", str(dest), "-j", "2", "--json")
    assert r.returncode == 0, r.stderr
    result = last_json(r.stdout)
    assert result["status"] == "completed" and len(result["files"]) == 3
    assert (dest / "renamed.bin").read_bytes() == files["f0.bin"]
    assert (dest / "f1.bin").read_bytes() == files["f1.bin"]
    assert (dest / "nested" / "two.bin").read_bytes() == files["f2.bin"]
    before = len(origin.requests)
    r = run_cli("get", "-i", str(listing), "-d", str(dest), "-j", "2", "-q")
    assert r.returncode == 0, r.stderr
    assert len(origin.requests) == before

    listing.write_text(f"{origin.url('f1.bin')}\n  sha256={'0' * 64}\n")
    r = run_cli("get", "-i", str(listing), "-d", str(work / "bad"), "-q")
    assert_clean_failure(r, 1)
    assert not (work / "bad" / "f1.bin").exists()


# ---------------------------------------------------------------------------- interruption


def test_ctrl_c_exits_130_keeps_partial_and_rerun_resumes(origin: Origin, work: Path) -> None:
    data = payload(8 * MiB, seed=30)
    origin.add_file("big.bin", data)
    origin.set_default("big.bin", Fault(rate_bytes_per_s=2 * MiB))
    out = work / "big.bin"
    proc = start_cli("get", origin.url("big.bin"), "-o", str(out), "--json")
    origin.wait_bytes("big.bin", 2 * MiB)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    result = last_json(stdout)
    assert result.keys() >= RESULT_KEYS
    assert result["status"] == "cancelled"
    assert result["error"]["category"] == "cancelled"
    assert result["path"] == str(out)
    assert not out.exists()
    part = work / "big.bin.modelhaul.part"
    journal = work / "big.bin.modelhaul.journal"
    assert part.exists() and journal.exists()
    held = journal_done(journal)
    assert sum(e - s for s, e in held) >= MiB

    origin.set_default("big.bin", None)
    origin.reset_stats()
    r = run_cli("get", origin.url("big.bin"), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    assert not part.exists() and not journal.exists()
    assert refetched_bytes(origin, "big.bin", held) == 0


def test_a_resumed_get_reports_the_bytes_it_received(origin: Origin, work: Path) -> None:
    data = payload(10 * MiB, seed=33)
    origin.add_file("ten.bin", data)
    origin.set_default("ten.bin", Fault(rate_bytes_per_s=4 * MiB))
    out = work / "ten.bin"
    journal = work / "ten.bin.modelhaul.journal"
    proc = start_cli("get", origin.url("ten.bin"), "-o", str(out), "-q")
    try:
        wait_until(lambda: journal_done_bytes(journal) >= 6 * MiB, 30, "6 MiB in the journal")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 130
    held = journal_done_bytes(journal)
    origin.set_default("ten.bin", None)
    origin.reset_stats()

    result = last_json(run_cli("get", origin.url("ten.bin"), "-o", str(out), "--json").stdout)

    assert result["status"] == "completed" and result["size"] == len(data)
    assert len(data) - held <= result["bytes_transferred"] <= origin.bytes_served("ten.bin")
    assert result["bytes_transferred"] < len(data)
    again = last_json(run_cli("get", origin.url("ten.bin"), "-o", str(out), "--json").stdout)
    assert again["status"] == "completed" and again["bytes_transferred"] == 0


def test_ctrl_c_against_a_server_without_range_says_the_next_run_starts_over(
    origin: Origin, work: Path
) -> None:
    data = payload(8 * MiB, seed=34)
    origin.add_file("norange.bin", data, accept_ranges=False)
    origin.set_default("norange.bin", Fault(rate_bytes_per_s=2 * MiB))
    out = work / "norange.bin"
    proc = start_cli("get", origin.url("norange.bin"), "-o", str(out), "--json")
    origin.wait_bytes("norange.bin", 2 * MiB)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    said = stderr.lower()
    assert "cannot resume" in said and "starts it over" in said, stderr
    assert "partial data was kept" not in said
    error = last_json(stdout)["error"]
    assert error["category"] == "cancelled"
    assert "cannot resume" in error["message"] and "resume" not in error["hint"]
    # A partial file no run can resume is not kept.
    assert sorted(p.name for p in work.iterdir()) == []

    origin.set_default("norange.bin", None)
    origin.reset_stats()
    r = run_cli("get", origin.url("norange.bin"), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    assert origin.ranges_served("norange.bin") == [(0, len(data))]


def test_ctrl_c_on_a_list_resumes_only_unfinished_files(origin: Origin, work: Path) -> None:
    small, big = payload(MiB, seed=31), payload(8 * MiB, seed=32)
    origin.add_file("small.bin", small)
    origin.add_file("big.bin", big)
    origin.set_default("big.bin", Fault(rate_bytes_per_s=2 * MiB))
    listing = work / "list.txt"
    listing.write_text(f"{origin.url('small.bin')}\n{origin.url('big.bin')}\n")
    dest = work / "out"
    args = ("get", "-i", str(listing), "-d", str(dest), "-q")
    proc = start_cli(*args)
    origin.wait_bytes("big.bin", 2 * MiB)
    wait_until((dest / "small.bin").exists, 30, "the small file to be published")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert not (dest / "big.bin").exists()
    journals = list(dest.glob("*.modelhaul.journal"))
    assert len(journals) == 1  # the unfinished file only
    held = journal_done(journals[0])
    assert held

    origin.set_default("big.bin", None)
    origin.reset_stats()
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert origin.requests_for("small.bin") == []
    assert (dest / "small.bin").read_bytes() == small
    assert (dest / "big.bin").read_bytes() == big
    assert refetched_bytes(origin, "big.bin", held) == 0


def test_a_named_list_rerun_after_ctrl_c_finds_each_partial_file(
    origin: Origin, work: Path
) -> None:
    # Entries with out= names: from the second file of a folder on, get judges what is on disk
    # by one listing of the folder, and tells the engine which targets it saw nothing of.
    # Files interrupted part-way must not be among them: their partial data is resumed.
    files = {f"f{i}.bin": payload(3 * MiB, seed=60 + i) for i in range(4)}
    for name, data in files.items():
        origin.add_file(name, data)
        origin.set_default(name, Fault(rate_bytes_per_s=MiB))
    listing = work / "list.txt"
    listing.write_text("".join(f"{origin.url(n)}\n  out={n}\n" for n in files))
    dest = work / "out"
    args = ("get", "-i", str(listing), "-d", str(dest), "-q", "-x", "1")
    proc = start_cli(*args)
    journals = [dest / f"{n}.modelhaul.journal" for n in files]
    wait_until(lambda: all(journal_done(j) for j in journals), 30, "every file under way")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 130, stderr
    held = {n: journal_done(j) for n, j in zip(files, journals, strict=True)}
    assert all(held.values())

    for name in files:
        origin.set_default(name, None)
    origin.reset_stats()
    # From a state directory that never locked them (another HOME, a container): only the
    # partial files and journals beside the targets tell what is held.
    env = cli_env(MODELHAUL_STATE_DIR=str(work / "other-state"))
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r.stderr
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
        assert refetched_bytes(origin, name, held[name]) == 0, name


def test_kill_9_then_rerun_resumes(origin: Origin, work: Path) -> None:
    data = payload(16 * MiB, seed=40)
    origin.add_file("crash.bin", data)
    origin.set_default("crash.bin", Fault(rate_bytes_per_s=2 * MiB))
    out = work / "crash.bin"
    journal = work / "crash.bin.modelhaul.journal"
    proc = start_cli("get", origin.url("crash.bin"), "-o", str(out), "-x", "2", "-q")
    try:
        wait_until(lambda: journal_done_bytes(journal) >= 3 * MiB, 30, "3 MiB in the journal")
    finally:
        proc.kill()
        proc.communicate(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL
    held = journal_done(journal)
    origin.set_default("crash.bin", None)
    origin.reset_stats()
    r = run_cli("get", origin.url("crash.bin"), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    assert last_json(r.stdout)["sha256"] == sha(data)
    assert refetched_bytes(origin, "crash.bin", held) == 0


def test_two_processes_on_one_output_never_corrupt_it(origin: Origin, work: Path) -> None:
    data = payload(8 * MiB, seed=50)
    origin.add_file("shared.bin", data)
    out = str(work / "shared.bin")
    first = start_cli("get", origin.url("shared.bin"), "-o", out, "-q", "--limit-rate", "4M")
    origin.wait_bytes("shared.bin", MiB)
    # A download probes before it takes the target (bytes flow before the lock): wait until
    # its partial file, made under the lock, is there.
    wait_until(lambda: Path(out + ".modelhaul.part").exists(), 30, "the first to hold the target")
    # Frozen mid-download, the first process holds the target for as long as the test needs.
    first.send_signal(signal.SIGSTOP)
    try:
        second = start_cli("get", origin.url("shared.bin"), "-o", out, "--json")
        said = LineReader(second.stderr)
        said.wait_for(lambda line: "waiting" in line, timeout=30)
        assert second.poll() is None  # it waits rather than fetching alongside
    finally:
        first.send_signal(signal.SIGCONT)
    _, err1 = first.communicate(timeout=RUN_TIMEOUT_S)
    assert second.stdout is not None
    out2 = second.stdout.read()  # stderr belongs to the reader thread
    second.wait(timeout=RUN_TIMEOUT_S)
    assert first.returncode == 0, err1
    assert second.returncode == 0, said.rest()
    result = last_json(out2)
    assert result["status"] == "completed" and result["sha256"] == sha(data)
    assert Path(out).read_bytes() == data
    assert origin.bytes_served("shared.bin") == len(data)  # the second fetched nothing


def test_ctrl_c_while_rate_limited_keeps_what_arrived(origin: Origin, work: Path) -> None:
    origin.add_file("capped.bin", payload(8 * MiB, seed=60))
    out = work / "capped.bin"
    proc = start_cli(
        "get", origin.url("capped.bin"), "-o", str(out), "--limit-rate", "512K", "--json"
    )
    reader = LineReader(proc.stdout)
    # Two seconds at 512 KiB/s: about 1 MiB has passed the cap by now.
    reader.wait_for(lambda line: json.loads(line).get("elapsed", 0) >= 2.0, timeout=30)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 130
    assert last_json(reader.rest())["status"] == "cancelled"
    # Today 125-380 KiB are kept: the rest of what arrived sat in the bucket with its chunk.
    assert journal_done_bytes(work / "capped.bin.modelhaul.journal") >= 640 * 1024


def test_a_list_entry_that_names_a_directory_is_refused(origin: Origin, work: Path) -> None:
    # The first file of a folder is judged by a stat, later ones by one listing of the folder:
    # a directory named by the third entry is refused as the first's would be, before any
    # request is made.
    for name in ("a.bin", "b.bin"):
        origin.add_file(name, payload(1000))
    dest = work / "out"
    (dest / "taken").mkdir(parents=True)
    listing = work / "list.txt"
    listing.write_text(
        "".join(f"{origin.url(n)}\n  out={out}\n" for n, out in [("a.bin", "a"), ("b.bin", "b")])
        + f"{origin.url('a.bin')}\n  out=taken\n"
    )
    r = run_cli("get", "-i", str(listing), "-d", str(dest), "--json")
    assert r.returncode == 2, r.stderr
    assert json_lines(r.stdout)[-1]["error"]["message"] == (
        f"the output path {dest / 'taken'} is a directory"
    )
    assert origin.requests == []
