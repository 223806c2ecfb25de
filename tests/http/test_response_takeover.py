"""Taking a body over from aiohttp on a pooled connection.

aiohttp hands a connection back to its pool as soon as a response's body is fully buffered,
while the code reading that response may still be emptying the buffer. Its protocol object
serves every response of the connection, and emptying that buffer resumes reading through it.
A later response on the same connection that the engine read past aiohttp (a SocketBody on a
duplicate of the socket) then had the event loop reading the same socket: bytes went to
aiohttp's parser instead, and the file got the following bytes at their offsets.
"""

from __future__ import annotations

import asyncio

import pytest

from helpers import blob
from modelhaul.config import MiB
from modelhaul.http.bodies import SocketBody
from modelhaul.http.response import Response
from modelhaul.http.session import Transport
from origin import Origin


async def wait_buffered(resp: Response) -> None:
    """Until aiohttp has received the whole body (and so given the connection back)."""
    content = resp._resp.content
    for _ in range(2000):  # 10 s
        if content.is_eof():
            return
        await asyncio.sleep(0.005)
    pytest.fail("aiohttp never buffered the whole body")


def receive_all(body: SocketBody) -> bytes:
    """The rest of the body, received as the engine's worker threads do."""
    out = bytearray()
    while body.remaining > 0:
        n = body.recv_block(MiB)
        if n < 0:
            break
        out += body.view[:n]
    return bytes(out)


async def test_an_earlier_response_draining_its_buffer_does_not_read_a_taken_over_socket(
    origin: Origin,
) -> None:
    first, second = blob(3 * MiB, seed=1), blob(24 * MiB, seed=2)
    origin.add_file("a.bin", first)
    origin.add_file("b.bin", second)
    async with Transport(limit_per_host=1, stall_timeout_s=5.0) as tr:
        a = await tr.request("GET", origin.url("a.bin"))
        assert a._resp.connection is not None
        shared = a._resp.connection.protocol
        got_a = [await a.read_chunk()]
        await wait_buffered(a)
        b = await tr.request("GET", origin.url("b.bin"))
        assert b._resp.connection is not None
        assert b._resp.connection.protocol is shared  # the test's premise: one connection
        taken = b.take_socket(block_bytes=MiB, poll_s=0.5, use_pipe=False)
        assert taken is not None
        head, body = taken
        # The first response's reader empties aiohttp's buffer only now.
        while chunk := await a.read_chunk():
            got_a.append(chunk)
        a.release()
        # The loop stays free to run (and, before the fix, to read) while a thread receives.
        try:
            rest = await asyncio.to_thread(receive_all, body)
        finally:
            b.close()
    assert b"".join(got_a) == first
    assert len(head) + len(rest) == len(second)
    assert head + rest == second
