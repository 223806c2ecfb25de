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
