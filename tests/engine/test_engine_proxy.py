"""Proxies from the environment: HTTP_PROXY is used, NO_PROXY bypasses it.

The transport reads them once per host (not in a thread for every request); these show it
still reads them as aiohttp's trust_env did. The origin serves as the proxy: it answers an
absolute-form request for a host that does not exist by the path alone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from helpers import blob, sha
from modelhaul.engine.downloader import Downloader
from origin import Origin


def test_http_proxy_from_the_environment_is_used(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    data = blob(100_000, seed=3)
    origin.add_file("p.bin", data)
    monkeypatch.setenv("HTTP_PROXY", origin.base_url)
    monkeypatch.setenv("NO_PROXY", "localhost")

    async def go() -> None:
        async with Downloader(state_dir=tmp_path / "state") as dl:
            # .invalid never resolves: only the proxy can answer.
            await dl.download(
                "http://modelhaul.invalid/p.bin", tmp_path / "p.bin", sha256=sha(data)
            )

    asyncio.run(asyncio.wait_for(go(), 30))
    assert (tmp_path / "p.bin").read_bytes() == data
    assert [r.host for r in origin.requests] == ["modelhaul.invalid"]


def test_no_proxy_bypasses_the_proxy(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    data = blob(100_000, seed=4)
    origin.add_file("d.bin", data)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    async def go() -> None:
        async with Downloader(state_dir=tmp_path / "state") as dl:
            for i in range(3):  # the second and third use what the first looked up
                await dl.download(origin.url("d.bin"), tmp_path / f"d{i}.bin", sha256=sha(data))

    asyncio.run(asyncio.wait_for(go(), 30))
    assert (tmp_path / "d2.bin").read_bytes() == data
