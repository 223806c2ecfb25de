"""The bulk receive paths: large bodies taken over from aiohttp.

Once a ranged response's headers are parsed and enough body is left, the engine reads the rest
past aiohttp: over plain HTTP a SocketBody receives whole blocks with blocking reads in worker
threads; over TLS a BodyPump (a buffered protocol) receives into a few reusable blocks on the
event loop. These tests pin down which path a body takes, and that every way a connection can
fail in the middle of such a body still ends with exactly the right file, on both paths.
"""

from __future__ import annotations

import asyncio
import errno
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import blob, sha
from helpers import download_config as config
from modelhaul.config import MiB
from modelhaul.engine.downloader import Downloader
from modelhaul.errors import NetworkError, NetworkKind
from modelhaul.http import bodies as transport
from modelhaul.http import response as response_module
from modelhaul.http import tlsbody
from modelhaul.http.response import Response
from origin import Fault, Origin


@pytest.fixture
def takeovers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kind of every takeover during the test: "pump" (BodyPump), "tls" (TlsBody) or
    "socket" (SocketBody), the latter followed by "socket-pipe" or "socket-buffer", how it
    receives."""
    made: list[str] = []

    class CountingPump(transport.BodyPump):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append("pump")

    class CountingSocket(transport.SocketBody):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append("socket")
            made.append("socket-pipe" if self.pipe_fd is not None else "socket-buffer")

    class CountingTls(tlsbody.TlsBody):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append("tls")

    monkeypatch.setattr(transport, "BodyPump", CountingPump)
    monkeypatch.setattr(transport, "SocketBody", CountingSocket)
    monkeypatch.setattr(tlsbody, "TlsBody", CountingTls)
    monkeypatch.setattr(response_module, "TLS_IN_THREADS", True)  # off by default
    return made


def pump_tls_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS bodies go to a BodyPump on the event loop, as when no thread may receive them."""
    monkeypatch.setattr(Response, "take_tls", lambda self, **kwargs: None)


async def test_large_plain_http_bodies_are_received_by_blocking_reads(
    origin: Origin, tmp_path: Path, state_dir: Path, takeovers: list[str]
) -> None:
    data = blob(40 * MiB, seed=1)
    origin.add_file("big.bin", data)
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        result = await asyncio.wait_for(
            dl.download(origin.url("big.bin"), tmp_path / "big.bin", sha256=sha(data)), 60
        )
    assert (tmp_path / "big.bin").read_bytes() == data
    assert result.sha256 == sha(data)
    # The probe's response and the later segments: each one taken over.
    assert takeovers.count("socket") >= 3
    assert "pump" not in takeovers
    assert origin.bytes_served("big.bin") <= len(data) + 4 * MiB


