"""Single flight and streaming: many stock clients of one cold model cost the upstream one copy;
a reader gets its first bytes while the upstream is still sending; wrong bytes never complete a
response (issue 16)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from huggingface_hub import hf_hub_download, snapshot_download

from fakehub import FakeHub
from server_harness import ServerThread, point_hub_at_mirror, service_config

MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


MODEL = {
    "config.json": b'{"model_type": "herd"}',
    "model-00001.safetensors": payload(1, 3 * MiB),
    "model-00002.safetensors": payload(2, 2 * MiB + 12345),
    "tokenizer.json": payload(3, 300 * 1024),
}


@pytest.fixture
def mirror(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[ServerThread]:
    """The service in front of the fake Hub; ``request.param``, if any: min_steal_bytes."""
    config = service_config(tmp_path, hf_endpoint=hub.endpoint)
    steal = getattr(request, "param", None)
    if steal is not None:
        segments = replace(config.download.segments, min_steal_bytes=steal)
        config = replace(config, download=replace(config.download, segments=segments))
    with ServerThread(config) as server:
        point_hub_at_mirror(server, tmp_path, monkeypatch)
        yield server


def upstream_bytes(hub: FakeHub, files: dict[str, bytes]) -> int:
    return sum(
        hub.bytes_sent(sha256(data)) for data in {sha256(d): d for d in files.values()}.values()
    )


def test_eight_cold_clients_cost_the_upstream_one_copy(
    hub: FakeHub, mirror: ServerThread, tmp_path: Path
) -> None:
    commit = hub.add_repo("org/herd", MODEL)
    hub.set_speed_limit(4 * MiB)  # slow enough that the clients overlap
    model_bytes = sum(len(d) for d in MODEL.values())

    def client(i: int) -> Path:
        cache = tmp_path / f"client-{i}"
        if i % 2:
            return Path(snapshot_download("org/herd", cache_dir=cache))
        for path in MODEL:
            hf_hub_download("org/herd", path, cache_dir=cache)
        return cache / "models--org--herd" / "snapshots" / commit

    with ThreadPoolExecutor(8) as pool:
        folders = list(pool.map(client, range(8), timeout=120))

    for folder in folders:
        for path, data in MODEL.items():
            assert (folder / path).read_bytes() == data, f"{folder}/{path}"
    sent = upstream_bytes(hub, MODEL)
    assert model_bytes <= sent <= 1.05 * model_bytes, f"upstream sent {sent} for {model_bytes}"
    hub.stop()  # offline now: every client's cache and the mirror's store stand alone
    for i in range(8):
        offline = snapshot_download(
            "org/herd", cache_dir=tmp_path / f"client-{i}", local_files_only=True
        )
        assert (Path(offline) / "model-00002.safetensors").read_bytes() == MODEL[
            "model-00002.safetensors"
        ]


@pytest.mark.parametrize(
    "mirror",
    # The bound is the mirror's single flight. The engine's work stealing is a separate trade
    # (a lagging connection's tail fetched again, up to half a segment): with sixteen clients
    # hashing in this process, connections lag and it fetched up to 9% twice. Off here.
    [2**40],
    indirect=True,
)
def test_a_herd_of_sixteen_mixed_clients_costs_one_copy(
    hub: FakeHub, mirror: ServerThread, tmp_path: Path
) -> None:
    """Stock clients, whole-file GETs and random Range readers at once, the upstream capped
    at 20 MiB/s per connection."""
    model = {**MODEL, "model-00003.safetensors": payload(4, 24 * MiB)}
    hub.add_repo("org/herd16", model)
    hub.set_speed_limit(20 * MiB)
    big = model["model-00003.safetensors"]
    rng = random.Random(16)

    def stock(i: int) -> None:
        folder = Path(snapshot_download("org/herd16", cache_dir=tmp_path / f"stock-{i}"))
        for path, data in model.items():
            assert (folder / path).read_bytes() == data, path

    def whole(i: int) -> None:
        with httpx.Client(base_url=mirror.url, timeout=60) as c:
            r = c.get("/hf/org/herd16/resolve/main/model-00003.safetensors")
        assert r.status_code == 200 and r.content == big

    def ranged(i: int) -> None:
        start = rng.randrange(len(big))
        end = min(len(big), start + rng.randrange(1, 4 * MiB))
        with httpx.Client(base_url=mirror.url, timeout=60) as c:
            r = c.get(
                "/hf/org/herd16/resolve/main/model-00003.safetensors",
                headers={"Range": f"bytes={start}-{end - 1}"},
            )
        assert r.status_code == 206 and r.content == big[start:end]

    with ThreadPoolExecutor(16) as pool:
        kinds = (stock, whole, ranged)
        jobs = [pool.submit(kinds[i % 3], i) for i in range(16)]
        for job in jobs:
            job.result(timeout=120)
    model_bytes = sum(len(d) for d in model.values())
    sent = upstream_bytes(hub, model)
    per_file = {p: hub.bytes_sent(sha256(d)) / len(d) for p, d in model.items()}
    assert model_bytes <= sent <= 1.05 * model_bytes, f"upstream sent {sent}: {per_file}"


def test_a_reader_gets_bytes_before_the_upstream_is_done(
    hub: FakeHub, mirror: ServerThread
) -> None:
    big = payload(7, 48 * MiB)
    hub.add_repo("org/big", {"model.safetensors": big})
    hub.set_speed_limit(2 * MiB)  # per connection: the whole file takes seconds
    started = time.monotonic()
    url = "/hf/org/big/resolve/main/model.safetensors"
    with httpx.Client(base_url=mirror.url, timeout=30) as c, c.stream("GET", url) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Length"] == str(len(big))
        chunks = resp.iter_raw()
        first = next(chunks)
        first_at = time.monotonic() - started
        upstream_then = hub.cdn_bytes(sha256(big))
        body = first + b"".join(chunks)
    assert upstream_then < len(big), "the first bytes came before the upstream was done"
    assert first_at < 10, f"first byte after {first_at:.1f} s"
    assert body == big
    assert hub.cdn_bytes(sha256(big)) <= 1.05 * len(big)


def test_concurrent_ranges_of_a_cold_file_share_one_fetch(
    hub: FakeHub, mirror: ServerThread
) -> None:
    big = payload(8, 16 * MiB)
    hub.add_repo("org/big", {"model.safetensors": big})
    hub.set_speed_limit(4 * MiB)
    rng = random.Random(5)
    spans = [
        (a, min(len(big), a + rng.randrange(1, 2 * MiB)))
        for a in (rng.randrange(len(big)) for _ in range(8))
    ]

    def read(span: tuple[int, int]) -> bytes:
        with httpx.Client(base_url=mirror.url, timeout=60) as c:
            r = c.get(
                "/hf/org/big/resolve/main/model.safetensors",
                headers={"Range": f"bytes={span[0]}-{span[1] - 1}"},
            )
            assert r.status_code == 206
            return r.content

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(read, spans, timeout=120))
    for (a, b), data in zip(spans, got, strict=True):
        assert data == big[a:b]
    assert hub.cdn_bytes(sha256(big)) <= 1.05 * len(big)


def test_a_lying_upstream_never_completes_a_response(hub: FakeHub, mirror: ServerThread) -> None:
    real = payload(9, 12 * MiB)
    hub.add_repo("org/liar", {"model.safetensors": real})
    lie = bytearray(real)
    lie[5 * MiB] ^= 0xFF
    hub.lie_about(sha256(real), bytes(lie))
    hub.set_speed_limit(8 * MiB)
    got = bytearray()
    url = "/hf/org/liar/resolve/main/model.safetensors"
    with httpx.Client(base_url=mirror.url, timeout=60) as c, c.stream("GET", url) as resp:
        assert resp.headers["Content-Length"] == str(len(real))
        with contextlib.suppress(httpx.HTTPError):  # the cut: the connection ends early
            for chunk in resp.iter_raw():
                got += chunk
    assert len(got) < len(real), "a response with wrong bytes must never complete"
    blob = Path(os.environ["HF_HUB_CACHE"]) / "models--org--liar" / "blobs" / sha256(real)
    assert not blob.exists()


def test_a_lying_upstream_never_gives_a_stock_client_wrong_bytes(
    hub: FakeHub, mirror: ServerThread, tmp_path: Path
) -> None:
    real = payload(10, 6 * MiB)
    hub.add_repo("org/liar", {"model.safetensors": real, "config.json": b"{}"})
    lie = bytearray(real)
    lie[4 * MiB] ^= 0xFF
    hub.lie_about(sha256(real), bytes(lie))
    cache = tmp_path / "client"
    with pytest.raises(Exception):  # noqa: B017 - whichever error the client's retries end in
        hf_hub_download("org/liar", "model.safetensors", cache_dir=cache)
    folder = cache / "models--org--liar"
    blobs = list((folder / "blobs").glob("*")) if folder.exists() else []
    assert all(b.read_bytes() == real for b in blobs if not b.name.endswith(".incomplete"))
    assert not any((folder / "snapshots").rglob("model.safetensors")), "no file was completed"
    assert hf_hub_download("org/liar", "config.json", cache_dir=cache), "the rest is served"


@pytest.fixture
def capped_mirror(hub: FakeHub, tmp_path: Path) -> Iterator[ServerThread]:
    """Four connections of 5 MiB/s each (the fake Hub caps each one): 20 MiB/s in all."""
    config = service_config(tmp_path, hf_endpoint=hub.endpoint)
    segments = replace(config.download.segments, connections=4)
    with ServerThread(replace(config, download=replace(config.download, segments=segments))) as s:
        yield s


def test_the_first_byte_of_a_cold_256_mib_file_within_3_s(
    hub: FakeHub, capped_mirror: ServerThread
) -> None:
    """Whatever the file's size: the whole file, its middle and its end, at once, with the
    upstream at 20 MiB/s (13 s for the file). The readers stop after their first bytes; the
    teardown ends the fetch."""
    mirror = capped_mirror
    big = b"".join(payload(100 + i, 16 * MiB) for i in range(16))  # randbytes stops at 2 Gbit
    hub.add_repo("org/huge", {"model.safetensors": big})
    hub.set_speed_limit(5 * MiB)
    size = len(big)
    url = "/hf/org/huge/resolve/main/model.safetensors"
    spans = [(0, size), (size // 2, size // 2 + MiB), (size - 4 * MiB, size - 3 * MiB)]

    def first_byte(span: tuple[int, int]) -> tuple[float, bytes]:
        start, end = span
        headers = {} if span == (0, size) else {"Range": f"bytes={start}-{end - 1}"}
        began = time.monotonic()
        with (
            httpx.Client(base_url=mirror.url, timeout=30) as c,
            c.stream("GET", url, headers=headers) as resp,
        ):
            assert resp.status_code == (200 if not headers else 206)
            first = next(resp.iter_raw())
            return time.monotonic() - began, first

    with ThreadPoolExecutor(len(spans)) as pool:
        got = list(pool.map(first_byte, spans, timeout=60))
    for (start, _end), (after_s, first) in zip(spans, got, strict=True):
        assert first == big[start : start + len(first)]
        assert after_s < 3, f"the first byte from {start} came after {after_s:.1f} s"
    assert hub.cdn_bytes(sha256(big)) < size // 2, "bytes were streamed, not stored first"
