"""The canary: does the installed aiohttp still have every internal modelhaul relies on?

``http/aiohttp_internals.py`` lists them in INTERNALS. At run time a missing one only sends a
download down the slow, public path (correct, and slower: no one would notice). Here each one is
probed against the installed aiohttp, on a real connection where it matters, and a change fails
naming the internal. Run this file first against a new aiohttp release before moving the pin in
pyproject.toml (README, "Development").
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.client_proto import ResponseHandler

from helpers import blob
from modelhaul.config import MiB
from modelhaul.http import aiohttp_internals as internals
from modelhaul.http.receive import FileSink, receive_into
from modelhaul.http.session import Transport
from modelhaul.policy.segments import Segment
from origin import Origin

SRC = Path(internals.__file__).parent


def check(name: str, ok: object, what: str) -> None:
    """Fail loudly, naming the internal, unless ``ok``."""
    if not ok:
        pytest.fail(
            f"aiohttp {aiohttp.__version__} changed the internal {name!r}: {what}. modelhaul "
            "would silently take the slow path; adapt http/aiohttp_internals.py before moving "
            "the aiohttp pin.",
            pytrace=False,
        )


@contextlib.asynccontextmanager
async def open_response(
    origin: Origin, size: int = 8 * MiB, *, read_bufsize: int = 2**16
) -> AsyncIterator[tuple[aiohttp.ClientResponse, bytes]]:
    data = blob(size, seed=7)
    origin.add_file("canary.bin", data)
    async with (
        aiohttp.ClientSession(read_bufsize=read_bufsize) as session,
        session.get(origin.url("canary.bin")) as resp,
    ):
        yield resp, data


async def retry_connection(origin: Origin) -> None:
    name = "ClientSession._retry_connection"
    async with aiohttp.ClientSession() as session:
        check(name, getattr(session, "_retry_connection", None) is True, "no longer a flag")
        check(
            name,
            "self._retry_connection" in inspect.getsource(aiohttp.ClientSession._request),
            "ClientSession._request no longer consults it",
        )
        check(name, internals.disable_connection_retry(session), "the switch is gone")
        check(name, session._retry_connection is False, "it did not turn off")


async def netrc_auth(origin: Origin) -> None:
    name = "ClientSession._get_netrc_auth"
    hook = getattr(aiohttp.ClientSession, "_get_netrc_auth", None)
    check(name, callable(hook), "the method is gone")
    params = list(inspect.signature(hook).parameters)  # type: ignore[arg-type]
    check(name, params == ["self", "host"], f"its parameters are now {params}")
    check(
        name,
        "self._get_netrc_auth" in inspect.getsource(aiohttp.ClientSession._request),
        "ClientSession._request no longer calls it",
    )
    async with aiohttp.ClientSession(trust_env=True) as session:
        check(name, internals.disable_netrc_lookup(session), "the hook cannot be replaced")
        check(name, session._get_netrc_auth("example.org") is None, "the hook was not replaced")


async def connection_parts(origin: Origin) -> None:
    name = "Connection.transport/protocol"
    async with open_response(origin) as (resp, _):
        conn = resp.connection
        check(name, conn is not None, "an open response has no connection")
        assert conn is not None
        check(name, isinstance(conn.transport, asyncio.Transport), "no transport on it")
        check(name, isinstance(conn.protocol, ResponseHandler), "its protocol is no longer one")
        check(name, internals.connection_of(resp) is not None, "it cannot switch protocols")


async def max_size(origin: Origin) -> None:
    name = "asyncio transport max_size"
    async with open_response(origin) as (resp, _):
        found = internals.connection_of(resp)
        assert found is not None
        transport, _proto = found
        check(name, isinstance(getattr(transport, "max_size", None), int), "no max_size")
        check(name, internals.set_recv_size(resp, 12345), "the read size cannot be set")
        check(name, transport.max_size == 12345, "the read size did not stick")  # type: ignore[attr-defined]


async def tail(origin: Origin) -> None:
    name = "ResponseHandler._tail"
    proto = ResponseHandler(asyncio.get_running_loop())
    check(name, getattr(proto, "_tail", None) == b"", "a new protocol has no empty _tail")
    source = inspect.getsource(ResponseHandler.data_received)
    check(name, "self._tail" in source, "data_received no longer holds bytes back in it")
    check(name, not internals.holds_unparsed_bytes(proto), "an empty _tail reads as held bytes")
    proto._tail = b"HTTP/1.1 200 OK\r\n"
    check(name, internals.holds_unparsed_bytes(proto), "held bytes go unnoticed")


async def pause_reading(origin: Origin) -> None:
    name = "ResponseHandler.pause_reading"
    async with open_response(origin) as (resp, _):
        found = internals.connection_of(resp)
        assert found is not None
        transport, proto = found
        internals.stop_parser(proto)
        check(name, not transport.is_reading(), "the transport still reads")


async def protocol_swap(origin: Origin) -> None:
    name = "ResponseHandler.transport (protocol swap)"
    async with open_response(origin) as (resp, _):
        found = internals.connection_of(resp)
        assert found is not None
        transport, proto = found
        check(name, proto.transport is transport, "the protocol does not hold its transport")
        other = asyncio.BufferedProtocol()
        internals.swap_protocol(transport, proto, other)
        check(name, transport.get_protocol() is other, "the transport kept aiohttp's protocol")
        check(name, proto.transport is None, "aiohttp's protocol kept the transport")
        internals.restore_protocol(transport, proto)
        check(name, transport.get_protocol() is proto, "aiohttp's protocol did not come back")
        check(name, proto.transport is transport, "the transport did not come back")


async def read_nowait_drain(origin: Origin) -> None:
    name = "StreamReader.read_nowait drain"
    # A small read buffer makes aiohttp pause reading with its buffer full; the drain must hand
    # over every byte aiohttp counted (total_bytes), or the takeover's arithmetic breaks.
    async with open_response(origin, read_bufsize=2**14) as (resp, data):
        for _ in range(500):  # until aiohttp has paused its parser with bytes received
            if resp.content.total_bytes >= 2**16:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        head = internals.drain_buffered(resp.content)
        check(name, head, "nothing was buffered to drain")
        check(
            name,
            len(head) == resp.content.total_bytes,
            f"drained {len(head)} bytes of the {resp.content.total_bytes} received",
        )
        check(name, head == data[: len(head)], "the drained bytes are not the body's")
        check(name, resp.content.read_nowait(-1) == b"", "bytes were left in the buffer")


async def hand_back(origin: Origin) -> None:
    name = "ResponseHandler hand back after a takeover"
    check(
        name,
        "self._parser is None" in inspect.getsource(ResponseHandler.data_received),
        "a protocol without a parser no longer holds bytes back in _tail",
    )
    data, other = blob(6 * MiB, seed=11), blob(MiB, seed=12)
    origin.add_file("canary.bin", data)
    origin.add_file("other.bin", other)
    async with Transport(limit_per_host=1, stall_timeout_s=5.0) as tr:
        resp = await tr.request("GET", origin.url("canary.bin"))
        found = internals.connection_of(resp._resp)
        assert found is not None
        transport, proto = found
        taken = resp.take_body(block_bytes=MiB, blocks=2)
        check(name, taken is not None, "the body was not taken over")
        assert taken is not None
        head, pump = taken
        got = len(head)
        while (block := await pump.next_block(0.05, resp.url)) is not None:
            got += block[1]
            pump.recycle(block[0])
        check(name, got == len(data), f"the pump received {got} of {len(data)} bytes")
        resp.release()
        check(name, proto.transport is transport, "aiohttp's protocol lost its transport")
        check(name, transport.get_protocol() is proto, "the transport lost aiohttp's protocol")
        check(name, not proto.should_close, "the connection is marked to close")
        check(name, proto._read_timeout_handle is None, "a sock_read timer is left running")
        check(name, transport.is_reading(), "the connection does not read again")
        nxt = await tr.request("GET", origin.url("other.bin"))
        check(name, nxt._resp.connection is not None, "the next response has no connection")
        assert nxt._resp.connection is not None
        check(name, nxt._resp.connection.protocol is proto, "the connection was not reused")
        parts = []
        while chunk := await nxt.read_chunk():
            parts.append(chunk)
        nxt.release()
        check(name, b"".join(parts) == other, "the next response on it came out wrong")


async def tls_layer(origin: Origin) -> None:
    name = "asyncio SSLProtocol layer (_ssl_protocol, _sslobj, _incoming, _transport)"
    data = blob(8 * MiB, seed=13)
    with Origin(tls=True) as tls_origin:
        tls_origin.add_file("canary.bin", data)
        async with Transport(limit_per_host=1, stall_timeout_s=5.0, verify_tls=False) as tr:
            resp = await tr.request("GET", tls_origin.url("canary.bin"))
            found = internals.connection_of(resp._resp)
            assert found is not None
            transport, _proto = found
            layer = internals.tls_layer_of(transport)
            check(name, layer is not None, "the TLS layer of an HTTPS connection is not found")
            assert layer is not None
            check(name, layer.sslobj is transport.get_extra_info("ssl_object"), "not its TLS")
            check(name, layer.raw.get_extra_info("socket") is not None, "no TCP transport")
            check(name, layer.raw.is_reading(), "the TCP transport under it does not read")
            # The whole path: decrypted in a thread, and the connection goes back to the pool.
            taken = resp.take_tls(block_bytes=MiB, poll_s=0.5)
            check(name, taken is not None, "the body was not taken over")
            assert taken is not None
            head, body = taken
            fd = os.memfd_create("canary")
            try:
                seg = Segment(start=len(head), end=len(data), pos=len(head))
                sink = FileSink(fd, threading.Lock())
                while seg.pos < seg.end:
                    n = await asyncio.to_thread(
                        receive_into, body, sink, seg, seg.pos, seg.end - seg.pos
                    )
                    check(name, n >= 0, "the body ended early")
                    seg.pos += n
                got = head + os.pread(fd, len(data), len(head))
            finally:
                os.close(fd)
            check(name, got == data, "the decrypted body came out wrong")
            resp.release()
            check(name, layer.raw.is_reading(), "the TCP transport does not read again")
            nxt = await tr.request("GET", tls_origin.url("canary.bin"))
            check(name, nxt._resp.connection is not None, "the next response has no connection")
            assert nxt._resp.connection is not None
            check(name, nxt._resp.connection.transport is transport, "it was not reused")
            nxt.close()


CANARIES: dict[str, Callable[[Origin], Awaitable[None]]] = {
    "ClientSession._retry_connection": retry_connection,
    "ClientSession._get_netrc_auth": netrc_auth,
    "Connection.transport/protocol": connection_parts,
    "asyncio transport max_size": max_size,
    "ResponseHandler._tail": tail,
    "ResponseHandler.pause_reading": pause_reading,
    "ResponseHandler.transport (protocol swap)": protocol_swap,
    "StreamReader.read_nowait drain": read_nowait_drain,
    "ResponseHandler hand back after a takeover": hand_back,
    "asyncio SSLProtocol layer (_ssl_protocol, _sslobj, _incoming, _transport)": tls_layer,
}


def test_every_internal_has_a_canary() -> None:
    assert sorted(CANARIES) == sorted(internals.INTERNALS)


@pytest.mark.parametrize("name", sorted(CANARIES))
async def test_aiohttp_still_has(name: str, origin: Origin) -> None:
    await CANARIES[name](origin)


@pytest.mark.parametrize("use_socket", [True, False])
async def test_a_large_body_is_taken_over(origin: Origin, use_socket: bool) -> None:
    """End to end: with the internals in place, a large plain body is read past aiohttp."""
    data = blob(16 * MiB, seed=9)
    origin.add_file("big.bin", data)
    async with Transport(stall_timeout_s=5.0) as tr:
        resp = await tr.request("GET", origin.url("big.bin"))
        try:
            if use_socket:
                taken = resp.take_socket(block_bytes=MiB, poll_s=0.5, use_pipe=False)
            else:
                taken = resp.take_body(block_bytes=MiB, blocks=4)
            check(
                "take_socket" if use_socket else "take_body",
                taken is not None,
                "a plain 16 MiB body was not taken over",
            )
        finally:
            resp.close()


# The private names (and asyncio attributes) the internals module wraps.
_PRIVATE = re.compile(
    r"\._retry_connection|\._get_netrc_auth|\._tail\b|\.max_size\b|\.set_protocol\(|"
    r"\.read_nowait\(|\.protocol\b|aiohttp\.client_proto|\._parser\b|\.feed_eof\(|"
    r"\._ssl_protocol\b|\._sslobj\b|\._incoming\b|\._outgoing\b"
)


def test_only_the_internals_module_touches_aiohttp_internals() -> None:
    offenders = [
        f"{path.name}: {line.strip()}"
        for path in sorted(SRC.glob("*.py"))
        if path.name != "aiohttp_internals.py"
        for line in path.read_text().splitlines()
        if _PRIVATE.search(line)
    ]
    assert not offenders, offenders