@pytest.mark.skipif(not hasattr(os, "splice"), reason="no splice on this system")
async def test_a_filesystem_that_refuses_splice_gets_the_bytes_copied(
    origin: Origin,
    tmp_path: Path,
    state_dir: Path,
    takeovers: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = blob(40 * MiB, seed=7)
    origin.add_file("big.bin", data)
    real_splice = os.splice
    refused: list[int] = []

    def splice(src: int, dst: int, count: int, *args: object, **kwargs: object) -> int:
        if kwargs.get("offset_dst") is not None:  # into the file, as some filesystems answer
            refused.append(count)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_splice(src, dst, count, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "splice", splice)
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        result = await asyncio.wait_for(
            dl.download(origin.url("big.bin"), tmp_path / "big.bin", sha256=sha(data)), 60
        )
    assert (tmp_path / "big.bin").read_bytes() == data
    assert result.sha256 == sha(data)
    assert refused  # the pipe was tried, and what it held was copied out
    # Later bodies of the file receive into buffers instead.
    assert takeovers[1] == "socket-pipe"
    assert takeovers[-1] == "socket-buffer"


async def test_small_bodies_and_capped_transfers_stay_with_aiohttp(
    origin: Origin, tmp_path: Path, state_dir: Path, takeovers: list[str]
) -> None:
    small = blob(3 * MiB, seed=2)
    origin.add_file("small.bin", small)
    capped = blob(12 * MiB, seed=3)
    origin.add_file("capped.bin", capped)
    async with Downloader(config(connections=2), state_dir=state_dir) as dl:
        await dl.download(origin.url("small.bin"), tmp_path / "small.bin")
        # Under a rate cap, reads stay small so the cap is smooth: no takeover.
        dl.set_rate_limit(200 * MiB)
        await asyncio.wait_for(dl.download(origin.url("capped.bin"), tmp_path / "capped.bin"), 60)
    assert (tmp_path / "small.bin").read_bytes() == small
    assert (tmp_path / "capped.bin").read_bytes() == capped
    assert takeovers == []


async def test_a_whole_body_under_2_mib_is_held_in_memory_not_taken_over(
    origin: Origin, tmp_path: Path, state_dir: Path, takeovers: list[str]
) -> None:
    # Smaller than a journaled file, it arrives whole in the first response, stays with
    # aiohttp and is hashed and written by its publishing job; no partial file is left.
    data = blob(2 * MiB - 1, seed=5)
    origin.add_file("one.bin", data)
    out = tmp_path / "out"
    async with Downloader(config(connections=1), state_dir=state_dir) as dl:
        result = await asyncio.wait_for(
            dl.download(origin.url("one.bin"), out / "one.bin", sha256=sha(data)), 60
        )
    assert takeovers == []
    assert (out / "one.bin").read_bytes() == data and result.sha256 == sha(data)
    assert [p.name for p in out.iterdir()] == ["one.bin"]
    assert origin.ranges_served("one.bin") == [(0, len(data))]


@pytest.mark.parametrize(
    "fault",
    [
        Fault(drop_after=5 * MiB + 123),
        Fault(truncate_after=5 * MiB + 7),
        Fault(truncate_after=0),
        Fault(stall_after=3 * MiB),
        Fault(extra_body=4096),
    ],
    ids=["reset", "truncated", "empty", "stalled", "overlong"],
)
@pytest.mark.parametrize("kind", ["socket-pipe", "socket-buffer", "pump", "tls"])
async def test_a_taken_over_segment_that_fails_midway_still_gives_the_right_file(
    origin: Origin,
    tls_origin: Origin,
    tmp_path: Path,
    state_dir: Path,
    takeovers: list[str],
    fault: Fault,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if kind == "socket-pipe" and not hasattr(os, "splice"):
        pytest.skip("no splice on this system")
    if kind == "socket-buffer":  # as where pipes are not to be had
        monkeypatch.setattr(transport, "_open_pipe", lambda size: None)
    if kind == "pump":
        pump_tls_bodies(monkeypatch)
    server = origin if kind.startswith("socket") else tls_origin
    data = blob(48 * MiB, seed=4)
    server.add_file("f.bin", data)
    # The probe goes through; the next segment request misbehaves.
    server.plan("f.bin", [Fault(), fault])
    cfg = config(stall_s=0.5, connections=2, verify_tls=False)
    async with Downloader(cfg, state_dir=state_dir) as dl:
        result = await asyncio.wait_for(dl.download(server.url("f.bin"), tmp_path / "f.bin"), 60)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert result.sha256 == sha(data)
    assert takeovers.count(kind) >= 2
    # Only the broken response's delivered bytes and work stealing's overlap come twice.
    assert server.bytes_served("f.bin") <= len(data) + 12 * MiB


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp_path = tmp_path_factory.mktemp("tls")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


@pytest.fixture
def tls_origin(tls_pair: tuple[Path, Path]) -> Iterator[Origin]:
    key, cert = tls_pair
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    with Origin(ssl_context=ctx) as origin:
        yield origin


@pytest.mark.parametrize("kind", ["tls", "pump"])
async def test_tls_bodies_are_decrypted_in_threads_or_the_buffered_protocol(
    tls_origin: Origin,
    tmp_path: Path,
    state_dir: Path,
    takeovers: list[str],
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if kind == "pump":
        pump_tls_bodies(monkeypatch)
    data = blob(24 * MiB, seed=5)
    tls_origin.add_file("tls.bin", data)
    assert tls_origin.url("tls.bin").startswith("https://")
    # A self-signed test certificate; verification itself is tested elsewhere.
    cfg = config(connections=3, verify_tls=False)
    async with Downloader(cfg, state_dir=state_dir) as dl:
        result = await asyncio.wait_for(
            dl.download(tls_origin.url("tls.bin"), tmp_path / "tls.bin"), 60
        )
    assert (tmp_path / "tls.bin").read_bytes() == data
    assert result.sha256 == sha(data)
    # Blocking reads of the bare socket would bypass the TLS layer: a TLS body never goes to a
    # plain SocketBody, only to a TlsBody (threads decrypting) or a BodyPump.
    assert takeovers.count(kind) >= 2
    assert "socket" not in takeovers


async def test_tls_verification_stays_on_by_default(
    tls_origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    tls_origin.add_file("tls.bin", blob(1024, seed=6))
    async with Downloader(config(), state_dir=state_dir) as dl:
        with pytest.raises(Exception, match="TLS verification failed") as failed:
            await asyncio.wait_for(dl.download(tls_origin.url("tls.bin"), tmp_path / "t"), 30)
    assert not (tmp_path / "t").exists()
    # Not a transient failure: reported at the first attempt, not after the retry budget.
    assert isinstance(failed.value, NetworkError), repr(failed.value)
    assert failed.value.kind is NetworkKind.TLS
    assert not failed.value.retryable
