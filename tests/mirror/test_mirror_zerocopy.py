"""The mirror sends files with sendfile: stored blobs and partial files alike, whole or by Range,
byte-exact; and where the server does not offer zero-copy, the same bytes go through Python.

``zero_copy_bytes`` counts what this process sent by sendfile; the services here run in this
process (``ServerThread``), so the count shows which path a response took.
"""

from __future__ import annotations

import hashlib
import logging
import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fakehub import FakeHub
from modelhaul.server import runner
from modelhaul.server.uvicorn_internals import zero_copy_bytes
from server_harness import ServerThread, service_config, wait_until

MiB = 1024 * 1024
URL = "/hf/org/zc/resolve/main/model.safetensors"


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def mirror(hub: FakeHub, tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(service_config(tmp_path, hf_endpoint=hub.endpoint)) as server:
        yield server


def get(server: ServerThread, span: tuple[int, int] | None = None) -> httpx.Response:
    headers = {"Range": f"bytes={span[0]}-{span[1] - 1}"} if span is not None else {}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        return c.get(URL, headers=headers)


def test_a_stored_file_goes_out_by_sendfile_whole_and_by_range(
    hub: FakeHub, mirror: ServerThread
) -> None:
    data = payload(1, 40 * MiB + 123)  # more than one span (32 MiB)
    hub.add_repo("org/zc", {"model.safetensors": data})
    assert get(mirror).content == data  # fetched, and now stored
    before = zero_copy_bytes()
    whole = get(mirror)
    span = (5 * MiB + 7, 38 * MiB + 11)  # crosses a span boundary
    part = get(mirror, span)
    assert whole.status_code == 200 and whole.content == data
    assert part.status_code == 206 and part.content == data[span[0] : span[1]]
    assert part.headers["Content-Range"] == f"bytes {span[0]}-{span[1] - 1}/{len(data)}"
    assert zero_copy_bytes() - before == len(data) + span[1] - span[0]


def test_a_partial_file_goes_out_by_sendfile_while_it_is_fetched(
    hub: FakeHub, mirror: ServerThread
) -> None:
    data = payload(2, 24 * MiB)
    hub.add_repo("org/zc", {"model.safetensors": data})
    hub.set_speed_limit(3 * MiB)  # per connection: the fetch takes seconds
    span = (3 * MiB + 1, 20 * MiB - 5)
    before = zero_copy_bytes()
    with httpx.Client(base_url=mirror.url, timeout=60) as c:
        with c.stream("GET", URL) as resp:
            chunks = resp.iter_raw()
            first = next(chunks)
            upstream_then = hub.cdn_bytes(hashlib.sha256(data).hexdigest())
            whole = first + b"".join(chunks)
        ranged = c.get(URL, headers={"Range": f"bytes={span[0]}-{span[1] - 1}"})
    assert upstream_then < len(data), "the first bytes came from the partial file"
    assert whole == data
    assert ranged.status_code == 206 and ranged.content == data[span[0] : span[1]]
    assert zero_copy_bytes() - before == len(data) + span[1] - span[0]


def test_a_client_that_goes_away_mid_file_ends_quietly(
    hub: FakeHub, mirror: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    data = payload(4, 40 * MiB)
    hub.add_repo("org/zc", {"model.safetensors": data})
    assert get(mirror).content == data  # stored
    uvicorn_log = logging.getLogger("uvicorn.error")  # uvicorn's loggers do not propagate
    uvicorn_log.addHandler(caplog.handler)
    try:
        host, port = mirror.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as s:
            s.sendall(f"GET {URL} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert s.recv(64 * 1024)  # the headers, maybe some body
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        state = mirror._server.server_state  # uvicorn's: its requests in progress
        wait_until(lambda: not state.tasks, 20, "the aborted response to end")
        assert get(mirror).content == data  # and the next one is whole
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    assert "cut short" not in caplog.text and "ASGI callable" not in caplog.text, caplog.text


def test_without_zero_copy_the_same_bytes_go_through_python(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # uvicorn's own h11 protocol, as on a server that does not offer the extension.
    monkeypatch.setattr(runner, "http_protocol", lambda: "h11")
    data = payload(3, 6 * MiB + 5)
    hub.add_repo("org/zc", {"model.safetensors": data})
    hub.set_speed_limit(4 * MiB)
    before = zero_copy_bytes()
    with ServerThread(service_config(tmp_path, hf_endpoint=hub.endpoint)) as server:
        started = time.monotonic()
        cold = get(server, (1000, 5 * MiB))  # from the partial file
        assert time.monotonic() - started < 60
        warm = get(server)
    assert cold.status_code == 206 and cold.content == data[1000 : 5 * MiB]
    assert warm.content == data
    assert zero_copy_bytes() == before
