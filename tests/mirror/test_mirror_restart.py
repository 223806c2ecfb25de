"""``modelhaul serve --upstream URL`` killed mid-fetch resumes from the journal (issue 16)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from fakehub import FakeHub
from modelhaul.mirror.resume import record_flight, recorded_flights
from modelhaul.policy.hubpaths import HubPath
from modelhaul.store.repo import RepoStore
from server_harness import ServerProcess, wait_until

MiB = 1024 * 1024
URL = "/hf/org/big/resolve/main/model.safetensors"


def kill_mid_fetch(hub: FakeHub, tmp_path: Path, sha: str, size: int) -> int:
    """Start a mirror, let a client's GET bring 12 MiB of the file upstream, then kill -9 the
    mirror; returns how many connections it had opened to the CDN."""
    hub.set_speed_limit(2 * MiB)
    first = ServerProcess(tmp_path, "--upstream", hub.endpoint)
    try:
        with (
            httpx.Client(base_url=first.url, timeout=30) as c,
            contextlib.suppress(httpx.HTTPError),
            c.stream("GET", URL) as resp,
        ):
            assert resp.status_code == 200
            hub.wait_bytes(sha, 12 * MiB, timeout_s=60, site="cdn")
            connections = sum(1 for r in hub.requests if r.site == "cdn" and r.method == "GET")
            first.kill()
    finally:
        first.kill()
    assert hub.cdn_bytes(sha) < size, "killed before the upstream was done"
    hub.set_speed_limit(None)
    return connections


def test_a_mirror_killed_mid_fetch_resumes_from_the_journal(hub: FakeHub, tmp_path: Path) -> None:
    big = random.Random(11).randbytes(40 * MiB)
    sha = hashlib.sha256(big).hexdigest()
    hub.add_repo("org/big", {"model.safetensors": big})
    connections = kill_mid_fetch(hub, tmp_path, sha, len(big))

    second = ServerProcess(tmp_path, "--upstream", hub.endpoint)
    try:
        with httpx.Client(base_url=second.url, timeout=60) as c:
            again = c.get(URL)
    finally:
        assert second.stop() == 0, second.output()
    assert again.status_code == 200 and again.content == big
    refetched = hub.cdn_bytes(sha) - len(big)
    assert refetched <= connections * 8 * MiB, f"{refetched} bytes fetched twice"


def test_a_restarted_mirror_resumes_its_fetches_before_any_client_asks(
    hub: FakeHub, tmp_path: Path
) -> None:
    big = random.Random(12).randbytes(40 * MiB)
    sha = hashlib.sha256(big).hexdigest()
    commit = hub.add_repo("org/big", {"model.safetensors": big})
    connections = kill_mid_fetch(hub, tmp_path, sha, len(big))

    store = Path(os.environ["HF_HUB_CACHE"]) / "models--org--big"
    second = ServerProcess(tmp_path, "--upstream", hub.endpoint)
    try:
        # No client: the mirror goes on by itself, and the file lands in the store.
        linked = store / "snapshots" / commit / "model.safetensors"
        wait_until(linked.exists, 60, "the resumed fetch completes without a client")
        with httpx.Client(base_url=second.url, timeout=60) as c:
            again = c.get(URL)
    finally:
        assert second.stop() == 0, second.output()
    assert (store / "blobs" / sha).read_bytes() == big
    assert again.status_code == 200 and again.content == big
    refetched = hub.cdn_bytes(sha) - len(big)
    assert refetched <= connections * 8 * MiB, f"{refetched} bytes fetched twice"
    assert not list(store.glob(".modelhaul/mirror-flights/*")), "the record is gone"


def test_concurrent_records_of_one_fetch_all_succeed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The clients of one cold file record its fetch at once, each in a thread.
    rs = RepoStore(tmp_path, "org/m", "model")
    hp = HubPath(kind="resolve", repo_type="model", repo_id="org/m", revision="a" * 40, path="x")
    for round_ in range(10):
        etag = hashlib.sha256(str(round_).encode()).hexdigest()
        start = threading.Barrier(8)

        def record(etag: str = etag, start: threading.Barrier = start) -> None:
            start.wait(10)
            record_flight(rs, hp, "a" * 40, etag)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: record(), range(8), timeout=30))
    assert "could not record" not in caplog.text
    assert len(recorded_flights(tmp_path)) == 10
