"""Model availability for apps: status, shared ensure, and the event sequence of a pull that
fails twice and then succeeds, against the fake Hub."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from fakehub import FakeHub
from modelhaul.config import DownloadConfig, RetryPolicy
from modelhaul.errors import ModelhaulError
from modelhaul.manager.downloads import DownloadManager
from modelhaul.sources.hf import HubSource
from modelhaul.store.availability import (
    AvailabilityEvent,
    ModelAvailability,
    ModelState,
    hub_resolver,
)
from modelhaul.store.statedb import StateDB

FAST = DownloadConfig(retry=RetryPolicy(retries=0, initial_delay_s=0.01, max_delay_s=0.05))


def _files() -> dict[str, bytes]:
    return {"config.json": b'{"x": 1}', "model.safetensors": os.urandom(300_000)}


async def _avail(
    hub: FakeHub, root: Path, tmp_path: Path, mgr: DownloadManager
) -> ModelAvailability:
    return ModelAvailability(
        root,
        mgr,
        resolver=hub_resolver(HubSource(endpoint=hub.endpoint)),
        db=StateDB(tmp_path / "state.sqlite"),
        retry=RetryPolicy(initial_delay_s=0.01, max_delay_s=0.05),
    )


async def test_status_missing_then_ready_and_ensure_is_shared(hub: FakeHub, tmp_path: Path) -> None:
    files = _files()
    hub.add_repo("org/app", files)
    root = tmp_path / "hub"
    async with DownloadManager(download_config=FAST, state_dir=tmp_path / "st") as mgr:
        avail = await _avail(hub, root, tmp_path, mgr)
        assert avail.status("org/app").state is ModelState.MISSING
        first, second = await asyncio.gather(avail.ensure("org/app"), avail.ensure("org/app"))
        assert first == second
        assert (first / "model.safetensors").read_bytes() == files["model.safetensors"]
        sha = hashlib.sha256(files["model.safetensors"]).hexdigest()
        # One shared pull: the CDN sent the big blob once.
        assert hub.cdn_bytes(sha) == len(files["model.safetensors"])
        status = avail.status("org/app")
        assert status.state is ModelState.READY
        assert status.path == str(first)
        # Ready models come back without the network.
        before = len(hub.requests)
        assert await avail.ensure("org/app") == first
        assert len(hub.requests) == before


async def test_pull_that_fails_twice_then_succeeds_emits_the_sequence(
    hub: FakeHub, tmp_path: Path
) -> None:
    files = _files()
    hub.add_repo("org/flaky", files)
    sha = hashlib.sha256(files["model.safetensors"]).hexdigest()
    hub.drop_after(sha, 0, times=2)  # two attempts die before a byte arrives
    root = tmp_path / "hub"
    seen: list[AvailabilityEvent] = []
    async with DownloadManager(download_config=FAST, state_dir=tmp_path / "st") as mgr:
        avail = await _avail(hub, root, tmp_path, mgr)
        avail.subscribe(seen.append)
        path = await asyncio.wait_for(avail.ensure("org/flaky", retries=2), 60)
    states = [e.state for e in seen if e.state is not ModelState.DOWNLOADING or e.attempt]
    failures = [e for e in seen if e.error is not None]
    assert len(failures) == 2
    assert all(e.state in (ModelState.MISSING, ModelState.PARTIAL) for e in failures)
    assert states[-1] is ModelState.READY
    assert [e.attempt for e in seen if e.attempt and e.state is ModelState.DOWNLOADING] == [1, 2, 3]
    # No event after ready, and ready carries the path an app loads from.
    assert seen[-1].state is ModelState.READY and seen[-1].path == str(path)


async def test_failure_without_retries_raises_categorised_error(
    hub: FakeHub, tmp_path: Path
) -> None:
    root = tmp_path / "hub"
    async with DownloadManager(download_config=FAST, state_dir=tmp_path / "st") as mgr:
        avail = await _avail(hub, root, tmp_path, mgr)
        with pytest.raises(ModelhaulError) as info:
            await avail.ensure("org/absent")
        assert info.value.category == "not_found"
        assert avail.status("org/absent").state is ModelState.MISSING


async def test_partial_and_corrupt_states(hub: FakeHub, tmp_path: Path) -> None:
    files = _files()
    hub.add_repo("org/m", files)
    root = tmp_path / "hub"
    async with DownloadManager(download_config=FAST, state_dir=tmp_path / "st") as mgr:
        avail = await _avail(hub, root, tmp_path, mgr)
        path = await avail.ensure("org/m")
        blob = (path / "model.safetensors").resolve()
        data = bytearray(blob.read_bytes())
        data[1000] ^= 0xFF
        blob.write_bytes(bytes(data))
        assert await avail.verify("org/m") is False
        assert avail.status("org/m").state is ModelState.CORRUPT
        blob.unlink()
        assert avail.status("org/m").state is ModelState.CORRUPT  # known-bad stays flagged
        await avail.ensure("org/m", update=True)
        assert avail.status("org/m").state is ModelState.READY
        (path / "config.json").resolve().unlink()
        assert avail.status("org/m").state is ModelState.PARTIAL
