"""Kill a download at each stage of its life, then show that the next run finishes it.

Stages an outside signal can hit reliably (while the probe waits for its answer, in the middle
of a segment) are hit from the outside: the test waits for the origin to see the request or the
bytes, then sends SIGKILL. The others (after the probe, between a segment's last write and the
journal, while hashing, between the rename and the journal's removal, while a model's snapshot
is being linked) are hit from the inside: ``tests/support/crash_runner.py`` runs the CLI with the
engine's private stage hook set to SIGKILL the process right there.

After every kill:

- the output path holds nothing, or exactly the right bytes;
- every range the journal claims is really in the partial file;
- a store has no snapshot entry that points at a missing blob or a blob whose content does not
  match its name;

and the next, ordinary run completes with the right bytes, asks the origin for none of the bytes
the journal held, leaves nothing behind, and is not held up by the dead process's lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import modelhaul_cmd
from helpers import sha
from origin import Fault, Origin, RequestRecord

MiB = 1024 * 1024
RUNNER = Path(__file__).resolve().parents[1] / "support" / "crash_runner.py"
RUN_TIMEOUT_S = 60
# Hook stages of a single download, in the order a download passes them.
ENGINE_STAGES = (
    "probed",
    "segment_done_before_journal",
    "hashing",
    "renamed_before_journal_removal",
)


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.stdout.splitlines() if x.strip().startswith("{")]

    @property
    def result(self) -> dict[str, Any]:
        assert self.lines, f"no JSON (exit {self.code}): {self.stderr}"
        return self.lines[-1]


def run(cmd: list[str], cwd: Path) -> Run:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=cwd)
    return Run(done.returncode, done.stdout, done.stderr)


def crash_at(stage: str, *args: str, cwd: Path) -> Run:
    """Run the CLI until it reaches ``stage`` (``name`` or ``name:N``); it must die there."""
    r = run([sys.executable, str(RUNNER), stage, *args], cwd)
    assert r.code == -signal.SIGKILL, f"never reached {stage}: exit {r.code}\n{r.stderr}"
    return r


def finish(*args: str, cwd: Path) -> Run:
    """The ordinary re-run: it must complete, and not wait for a lock of the dead process."""
    r = run(modelhaul_cmd(*args), cwd)
    assert r.code == 0, r.stderr
    assert "Traceback" not in r.stderr
    notices = [x for x in r.lines if x.get("event") == "notice"]
    assert not notices, f"the re-run waited for something: {notices}"
    return r


def journal_ranges(journal: Path) -> list[tuple[int, int]]:
    try:
        return [(s, e) for s, e in json.loads(journal.read_bytes())["done"]]
    except FileNotFoundError:
        return []


def assert_journal_true(journal: Path, part: Path, data: bytes) -> list[tuple[int, int]]:
    """Every range the journal claims holds the right bytes; returns the ranges.

    A journal without its partial file (left between the rename and its removal) holds nothing.
    """
    held = journal_ranges(journal) if part.exists() else []
    if held:
        raw = part.read_bytes()
        for start, end in held:
            assert raw[start:end] == data[start:end], f"journal claims [{start}, {end})"
    return held


def requested(r: RequestRecord) -> tuple[int, int]:
    header = r.range_header
    if header is None:
        return (0, 2**62)
    first, _, last = header.removeprefix("bytes=").partition("-")
    return int(first), int(last) + 1 if last else 2**62


def asked_again(records: list[RequestRecord], held: list[tuple[int, int]]) -> int:
    total = 0
    for r in records:
        start, end = requested(r)
        total += sum(max(0, min(end, e) - max(start, s)) for s, e in held)
    return total


# ---------------------------------------------------------------------------------- get


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


DATA = blob(24 * MiB, seed=7)


def get_args(origin: Origin, out: Path, *extra: str) -> list[str]:
    return [
        "get",
        origin.url("m.bin"),
        "-o",
        str(out),
        "--sha256",
        sha(DATA),
        "-x",
        "4",
        "--retries",
        "2",
        "--json",
        *extra,
    ]


def check_after_kill(out: Path) -> list[tuple[int, int]]:
    if out.exists():
        assert out.read_bytes() == DATA, "a killed run left a wrong file"
    part = out.with_name(out.name + ".modelhaul.part")
    journal = out.with_name(out.name + ".modelhaul.journal")
    return assert_journal_true(journal, part, DATA)


def check_finished(origin: Origin, out: Path, first: int, held: list[tuple[int, int]]) -> None:
    assert out.read_bytes() == DATA
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name], "leftovers"
    again = origin.requests_for("m.bin")[first:]
    assert asked_again(again, held) == 0, "the re-run fetched bytes the journal held"


@pytest.mark.parametrize("stage", ENGINE_STAGES)
def test_get_killed_at_a_stage_finishes_on_the_next_run(
    origin: Origin, work: Path, state_dir: Path, stage: str
) -> None:
    origin.add_file("m.bin", DATA)
    out = work / "m.bin"

    crash_at(stage, *get_args(origin, out), cwd=work)
    origin.wait_idle()
    held = check_after_kill(out)
    # The dead process's lock file is still there; the re-run must not wait for it.
    assert list((state_dir / "locks").iterdir())
    first = len(origin.requests_for("m.bin"))
    finish(*get_args(origin, out), cwd=work)

    check_finished(origin, out, first, held)
    rerun = origin.requests_for("m.bin")[first:]
    if stage == "hashing":
        # Every byte was on disk and journaled: the re-run only hashes.
        assert held == [(0, len(DATA))]
        assert rerun == []
    if stage == "renamed_before_journal_removal":
        assert rerun == [], "the published file was verified, not fetched again"


def test_get_killed_while_the_probe_waits_for_its_answer(origin: Origin, work: Path) -> None:
    origin.add_file("m.bin", DATA)
    origin.plan("m.bin", [Fault(delay_s=60)])
    out = work / "m.bin"
    proc = subprocess.Popen(modelhaul_cmd(*get_args(origin, out)), cwd=work)
    try:
        origin.wait_requests("m.bin", 1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=RUN_TIMEOUT_S)
    origin.wait_idle()
    held = check_after_kill(out)
    assert held == []

    finish(*get_args(origin, out), cwd=work)

    check_finished(origin, out, 1, held)


def test_get_killed_mid_segment_resumes_from_the_journal(origin: Origin, work: Path) -> None:
    origin.add_file("m.bin", DATA)
    # Slow enough that the kill lands mid-segment, after the journal recorded something.
    origin.set_default("m.bin", Fault(rate_bytes_per_s=4 * MiB))
    out = work / "m.bin"
    journal = work / "m.bin.modelhaul.journal"
    proc = subprocess.Popen(modelhaul_cmd(*get_args(origin, out)), cwd=work)
    try:
        # Wait for a journal that holds bytes (written at least once a second).
        while not journal_ranges(journal):
            origin.wait_bytes("m.bin", origin.bytes_served("m.bin") + 256 * 1024, timeout=30)
            assert proc.poll() is None, "the download ended before the kill"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=RUN_TIMEOUT_S)
    origin.wait_idle()
    origin.set_default("m.bin", None)
    held = check_after_kill(out)
    assert 0 < sum(e - s for s, e in held) < len(DATA)
    first = len(origin.requests_for("m.bin"))

    finish(*get_args(origin, out), cwd=work)

    check_finished(origin, out, first, held)


def test_killed_after_the_rename_without_a_checksum_still_ends_right(
    origin: Origin, work: Path
) -> None:
    origin.add_file("m.bin", DATA)
    out = work / "m.bin"
    args = [a for a in get_args(origin, out) if a not in ("--sha256", sha(DATA))]

    crash_at("renamed_before_journal_removal", *args, cwd=work)
    assert out.read_bytes() == DATA
    finish(*args, cwd=work)

    assert out.read_bytes() == DATA
    assert sorted(p.name for p in work.iterdir()) == ["m.bin"]


def test_killed_twice_in_a_row_at_different_stages(origin: Origin, work: Path) -> None:
    origin.add_file("m.bin", DATA)
    out = work / "m.bin"

    crash_at("segment_done_before_journal:2", *get_args(origin, out), cwd=work)
    origin.wait_idle()
    check_after_kill(out)
    crash_at("hashing", *get_args(origin, out), cwd=work)
    origin.wait_idle()
    held = check_after_kill(out)
    first = len(origin.requests_for("m.bin"))
    finish(*get_args(origin, out), cwd=work)

    check_finished(origin, out, first, held)


# ---------------------------------------------------------------------------------- pull

MODEL = {
    "weights/model.safetensors": blob(20 * MiB, seed=11),
    "tokenizer.json": blob(3 * MiB, seed=12),
    "config.json": b'{"model_type": "crash"}',
}


@pytest.fixture
def manifest(origin: Origin, tmp_path: Path) -> Path:
    lines = ['name = "org/crash"']
    for path, data in MODEL.items():
        name = path.replace("/", "_")
        origin.add_file(name, data)
        lines += [
            "[[files]]",
            f'path = "{path}"',
            f"size = {len(data)}",
            f'sha256 = "{sha(data)}"',
            f'url = "{origin.url(name)}"',
        ]
    path = tmp_path / "crash.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def blob_is_its_name(path: Path) -> bool:
    data = path.read_bytes()
    if len(path.name) == 64:
        return sha(data) == path.name
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == path.name


def assert_store_sound(cache: Path) -> int:
    """No snapshot entry points at a missing blob or at one whose content is not its name.

    Returns the number of entries checked.
    """
    entries = 0
    for snap in cache.glob("*/snapshots/*"):
        for entry in snap.rglob("*"):
            if entry.is_dir() and not entry.is_symlink():
                continue
            entries += 1
            target = entry.resolve()
            assert target.is_file(), f"{entry} points at a missing blob"
            if entry.is_symlink():
                assert target.parent.name == "blobs", f"{entry} points outside the blobs"
                assert blob_is_its_name(target), f"{entry} points at a wrong blob"
    return entries


def snapshot_entries(cache: Path) -> dict[str, bytes]:
    (snap,) = cache.glob("models--org--crash/snapshots/*")
    return {p.relative_to(snap).as_posix(): p.read_bytes() for p in snap.rglob("*") if p.is_file()}


PULL_STAGES = (*ENGINE_STAGES, "linking", "linking:2", "linking:3")


@pytest.mark.parametrize("stage", PULL_STAGES)
def test_pull_killed_at_a_stage_never_leaves_a_bad_snapshot(
    origin: Origin, manifest: Path, work: Path, stage: str
) -> None:
    cache = Path(os.environ["HF_HUB_CACHE"])
    args = ["pull", str(manifest), "--json", "-j", "1", "--retries", "2"]

    crash_at(stage, *args, cwd=work)
    origin.wait_idle()
    assert_store_sound(cache)
    finish(*args, cwd=work)

    assert assert_store_sound(cache) == len(MODEL)
    assert snapshot_entries(cache) == MODEL
    leftovers = [p.name for p in cache.rglob("*") if ".modelhaul" in p.name and p.is_file()]
    assert leftovers == [], "partial data or journals left in the store"
    refs = cache / "models--org--crash" / "refs" / "main"
    assert refs.read_text().strip() == next(cache.glob("models--org--crash/snapshots/*")).name
