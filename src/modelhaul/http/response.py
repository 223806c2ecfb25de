"""An open response: its body read in pieces through aiohttp, or taken over past it.

``take_socket``, ``take_tls`` and ``take_body`` hand the rest of a plain length-delimited body to
a SocketBody, a TlsBody (``tlsbody.py``) or a BodyPump (``bodies.py``) once aiohttp has parsed
the headers. Neither reads past the body,
so one received exactly to its end leaves the connection at a message boundary: ``release`` then
gives it back to aiohttp's pool for the next request (no new TCP and TLS handshake per segment).
A body cut short, an error, a stall or a cancel closes it. The takeover's touches of aiohttp's
internals are the named functions of ``aiohttp_internals.py``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import aiohttp

from ..errors import ModelhaulError
from . import aiohttp_internals as internals
from . import bodies, tlsbody
from .errors import map_error
from .receive import POLL_S

# The body a takeover builds: a SocketBody, or its TLS kind.
_Body = TypeVar("_Body", bound=bodies.SocketBody)


# HTTPS bodies decrypted in worker threads (a TlsBody) take the loop's TLS work off it, but are
# no faster: case E (1 GiB over HTTPS, 20 MB/s per connection, 30 ms) 4.1 s against 3.8 s with
# the event loop's BodyPump (tlsbody.py tells why). Off; tests turn it on.
TLS_IN_THREADS = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkReceive:
    """How the rest of a large body may be received past aiohttp (Response.take_over).

    Attributes:
        thread_block_bytes: The block of blocking receives in worker threads (a SocketBody
            over plain HTTP; over TLS, with TLS_IN_THREADS, a TlsBody, for which it is the most one receive
            asks for); None where the bytes must pass through the event loop (say, an
            in-order hash reads them there).
        use_pipe: Splice through a pipe where the system allows (False once the file's
            filesystem refused a splice).
        pump_block_bytes: The size of a BodyPump's reusable buffers.
        pump_blocks: How many of them.
    """

    thread_block_bytes: int | None
    use_pipe: bool
    pump_block_bytes: int
    pump_blocks: int


class Response:
    """An open response whose body is read in whatever pieces the socket delivered."""

    __slots__ = (
        "_read",
        "_resp",
        "_stall_s",
        "_taken",
        "end",
        "headers",
        "status",
        "url",
    )

    def __init__(self, resp: aiohttp.ClientResponse, url: str, stall_s: float = 30.0) -> None:
        self._resp = resp
        # (transport, aiohttp's protocol, body) while the body is taken over past aiohttp.
        self._taken: _Taken | None = None
        self._stall_s = stall_s
        # readchunk hands over one buffered piece as it came off the socket; readany would
        # join everything buffered (a copy, and lumps of many MiB under a rate limit).
        self._read = resp.content.readchunk
        self.end = 2**62  # where the body ends in file offsets, when ranged
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers
        self.url = url

    async def read_chunk(self) -> bytes:
        """The next piece of the body (b'' at the end); errors are translated."""
        try:
            while True:
                data, end_of_http_chunk = await self._read()
                # (b"", True) marks a chunk boundary of a chunked body, not its end.
                if data or not end_of_http_chunk:
                    return data
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise map_error(exc, self.url) from exc

    def set_read_size(self, n: int) -> None:
        """The most one recv() on this connection takes. Wide reads (1 MiB) move a body in a
        quarter of asyncio's default callbacks; narrow ones keep a rate-capped transfer
        smooth."""
        internals.set_recv_size(self._resp, n)

    def _takeover(self) -> tuple[asyncio.Transport, internals.ResponseProtocol, int] | None:
        """(transport, aiohttp's protocol, the body's length) if the rest of this body can be
        read past aiohttp: a plain length-delimited body, a transport that can switch
        protocols, and nothing held back unparsed."""
        resp = self._resp
        header = resp.headers.get("Content-Length", "")
        if (
            resp.connection is None
            or not header.isdigit()
            or resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
            or "chunked" in resp.headers.get("Transfer-Encoding", "").lower()
        ):
            return None
        found = internals.connection_of(resp)
        if found is None:
            return None
        transport, proto = found
        content = resp.content
        length = int(header)
        if (
            internals.holds_unparsed_bytes(proto)
            or content.exception() is not None
            or content.is_eof()
            or length <= content.total_bytes
        ):
            return None
        return transport, proto, length

    def _drain(self) -> bytes:
        """Every byte of the body aiohttp has received and nobody has read yet."""
        try:
            return internals.drain_buffered(self._resp.content)
        except (aiohttp.ClientError, OSError) as exc:
            raise map_error(exc, self.url) from exc

    def take_over(
        self, how: BulkReceive
    ) -> tuple[bytes, bodies.SocketBody | bodies.BodyPump] | None:
        """Hand the rest of the body past aiohttp by the cheapest path this connection allows:
        (bytes aiohttp already buffered, body). Where ``how`` allows threads, blocking receives
        in worker threads: spliced into the file on Linux over plain TCP, decrypted there over
        TLS (a TlsBody); else a BodyPump's reusable buffers on the event loop. None: read with
        read_chunk as usual.

        Either way ``release`` gives the connection back to the pool when the body was received
        exactly to its end, and ``close`` drops it.
        """
        if how.thread_block_bytes is not None:
            by_thread = self.take_socket(
                block_bytes=how.thread_block_bytes, poll_s=POLL_S, use_pipe=how.use_pipe
            )
            if by_thread is None and TLS_IN_THREADS:
                by_thread = self.take_tls(block_bytes=how.thread_block_bytes, poll_s=POLL_S)
            if by_thread is not None:
                return by_thread
        return self.take_body(block_bytes=how.pump_block_bytes, blocks=how.pump_blocks)

    def _take_stream(
        self, make: Callable[[socket.socket, int, internals.TlsLayer | None], _Body], *, tls: bool
    ) -> tuple[bytes, _Body] | None:
        """Take the connection from aiohttp for the body ``make`` builds from (a duplicate of the
        socket, body bytes still to come, the TLS layer when ``tls``): (bytes aiohttp already
        buffered, body). None over the other kind of connection (TLS or plain), or where the
        connection cannot be taken over."""
        found = self._takeover()
        if found is None:
            return None
        transport, proto, length = found
        raw = transport.get_extra_info("socket")
        layer = internals.tls_layer_of(transport) if tls else None
        if (
            raw is None
            or (layer is None if tls else transport.get_extra_info("ssl_object") is not None)
            or raw.type != socket.SOCK_STREAM
        ):
            return None
        try:
            sock = socket.socket(fileno=os.dup(raw.fileno()))
        except OSError:
            return None
        try:
            head = self._drain()
        except ModelhaulError:  # what _drain raises; the duplicate must not leak
            sock.close()
            raise
        internals.stop_parser(proto)
        remaining = length - self._resp.content.total_bytes
        # The socket is the body's alone from here. aiohttp's protocol outlives a response on
        # a pooled connection: an earlier response still draining its buffer resumes reading
        # through it, and the event loop would then take bytes from under the body. Parked on a
        # protocol of its own, the transport (plain or TLS) stays paused and open for the hand
        # back.
        internals.swap_protocol(transport, proto, asyncio.Protocol())
        body = make(sock, remaining, layer)
        self._taken = (transport, proto, body)
        return head, body

    def take_socket(
        self, *, block_bytes: int, poll_s: float, use_pipe: bool = True
    ) -> tuple[bytes, bodies.SocketBody] | None:
        """Hand the rest of a plain-TCP body to a SocketBody: (bytes aiohttp already buffered,
        body). None over TLS or where the connection cannot be taken over."""

        def make(sock: socket.socket, remaining: int, _: object) -> bodies.SocketBody:
            return bodies.SocketBody(
                sock,
                remaining,
                block_bytes,
                poll_s,
                stall_s=self._stall_s,
                url=self.url,
                use_pipe=use_pipe,
            )

        return self._take_stream(make, tls=False)

    def take_tls(self, *, block_bytes: int, poll_s: float) -> tuple[bytes, tlsbody.TlsBody] | None:
        """Hand the rest of an HTTPS body to a TlsBody, decrypted in worker threads: (bytes
        aiohttp already buffered, body). None over plain TCP, or where the connection or its
        TLS layer cannot be taken over."""

        def make(
            sock: socket.socket, remaining: int, layer: internals.TlsLayer | None
        ) -> tlsbody.TlsBody:
            assert layer is not None  # _take_stream gives up without one
            return tlsbody.TlsBody(
                sock, layer, remaining, block_bytes, poll_s, stall_s=self._stall_s, url=self.url
            )

        return self._take_stream(make, tls=True)

    def take_body(self, *, block_bytes: int, blocks: int) -> tuple[bytes, bodies.BodyPump] | None:
        """Hand the rest of the body to a BodyPump: (bytes aiohttp already buffered, pump).

        None when this response cannot be taken over (no plain length-delimited body, an event
        loop or transport without buffered protocols, or aiohttp holding unparsed bytes); the
        caller then reads with read_chunk as usual.
        """
        found = self._takeover()
        if found is None:
            return None
        transport, proto, length = found
        head = self._drain()
        # aiohttp's own flow control and read timer stop here; the pump has its own.
        internals.stop_parser(proto)
        remaining = length - self._resp.content.total_bytes
        pump = bodies.BodyPump(
            remaining, block_bytes=block_bytes, blocks=blocks, stall_s=self._stall_s
        )
        self._taken = (transport, proto, pump)
        # As in _take_stream: an earlier response on this connection may still pause or resume
        # reading through aiohttp's protocol; the swap takes the transport from it, release()
        # and close() give it back.
        internals.swap_protocol(transport, proto, pump)
        pump.attach(transport)
        transport.resume_reading()
        return head, pump

    def close(self) -> None:
        """Drop the connection (the body was not read to the end)."""
        taken, self._taken = self._taken, None
        if taken is not None:
            transport, proto, body = taken
            body.close()
            internals.restore_protocol(transport, proto)
        self._resp.close()

    def release(self) -> None:
        """Return the connection to the pool: the body was read to the end.

        A taken-over connection goes back only when its body was received exactly to its end
        and nothing follows it (no byte, no end of stream, nothing decrypted or waiting in the
        TLS layer); otherwise it is closed.
        """
        taken, self._taken = self._taken, None
        if taken is None:
            self._resp.release()
            return
        transport, proto, body = taken
        if body.finish() and _nothing_unread(transport):
            internals.hand_back(transport, proto, self._resp.content)
            self._resp.release()
            return
        internals.restore_protocol(transport, proto)
        self._resp.close()


_Taken = tuple[asyncio.Transport, internals.ResponseProtocol, "bodies.BodyPump | bodies.SocketBody"]


def _nothing_unread(transport: asyncio.Transport) -> bool:
    """Whether the connection holds no byte past the body: in the TLS layer (decrypted, or
    received and not yet decrypted) or in the kernel."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is not None:
        if ssl_object.pending():
            return False
        read_buffer = getattr(transport, "get_read_buffer_size", None)
        if read_buffer is None or read_buffer():
            return False
    raw = transport.get_extra_info("socket")
    return raw is not None and bodies.socket_is_quiet(raw.fileno())
