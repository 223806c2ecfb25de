"""An open response: its body read in pieces through aiohttp, or taken over past it.

``take_socket`` and ``take_body`` hand the rest of a plain length-delimited body to a SocketBody
or a BodyPump (``bodies.py``) once aiohttp has parsed the headers; the connection is closed
afterwards, since aiohttp's parser never saw the body. The takeover's touches of aiohttp's
internals are the named functions of ``aiohttp_internals.py``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import aiohttp

from ..errors import ModelhaulError
from . import aiohttp_internals as internals
from . import bodies
from .errors import map_error


class Response:
    """An open response whose body is read in whatever pieces the socket delivered."""

    __slots__ = (
        "_read",
        "_resp",
        "_restore",
        "_sock_body",
        "_stall_s",
        "end",
        "headers",
        "status",
        "url",
    )

    def __init__(self, resp: aiohttp.ClientResponse, url: str, stall_s: float = 30.0) -> None:
        self._resp = resp
        self._restore: tuple[asyncio.Transport, internals.ResponseProtocol] | None = None
        self._sock_body: bodies.SocketBody | None = None
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

    def take_socket(
        self, *, block_bytes: int, poll_s: float, use_pipe: bool = True
    ) -> tuple[bytes, bodies.SocketBody] | None:
        """Hand the rest of a plain-TCP body to a SocketBody: (bytes aiohttp already buffered,
        body). None over TLS or where the connection cannot be taken over."""
        found = self._takeover()
        if found is None:
            return None
        transport, proto, length = found
        raw = transport.get_extra_info("socket")
        if (
            raw is None
            or transport.get_extra_info("ssl_object") is not None
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
        # through it, and the event loop would then take bytes from under the body. A closed
        # transport cannot be resumed; the duplicate keeps the connection open.
        transport.close()
        body = bodies.SocketBody(
            sock,
            remaining,
            block_bytes,
            poll_s,
            stall_s=self._stall_s,
            url=self.url,
            use_pipe=use_pipe,
        )
        self._sock_body = body
        return head, body

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
        self._restore = (transport, proto)
        # As in take_socket: an earlier response on this connection may still pause or resume
        # reading through aiohttp's protocol; the swap takes the transport from it, close()
        # gives it back.
        internals.swap_protocol(transport, proto, pump)
        pump.attach(transport)
        transport.resume_reading()
        return head, pump

    def close(self) -> None:
        """Drop the connection (the body was not read to the end)."""
        if self._sock_body is not None:
            self._sock_body.close()
            self._sock_body = None
        if self._restore is not None:
            transport, proto = self._restore
            self._restore = None
            internals.restore_protocol(transport, proto)
        self._resp.close()

    def release(self) -> None:
        """Return the connection to the pool (the body was read to the end)."""
        if self._restore is not None or self._sock_body is not None:
            self.close()  # a taken-over connection is mid-message for aiohttp's parser
            return
        self._resp.release()
