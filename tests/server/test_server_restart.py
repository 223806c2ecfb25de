"""The queue survives the service being killed: ``modelhaul serve`` in a subprocess, SIGKILL
mid-download, start it again, and the download completes without fetching again the ranges
its journal already held."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from modelhaul.policy.ranges import RangeSet
from origin import Fault, Origin
from server_harness import FINAL, KiB, MiB, ServerProcess, wait_state, wait_until

pytestmark = pytest.mark.timeout(90)


def journal_done(path: Path) -> RangeSet:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return RangeSet()
    return RangeSet([(s, e) for s, e in data.get("done", [])])


def held_bytes(ranges: RangeSet) -> int:
    return sum(e - s for s, e in ranges.to_list())


def test_sigkill_mid_download_then_restart_resumes(tmp_path: Path, origin: Origin) -> None:
    data = random.Random(7).randbytes(6 * MiB)
    small = random.Random(8).randbytes(64 * KiB)
    origin.add_file("big.bin", data)
    origin.set_default("big.bin", Fault(rate_bytes_per_s=512 * KiB))  # ~12 s: a wide margin
    origin.add_file("later.bin", small)
    folder = tmp_path / "dl"
    journal = folder / "big.bin.modelhaul.journal"

    first = ServerProcess(tmp_path, "-d", str(folder))
    try:
        with first.client() as api:
            job = api.post(
                "/api/downloads", json={"url": origin.url("big.bin"), "out": "big.bin"}
            ).json()
            later = api.post(
                "/api/downloads",
                json={"url": origin.url("later.bin"), "out": "later.bin", "paused": True},
            ).json()
            assert api.put("/api/limit", json={"rate": "64M"}).status_code == 200
            wait_until(
                lambda: held_bytes(journal_done(journal)) >= 1 * MiB,
                30,
                "a journal holding 1 MiB",
            )
    finally:
        first.kill()
        print(first.output())
    held = journal_done(journal)
    assert 0 < held_bytes(held) < len(data)
    origin.wait_idle()
    origin.reset_stats()
    origin.set_default("big.bin", None)

    second = ServerProcess(tmp_path, "-d", str(folder))
    try:
        with second.client() as api:
            view = wait_state(api, job["id"], FINAL, 45)
            assert view["state"] == "completed", view
            # The user's last decisions came back too.
            assert api.get(f"/api/downloads/{later['id']}").json()["state"] == "paused"
            assert api.get("/api/limit").json() == {"rate_bytes_per_s": 64 * MiB}
    finally:
        print(second.output())
        assert second.stop() == 0, second.output()
    assert (folder / "big.bin").read_bytes() == data
    served = origin.ranges_served("big.bin")
    assert served, "the second run fetched the rest"
    for start, end in served:
        for h_start, h_end in held.to_list():
            assert end <= h_start or start >= h_end, (served, held.to_list())
    assert sum(e - s for s, e in served) <= len(data) - held_bytes(held)
    assert not journal.exists()


def test_graceful_stop_keeps_unfinished_downloads_queued(tmp_path: Path, origin: Origin) -> None:
    data = random.Random(9).randbytes(2 * MiB)
    origin.add_file("g.bin", data)
    origin.set_default("g.bin", Fault(rate_bytes_per_s=256 * KiB))
    folder = tmp_path / "dl"
    first = ServerProcess(tmp_path, "-d", str(folder))
    try:
        with first.client() as api:
            job = api.post(
                "/api/downloads", json={"url": origin.url("g.bin"), "out": "g.bin"}
            ).json()
            origin.wait_bytes("g.bin", 128 * KiB)
    finally:
        assert first.stop() == 0, first.output()  # SIGTERM: pause, journal saved
    origin.set_default("g.bin", None)
    second = ServerProcess(tmp_path, "-d", str(folder))
    try:
        with second.client() as api:
            assert wait_state(api, job["id"], FINAL, 30)["state"] == "completed"
    finally:
        second.stop()
    assert (folder / "g.bin").read_bytes() == data
    assert origin.ranges_served("g.bin")[-1][0] > 0  # resumed, not restarted
