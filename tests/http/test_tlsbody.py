"""TlsBody: an HTTPS body decrypted in a worker thread, and the connection around it.

A receive in its thread uses the connection's TLS state; the loop must never shut TLS down under
it, and a connection it leaves unfinished must end for aiohttp too (or its pool waits forever).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator

import pytest

from helpers import blob
from modelhaul.config import MiB
from modelhaul.http.receive import FileSink, receive_into
from modelhaul.http.session import Transport
from modelhaul.policy.segments import Segment
from origin import Fault, Origin


@pytest.fixture
def tls_origin() -> Iterator[Origin]:
    with Origin(tls=True) as served:
        yield served


async def test_closing_mid_receive_aborts_and_the_next_request_gets_a_new_connection(
    tls_origin: Origin,
) -> None:
    data, other = blob(12 * MiB, seed=21), blob(2 * MiB, seed=22)
    tls_origin.add_file("a.bin", data)
    tls_origin.add_file("b.bin", other)
    tls_origin.plan("a.bin", [Fault(stall_after=5 * MiB, stall_s=20.0)])
    fd = os.memfd_create("tls-body")
    try:
        async with Transport(limit_per_host=1, stall_timeout_s=10.0, verify_tls=False) as tr:
            a = await tr.request("GET", tls_origin.url("a.bin"))
            taken = a.take_tls(block_bytes=8 * MiB, poll_s=0.5)
            assert taken is not None
            head, body = taken
            seg = Segment(start=len(head), end=len(data), pos=len(head))
            sink = FileSink(fd, threading.Lock())
            # Up to the stall, then a receive that waits in its thread for bytes that do not come.
            while seg.pos < 5 * MiB:
                n = await asyncio.to_thread(receive_into, body, sink, seg, seg.pos, MiB)
                assert n > 0
                seg.pos += n
            running = threading.Event()

            def stalled_receive() -> int:
                running.set()
                return receive_into(body, sink, seg, seg.pos, MiB)

            job = asyncio.ensure_future(asyncio.to_thread(stalled_receive))
            assert await asyncio.to_thread(running.wait, 5)
            started = time.monotonic()
            a.close()
            n = await asyncio.wait_for(job, 5)
            assert n <= 0  # nothing more came, or the closed body said so
            assert time.monotonic() - started < 3
            b = await tr.request("GET", tls_origin.url("b.bin"))
            parts = []
            while chunk := await b.read_chunk():
                parts.append(chunk)
            b.release()
        assert b"".join(parts) == other
        assert os.pread(fd, seg.pos - len(head), len(head)) == data[len(head) : seg.pos]
        assert tls_origin.connections_accepted == 2
    finally:
        os.close(fd)
