"""``modelhaul demo``: the offline demo completes, verifies, and reports what it survived."""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Any

import aiohttp

from conftest import modelhaul_cmd
from modelhaul.http.demo_origin import DemoContent, DemoFaults, DemoOrigin, InjectedFault

MiB = 1024 * 1024
RUN_TIMEOUT_S = 90


def run_demo(*args: str) -> Any:
    return subprocess.run(
        modelhaul_cmd("demo", *args), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )


def expected_sha256(size: int, seed: int = 0) -> str:
    content = DemoContent(size, seed=seed)
    h = hashlib.sha256()
    for index in range((size + MiB - 1) // MiB):
        h.update(content.block(index))
    return h.hexdigest()


def test_demo_small_file_completes_and_verifies() -> None:
    r = run_demo("--size", "8M")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert f"verified: sha256 {expected_sha256(8 * MiB)}" in r.stdout
    assert "faults injected:" in r.stdout
    assert "attempts:" in r.stdout


def test_demo_json_result_line() -> None:
    r = run_demo("--size", "4M", "--seed", "3", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["event"] == "result"
    assert result["status"] == "completed"
    assert result["error"] is None
    assert result["size"] == 4 * MiB
    assert result["sha256"] == expected_sha256(4 * MiB, seed=3)
    assert result["verified"] is True
    assert set(result["faults"]) == {"dropped", "stalled", "http_503"}
    assert all(isinstance(n, int) and n >= 0 for n in result["faults"].values())
    assert isinstance(result["attempts"], int) and result["attempts"] >= 1


def test_demo_quiet_and_bad_size() -> None:
    r = run_demo("--size", "1M", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    r = run_demo("--size", "12Q")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "modelhaul: error:" in r.stderr


def test_demo_content_is_deterministic_and_not_repetitive() -> None:
    a, b = DemoContent(3 * MiB + 5, seed=1), DemoContent(3 * MiB + 5, seed=1)
    whole = b"".join(a.block(i) for i in range(4))
    assert len(whole) == 3 * MiB + 5
    assert a.sha256() == b.sha256() == hashlib.sha256(whole).hexdigest()
    assert b"".join(a.pieces(MiB - 7, 2 * MiB + 9)) == whole[MiB - 7 : 2 * MiB + 9]
    assert len({a.block(i)[:65536] for i in range(3)}) == 3  # no MiB repeats another


async def test_demo_origin_serves_ranges_and_injects_scripted_faults() -> None:
    content = DemoContent(2 * MiB, seed=2)
    whole = b"".join(content.pieces(0, content.size))
    faults = DemoFaults(
        scripted=("http_503", "dropped"),
        drop_p=0,
        stall_p=0,
        error_p=0,
        connection_bytes_per_s=64 * MiB,
        total_bytes_per_s=64 * MiB,
    )
    async with DemoOrigin(content, faults) as origin, aiohttp.ClientSession() as session:
        ranged = {"Range": "bytes=1000-", "If-Range": origin.etag}
        async with session.get(origin.url, headers=ranged) as resp:
            assert resp.status == 503
        async with session.get(origin.url, headers=ranged) as resp:
            assert resp.status == 206
            got = b""
            try:
                async for chunk in resp.content.iter_any():
                    got += chunk
            except aiohttp.ClientError:
                pass
            assert 0 < len(got) < len(whole) - 1000  # cut off mid-body
            assert got == whole[1000 : 1000 + len(got)]
        async with session.get(origin.url, headers=ranged) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 1000-{len(whole) - 1}/{len(whole)}"
            assert await resp.read() == whole[1000:]
        stale = {"Range": "bytes=1000-", "If-Range": '"another"'}
        async with session.get(origin.url, headers=stale) as resp:
            assert resp.status == 200
            assert await resp.read() == whole
        async with session.get(origin.url, headers={"Range": f"bytes={len(whole)}-"}) as resp:
            assert resp.status == 416
    assert origin.stats.faults == {"http_503": 1, "dropped": 1}


def test_demo_shows_each_fault_as_it_happens_and_says_it_is_throttled() -> None:
    """A line per injected fault while the download runs, as many as the summary counts."""
    r = run_demo("--size", "8M", "--json")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    result = records[-1]
    notices = [rec["message"] for rec in records if rec.get("event") == "notice"]
    assert "throttled on purpose" in notices[0]
    assert "6.0 MiB/s per connection and 24.0 MiB/s in total" in notices[0]
    lines = {
        "dropped": [n for n in notices if "origin dropped the connection" in n],
        "stalled": [n for n in notices if "origin stalled" in n],
        "http_503": [n for n in notices if "origin answered HTTP 503" in n],
    }
    assert {kind: len(found) for kind, found in lines.items()} == result["faults"]
    assert sum(result["faults"].values()) >= 1  # the scripted faults make some certain
    # Shown while the transfer goes on, not after it: the first comes before the last progress.
    kinds = [i for i, rec in enumerate(records) if "fault injected" in rec.get("message", "")]
    progress = [i for i, rec in enumerate(records) if rec.get("event") == "progress"]
    assert kinds and progress and kinds[0] < progress[-1]


def test_demo_fault_lines_reach_a_person_on_stderr() -> None:
    r = run_demo("--size", "4M", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert "throttled on purpose" in r.stderr
    assert "modelhaul: fault injected: the origin" in r.stderr
    assert "throttled on purpose" in r.stdout  # the summary says why the speed is what it is


async def test_demo_origin_reports_each_fault_when_it_injects_it() -> None:
    content = DemoContent(2 * MiB, seed=2)
    faults = DemoFaults(
        scripted=("http_503", "dropped"),
        drop_p=0,
        stall_p=0,
        error_p=0,
        connection_bytes_per_s=64 * MiB,
        total_bytes_per_s=64 * MiB,
    )
    seen: list[InjectedFault] = []
    async with (
        DemoOrigin(content, faults, on_fault=seen.append) as origin,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(origin.url) as resp:
            assert resp.status == 503
        assert [f.kind for f in seen] == ["http_503"]  # reported before the answer arrived
        got = b""
        async with session.get(origin.url, headers={"Range": "bytes=1000-"}) as resp:
            try:
                async for chunk in resp.content.iter_any():
                    got += chunk
            except aiohttp.ClientError:
                pass
    assert [f.kind for f in seen] == ["http_503", "dropped"]
    dropped = seen[1]
    assert (dropped.start, dropped.end) == (1000, 2 * MiB)
    assert 1000 < dropped.at < 2 * MiB  # the body stopped part way
    assert len(got) <= dropped.at - 1000
