"""A peer's mirror serves slices (mirror.slices): only the slice asked for is fetched upstream,
once however many ask at the same time, kept apart from the store, and only to callers the Hub
accepts."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from fakehub import FakeHub
from helpers import blob
from modelhaul.policy.slices import SLICE_HEADER
from server_harness import ServerThread, service_config, wait_until

KiB = 1024
MiB = 1024 * KiB
SLICE = 256 * KiB
CONTENT = blob(4 * MiB, seed=7)
SHA = hashlib.sha256(CONTENT).hexdigest()
URL = "/hf/org/sliced/resolve/main/model.safetensors"
TOKEN = "hf_good"


@pytest.fixture
def mirror(hub: FakeHub, tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(service_config(tmp_path, hf_endpoint=hub.endpoint)) as server:
        yield server


def _get(server: ServerThread, start: int, end: int, auth: str | None = None) -> httpx.Response:
    headers = {"Range": f"bytes={start}-{end - 1}", SLICE_HEADER: str(SLICE)}
    if auth:
        headers["Authorization"] = f"Bearer {auth}"
    with server.client() as client:
        return client.get(URL, headers=headers)


def test_eight_askers_of_one_slice_cost_the_upstream_that_slice_once(
    hub: FakeHub, mirror: ServerThread
) -> None:
    hub.add_repo("org/sliced", {"model.safetensors": CONTENT})
    start = 3 * SLICE
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _get(mirror, start, start + SLICE), range(8)))
    for answer in answers:
        assert answer.status_code == 206
        assert answer.content == CONTENT[start : start + SLICE]
    assert hub.cdn_bytes(SHA) == SLICE
    # A range inside a slice already here costs nothing more; the next slice costs one slice.
    assert _get(mirror, start + 10, start + 20).content == CONTENT[start + 10 : start + 20]
    assert _get(mirror, start + SLICE, start + SLICE + 5).content == CONTENT[start + SLICE :][:5]
    # Kept in the service's state directory, not as a (partial) blob of the store.
    slices = mirror.config.state_dir / "mirror-slices" / SHA
    wait_until(lambda: (slices / f"{SLICE}-4").exists(), 20, "the second slice complete")
    assert hub.cdn_bytes(SHA) == 2 * SLICE
    assert sorted(p.name for p in slices.iterdir()) == [f"{SLICE}-3", f"{SLICE}-4"]
    assert not list(mirror.config.store_root.rglob(f"*{SHA}*"))
    # What the mirror fetched for peers is counted (a node's own pull does not count it).
    with mirror.client() as client:
        totals = client.get("/api/mirror/totals").json()
    assert totals == {"upstream_bytes": 2 * SLICE, "slice_upstream_bytes": 2 * SLICE}


def test_a_slice_of_a_gated_model_goes_only_to_a_caller_the_hub_accepts(
    hub: FakeHub, mirror: ServerThread
) -> None:
    hub.set_token(TOKEN)
    hub.add_repo("org/sliced", {"model.safetensors": CONTENT}, gated=True)
    assert _get(mirror, 0, SLICE, auth=TOKEN).content == CONTENT[:SLICE]
    refused = _get(mirror, 0, SLICE)
    assert refused.status_code == 401
    assert refused.content != CONTENT[:SLICE]
    assert _get(mirror, 0, SLICE, auth="hf_wrong").status_code == 401
    assert hub.cdn_bytes(SHA) == SLICE


def test_a_request_without_the_slice_header_is_served_whole_file_as_before(
    hub: FakeHub, mirror: ServerThread
) -> None:
    hub.add_repo("org/sliced", {"model.safetensors": CONTENT})
    with mirror.client() as client:
        answer = client.get(URL, headers={"Range": "bytes=0-9"})
    assert answer.content == CONTENT[:10]
    assert not (mirror.config.state_dir / "mirror-slices").exists()


def test_the_slices_of_a_file_go_once_its_blob_is_in_the_store(
    hub: FakeHub, mirror: ServerThread
) -> None:
    hub.add_repo("org/sliced", {"model.safetensors": CONTENT})
    slices = mirror.config.state_dir / "mirror-slices" / SHA
    assert _get(mirror, 0, SLICE).content == CONTENT[:SLICE]
    wait_until(lambda: (slices / f"{SLICE}-0").exists(), 20, "the slice complete")
    with mirror.client() as client:  # a whole-file client: the blob comes into the store
        assert client.get(URL).content == CONTENT

    def served_from_the_blob_and_slices_gone() -> bool:
        return _get(mirror, 5, 10).content == CONTENT[5:10] and not slices.exists()

    wait_until(served_from_the_blob_and_slices_gone, 20, "the slices removed")


def test_a_slice_nobody_asked_for_lately_goes_at_the_next_sweep(tmp_path: Path) -> None:
    import asyncio
    import os
    import time

    from modelhaul.mirror.slices import SLICE_IDLE_S, SliceFlights

    old, fresh = tmp_path / SHA / f"{SLICE}-0", tmp_path / SHA / f"{SLICE}-1"
    other = tmp_path / ("cd" * 32) / f"{SLICE}-0.part"
    for path in (old, fresh, other):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    stale = time.time() - SLICE_IDLE_S - 60
    os.utime(old, (stale, stale))
    os.utime(other, (stale, stale))

    async def sweep() -> int:
        flights = SliceFlights(tmp_path)
        try:
            return await flights.sweep()
        finally:
            await flights.close()

    assert asyncio.run(sweep()) == 2
    assert fresh.exists() and not old.exists()
    assert not other.parent.exists()  # an emptied file's folder goes too
