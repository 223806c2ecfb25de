"""HTTP over aiohttp: the only module that imports it, and where its errors become ours.

Redirects are followed by hand so that credentials (Authorization, Cookie, Proxy-Authorization)
only ever go to the host the user named: a presigned CDN URL needs none, and a malicious
redirect must not harvest them. Redirect loops, non-HTTP schemes and https->http downgrades are
refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as _errno
import fcntl
import netrc
import os
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Self
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp
from aiohttp.client_proto import ResponseHandler

from ..config import DownloadConfig
from ..errors import (
    HTTPStatusError,
    InvalidInput,
    ModelhaulError,
    NetworkError,
    RedirectRefused,
    StallTimeout,
    TruncatedBody,
)
from ..policy.backoff import parse_retry_after

SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def check_url(url: str) -> str:
    """Raise InvalidInput unless ``url`` is an absolute http(s) URL with a usable host and port.

    Checked before any request: a malformed host would otherwise go to DNS and be retried as a
    network failure, for seconds, although no attempt can ever succeed.
    """
    if any(ord(ch) < 32 or ch == "\x7f" for ch in url):
        # urlsplit silently drops tabs and newlines, so it cannot be left to see them.
        raise InvalidInput(f"bad URL {url!r}: it contains a control character", hint=_URL_HINT)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidInput(f"bad URL {url!r}: {exc}", hint=_URL_HINT) from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput(
            f"unsupported URL scheme in {url!r}",
            hint="Use an http:// or https:// URL (hf://ORG/NAME goes to 'modelhaul pull').",
        )
    if not parts.hostname:
        raise InvalidInput(f"bad URL {url!r}: no host", hint=_URL_HINT)
    # Percent-decoded first, as a client would before resolving: h%20x is "h x" too. An IPv6
    # literal ([...]) urlsplit has checked already.
    bad = next((ch for ch in unquote(parts.hostname) if not _host_char(ch)), None)
    if bad is not None and "[" not in parts.netloc:
        raise InvalidInput(
            f"bad URL {url!r}: the host {parts.hostname!r} contains {_describe(bad)}",
            hint=_URL_HINT,
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"bad URL {url!r}: {exc}", hint=_URL_HINT) from exc
    if port == 0:
        raise InvalidInput(f"bad URL {url!r}: port 0 is not a port to connect to", hint=_URL_HINT)
    return url


_URL_HINT = (
    "Check the URL for a typo: the host is a name or address without spaces, and a port is a "
    "number from 1 to 65535."
)
# RFC 3986 reg-name once decoded: unreserved and sub-delims; no other ASCII belongs there.
_HOST_ASCII = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;="
)


def _host_char(ch: str) -> bool:
    """Whether ``ch`` may appear in a host name (non-ASCII letters: internationalised names)."""
    if ch.isascii():
        return ch in _HOST_ASCII
    return ch.isprintable() and not ch.isspace()


def _describe(ch: str) -> str:
    return "a space" if ch.isspace() else f"the character {ch!r}"


def origin_of(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def same_host(a: str, b: str) -> bool:
    """Credentials may go to b if it is the same scheme, host and port as a."""
    return origin_of(a) == origin_of(b)


def strip_sensitive(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in SENSITIVE_HEADERS}


class BodyPump(asyncio.BufferedProtocol):
    """Receives the rest of a response body straight into a few reusable buffers.

    aiohttp allocates a fresh bytes object for every recv() and its parser copies the body into
    another; for a multi-GiB body that is two extra copies and thousands of large allocations
    on the event-loop thread. Once the headers are parsed, the connection's transport is handed
    to this protocol, which lets the kernel copy into our own buffers (recv_into, or the TLS
    layer's decrypt-into) and hands out full blocks. A block is only reused after the caller
    gives it back, so a write still running in a thread never sees its buffer overwritten.
    The connection is closed afterwards: aiohttp's parser never saw the body, so it cannot
    go back to the pool.
    """

    def __init__(self, remaining: int, *, block_bytes: int, blocks: int, stall_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._free = [bytearray(block_bytes) for _ in range(max(2, blocks))]
        self._cur: bytearray | None = self._free.pop()
        self._fill = 0
        self._ready: deque[tuple[bytearray, int]] = deque()
        self._remaining = remaining
        self._stall_s = stall_s
        self._last_data = self._loop.time()
        self._waiter: asyncio.Future[None] | None = None
        self._exc: BaseException | None = None
        self._eof = False
        self._paused = False
        self._transport: asyncio.Transport | None = None

    # -- protocol side (called by the event loop) -----------------------------------------

    def attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        cur = self._cur
        assert cur is not None  # reading is paused while no buffer is free
        end = min(len(cur), self._fill + self._remaining)
        return memoryview(cur)[self._fill : end]

    def buffer_updated(self, nbytes: int) -> None:
        self._fill += nbytes
        self._remaining -= nbytes
        self._last_data = self._loop.time()
        assert self._cur is not None
        if self._fill >= len(self._cur) or self._remaining <= 0:
            self._push()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._exc is None:
            self._exc = exc
        self._eof = True
        self._wake()

    # -- consumer side ----------------------------------------------------------------------

    def _push(self) -> None:
        assert self._cur is not None
        self._ready.append((self._cur, self._fill))
        self._cur = self._free.pop() if self._free else None
        self._fill = 0
        if self._cur is None or self._remaining <= 0:
            self._pause()
        self._wake()

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def next_block(self, flush_s: float, url: str) -> tuple[bytearray, int] | None:
        """The next filled block as (buffer, length); None once the body ended.

        A partly filled block is handed out after ``flush_s`` so a slow connection still makes
        steady progress. Raises StallTimeout when nothing arrived for the stall timeout.
        """
        loop = self._loop
        flush_at = loop.time() + flush_s
        while True:
            if self._ready:
                return self._ready.popleft()
            if self._exc is not None:
                raise map_error(self._exc, url)
            now = loop.time()
            if self._fill and (self._eof or self._remaining <= 0 or now >= flush_at):
                self._push()
                continue
            if self._eof or self._remaining <= 0:
                return None
            idle = now - self._last_data
            if idle >= self._stall_s:
                raise StallTimeout(f"no data from {_host(url)} within the timeout")
            wait = self._stall_s - idle
            if self._fill:
                wait = min(wait, flush_at - now)
            fut = loop.create_future()
            self._waiter = fut
            timer = loop.call_later(max(wait, 0.001), self._wake)
            try:
                await fut
            finally:
                timer.cancel()
                self._waiter = None

    def recycle(self, buf: bytearray) -> None:
        """A block handed out by next_block is free again (its write has completed)."""
        if self._cur is None:
            self._cur, self._fill = buf, 0
        else:
            self._free.append(buf)
        if self._paused and self._remaining > 0 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def drain(self) -> list[tuple[bytearray, int]]:
        """Everything received and not yet handed out (when giving up on the body)."""
        if self._fill and self._cur is not None:
            self._ready.append((self._cur, self._fill))
            self._cur, self._fill = None, 0
        out = list(self._ready)
        self._ready.clear()
        return out


class SocketBody:
    """The rest of a plain-HTTP body, received by blocking reads in a worker thread.

    On the event loop every arrival of data costs a wake-up, a ``recv`` and a few Python
    callbacks; on a fast link that is most of the loop's CPU. A blocking receive returns only
    once a whole block has arrived, so a MiB costs a system call or two and one hand-off.
    SO_RCVTIMEO bounds every call, so a slow or stalled connection still reports what it has at
    least every ``poll_s``. Only plain TCP qualifies: a TLS connection's bytes must pass through
    the event loop's SSL object (BodyPump takes those).

    Where the system has ``splice`` (Linux), the bytes go from the socket into a pipe and from
    the pipe into the file (``pipe_fd``) without entering this process: one copy on their way
    to the page cache instead of two, about 0.2 CPU-s per GiB less, and no block buffer.
    Elsewhere ``recv_block`` receives into ``view``.

    ``recv_block``/``splice_block`` run in a worker thread, one call at a time; ``abort`` and
    ``close`` come from the event loop.
    """

    def __init__(
        self,
        sock: socket.socket,
        remaining: int,
        block_bytes: int,
        poll_s: float,
        *,
        stall_s: float = 30.0,
        url: str = "",
        use_pipe: bool = True,
    ) -> None:
        self._sock = sock
        self._stall_s = stall_s
        self._poll_s = poll_s
        self._url = url
        self._last_data = time.monotonic()
        self.block_bytes = block_bytes
        self.remaining = remaining
        opened = _open_pipe(_PIPE_BYTES) if use_pipe else None
        self._pipe = opened[:2] if opened is not None else None
        # The read end, where a receive left its bytes; None when they are in ``view``.
        self.pipe_fd = opened[0] if opened is not None else None
        self.pipe_bytes = opened[2] if opened is not None else 0
        # Set by a writer whose file refuses splice: it copies the pipe out from then on.
        self.copy_out = False
        self._block = bytearray(block_bytes if self._pipe is None else 0)
        self.view = memoryview(self._block)
        self._lock = threading.Lock()
        self._busy = False
        self._closing = False
        sock.setblocking(True)
        sec = int(poll_s)
        sock.setsockopt(
            socket.SOL_SOCKET,
            socket.SO_RCVTIMEO,
            struct.pack("ll", sec, max(1, int((poll_s - sec) * 1e6))),
        )

    @property
    def buffer_bytes(self) -> int:
        """Memory this body holds for its receives (none in pipe mode)."""
        return len(self._block)

    def recv_block(self, want: int) -> int:
        """Receive up to ``want`` bytes into ``view``: the count, 0 when ``poll_s`` passed with
        nothing, -1 at the end of the stream. Raises StallTimeout when nothing came for the
        stall timeout, and NetworkError when the connection fails."""
        with self._receiving() as open_:
            if not open_:
                return -1
            want = min(want, len(self._block), self.remaining)
            try:
                n = self._sock.recv_into(self.view, want, socket.MSG_WAITALL)
            except BlockingIOError:  # SO_RCVTIMEO passed with no byte
                self._check_stall()
                return 0
            except OSError as exc:
                raise map_error(exc, self._url) from exc
            if n == 0:
                return -1
            self._last_data = time.monotonic()
            self.remaining -= n
            return n

    def splice_block(self, want: int, deadline: float | None = None) -> int:
        """Move up to ``want`` bytes (at most ``pipe_bytes``) from the socket into the pipe,
        which the caller has emptied; the count, 0 and -1 as for ``recv_block``. It returns
        early once the pipe is full (slots hold less than a page when the network delivered
        small pieces), at ``deadline`` (monotonic; default one poll interval from now), and
        when the stream ended (the next call says so)."""
        with self._receiving() as open_:
            if not open_:
                return -1
            assert self._pipe is not None
            want = min(want, self.pipe_bytes, self.remaining)
            src, dst = self._sock.fileno(), self._pipe[1]
            if deadline is None:
                deadline = time.monotonic() + self._poll_s
            got = 0
            # A splice returns what was queued as soon as it had some: several calls per block.
            # NONBLOCK concerns the pipe only: a full pipe answers EAGAIN at once instead of
            # waiting forever, while the socket still waits up to SO_RCVTIMEO.
            while got < want:
                try:
                    n = os.splice(src, dst, want - got, flags=_SPLICE_F_NONBLOCK)
                except BlockingIOError:  # a full pipe, or SO_RCVTIMEO passed with no byte
                    if got:
                        break
                    self._check_stall()
                    return 0
                except OSError as exc:
                    raise map_error(exc, self._url) from exc
                if n == 0:
                    if got:
                        break  # the end shows on the next call
                    return -1
                got += n
                if time.monotonic() >= deadline:
                    break
            self._last_data = time.monotonic()
            self.remaining -= got
            return got

    def discard(self, n: int) -> None:
        """Drop ``n`` bytes a receive left in the pipe (their range went to another connection)."""
        assert self._pipe is not None
        while n > 0:
            data = os.read(self._pipe[0], min(n, _PIPE_BYTES))
            if not data:
                return
            n -= len(data)

    @contextlib.contextmanager
    def _receiving(self) -> Iterator[bool]:
        with self._lock:
            if self._closing:
                yield False
                return
            self._busy = True
        try:
            yield True
        finally:
            with self._lock:
                self._busy = False
                if self._closing:
                    self._release()

    def _check_stall(self) -> None:
        if time.monotonic() - self._last_data >= self._stall_s:
            raise StallTimeout(f"no data from {_host(self._url)} within the timeout")

    def abort(self) -> None:
        """Wake a receive in progress: it returns what it has (or the end of the stream)."""
        with self._lock:
            if not self._closing:
                with contextlib.suppress(OSError):  # already closed by the peer
                    self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Release the descriptors; deferred to the receiving thread while a receive runs, so
        their numbers cannot be reused under a system call still using them."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            if not self._busy:
                self._release()

    def _release(self) -> None:
        self._sock.close()
        if self._pipe is not None:
            for fd in self._pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pipe = None


_SPLICE_F_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)
# Larger pipes need privileges on most systems (fs.pipe-max-size is 1 MiB by default).
_PIPE_BYTES = 1024 * 1024
_PIPE_MIN_BYTES = 256 * 1024  # below this, more splices than receives: not worth it


def _open_pipe(size: int) -> tuple[int, int, int] | None:
    """(read end, write end, capacity) of a pipe of about ``size`` bytes for splicing, or
    None where that is not to be had (no splice, or the user's pipe quota is spent)."""
    if not hasattr(os, "splice") or not hasattr(fcntl, "F_SETPIPE_SZ"):
        return None
    r, w = os.pipe()
    try:
        got = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)  # the capacity the kernel granted
        if got >= min(size, _PIPE_MIN_BYTES):
            return r, w, got
    except OSError:
        pass
    os.close(r)
    os.close(w)
    return None


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
        self._restore: tuple[asyncio.Transport, ResponseHandler] | None = None
        self._sock_body: SocketBody | None = None
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
        smooth. The attribute is asyncio's selector transport's; other loops lack it."""
        conn = self._resp.connection
        transport = conn.transport if conn is not None else None
        if transport is not None and hasattr(transport, "max_size"):
            transport.max_size = n

    def _takeover(self) -> tuple[asyncio.Transport, ResponseHandler, int] | None:
        """(transport, aiohttp's protocol, the body's length) if the rest of this body can be
        read past aiohttp: a plain length-delimited body, a transport that can switch
        protocols, and nothing held back unparsed."""
        resp = self._resp
        conn = resp.connection
        header = resp.headers.get("Content-Length", "")
        if (
            conn is None
            or not header.isdigit()
            or resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
            or "chunked" in resp.headers.get("Transfer-Encoding", "").lower()
        ):
            return None
        transport, proto = conn.transport, conn.protocol
        content = resp.content
        length = int(header)
        if (
            transport is None
            or proto is None
            or not hasattr(transport, "set_protocol")
            or getattr(proto, "_tail", b"")  # bytes aiohttp held back unparsed
            or content.exception() is not None
            or content.is_eof()
            or length <= content.total_bytes
        ):
            return None
        return transport, proto, length

    def _drain(self) -> bytes:
        """Every byte of the body aiohttp has received and nobody has read yet.

        Emptying its buffer lets aiohttp resume a paused parser on the spot, which feeds bytes
        it had held back into the buffer again; so read until nothing comes. The event loop
        cannot run meanwhile, so nothing new arrives from the socket and this ends.
        """
        content = self._resp.content
        parts: list[bytes] = []
        try:
            while chunk := content.read_nowait(-1):
                parts.append(chunk)
        except (aiohttp.ClientError, OSError) as exc:
            raise map_error(exc, self.url) from exc
        return b"".join(parts)

    def take_socket(
        self, *, block_bytes: int, poll_s: float, use_pipe: bool = True
    ) -> tuple[bytes, SocketBody] | None:
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
        except BaseException:
            sock.close()
            raise
        proto.pause_reading()  # stops aiohttp's parser and read timer too
        remaining = length - self._resp.content.total_bytes
        # The socket is the body's alone from here. aiohttp's protocol outlives a response on
        # a pooled connection: an earlier response still draining its buffer resumes reading
        # through it, and the event loop would then take bytes from under the body. A closed
        # transport cannot be resumed; the duplicate keeps the connection open.
        transport.close()
        body = SocketBody(
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

    def take_body(self, *, block_bytes: int, blocks: int) -> tuple[bytes, BodyPump] | None:
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
        proto.pause_reading()
        remaining = length - self._resp.content.total_bytes
        pump = BodyPump(remaining, block_bytes=block_bytes, blocks=blocks, stall_s=self._stall_s)
        self._restore = (transport, proto)
        transport.set_protocol(pump)
        # As in take_socket: an earlier response on this connection may still pause or resume
        # reading through aiohttp's protocol. Without a transport it cannot; close() gives it
        # back.
        proto.transport = None
        pump.attach(transport)
        transport.resume_reading()
        return head, pump

    def close(self) -> None:
        """Drop the connection (the body was not read to the end)."""
        if self._sock_body is not None:
            self._sock_body.close()
            self._sock_body = None
        if self._restore is not None:
            # aiohttp's protocol must see the connection end, or its pool waits for it forever.
            transport, proto = self._restore
            self._restore = None
            proto.transport = transport
            transport.set_protocol(proto)
        self._resp.close()

    def release(self) -> None:
        """Return the connection to the pool (the body was read to the end)."""
        if self._restore is not None or self._sock_body is not None:
            self.close()  # a taken-over connection is mid-message for aiohttp's parser
            return
        self._resp.release()


def map_error(exc: BaseException, url: str) -> ModelhaulError:
    """The one place where aiohttp/OS errors become modelhaul errors.

    Messages say what happened in the user's words ("cannot connect to 127.0.0.1:9 (connection
    refused)"); aiohttp's own text ("Cannot connect to host ... ssl:default [...]") describes
    its internals and stays in the chained ``__cause__``. How the connection failed goes in
    ``NetworkError.kind``, so guidance need not read the message.
    """
    if isinstance(exc, ModelhaulError):
        return exc
    host = _host(url)
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return StallTimeout(f"no data from {host} within the timeout")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TruncatedBody(f"the connection to {host} ended early, before the whole response")
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return _tls_error(exc, url, host)
    if isinstance(exc, aiohttp.InvalidURL):
        return InvalidInput(f"bad URL {url!r}")
    if isinstance(exc, aiohttp.ClientHttpProxyError | aiohttp.ClientProxyConnectionError):
        return _proxy_error(exc, url, host)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return NetworkError(
            f"{host} closed the connection unexpectedly", hint=_RESUME, url=url, kind="closed"
        )
    if isinstance(exc, OSError):
        return _connection_error(exc, url, host)
    if isinstance(exc, aiohttp.ClientError):
        return NetworkError(f"the request to {host} failed ({type(exc).__name__})", url=url)
    return NetworkError(f"{type(exc).__name__}: {exc}", url=url)


_RESUME = "Run the same command again: it resumes from the data already received."
_CONNECT_HINTS = {
    "dns": "Check the host name and the network's DNS (or HTTPS_PROXY, where only a proxy "
    "reaches out), then run again.",
    "refused": "Check that the server is running and the host and port are right, then run again.",
    "unreachable": "Check the network connection (and HTTPS_PROXY, where only a proxy reaches "
    "out), then run again.",
    "reset": _RESUME,
}


def _tls_error(exc: BaseException, url: str, host: str) -> NetworkError:
    if isinstance(exc, ssl.SSLCertVerificationError):  # aiohttp's certificate error is one too
        return NetworkError(
            f"TLS verification failed for {host}: {_certificate_problem(exc)}",
            hint="If you are behind a proxy with its own CA, point SSL_CERT_FILE at its "
            "certificate bundle.",
            url=url,
            kind="tls",
        )
    if not isinstance(exc, aiohttp.ClientConnectorError):  # on an open connection
        return NetworkError(f"the TLS connection to {host} failed ({_ssl_reason(exc)})", url=url)
    return NetworkError(
        f"the TLS handshake with {host} failed ({_ssl_reason(exc)})",
        hint="Check the URL's scheme and port (https:// needs a port that speaks TLS) and "
        "that no proxy interferes.",
        url=url,
        kind="tls_handshake",
    )


def _proxy_error(
    exc: aiohttp.ClientHttpProxyError | aiohttp.ClientProxyConnectionError, url: str, host: str
) -> ModelhaulError:
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return NetworkError(
            f"cannot connect to the proxy {exc.host}:{exc.port} ({_os_reason(exc.os_error)})",
            hint="Check HTTPS_PROXY/HTTP_PROXY and that the proxy is up.",
            url=url,
            kind="proxy",
        )
    if exc.status == 407:
        return HTTPStatusError(407, url, message=f"the proxy wants credentials to reach {host}")
    return NetworkError(
        f"the proxy refused to connect to {host} (HTTP {exc.status})",
        hint="Check HTTPS_PROXY/HTTP_PROXY and the proxy's rules; hosts in NO_PROXY bypass it.",
        url=url,
        kind="proxy",
    )


def _connection_error(exc: OSError, url: str, host: str) -> NetworkError:
    """A connect that failed (aiohttp's ClientConnectorError wraps the OS error), or an OS
    error on an open connection."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        dns = isinstance(exc, aiohttp.ClientConnectorDNSError)
        kind = _os_kind(exc.os_error, dns=dns)
        reason = "host name not found" if kind == "dns" else _os_reason(exc.os_error)
        what = f"cannot connect to {host} ({reason})"
    else:
        kind = _os_kind(exc)
        what = (
            f"the connection to {host} was reset"
            if kind == "reset"
            else f"the connection to {host} failed ({_os_reason(exc)})"
        )
    return NetworkError(what, hint=_CONNECT_HINTS.get(kind or ""), url=url, kind=kind)


_KIND_OF_ERRNO = {
    _errno.ECONNREFUSED: "refused",
    _errno.ECONNRESET: "reset",
    _errno.EPIPE: "reset",
    _errno.ECONNABORTED: "reset",
    _errno.ENETUNREACH: "unreachable",
    _errno.EHOSTUNREACH: "unreachable",
    _errno.ETIMEDOUT: "unreachable",
}


def _os_kind(err: BaseException | None, *, dns: bool = False) -> str | None:
    """Which of NETWORK_KINDS an OS error is (None: none of them)."""
    if dns or isinstance(err, socket.gaierror):
        return "dns"
    return _KIND_OF_ERRNO.get(getattr(err, "errno", None) or 0)


def _os_reason(err: BaseException | None) -> str:
    """An OS error in a few plain words: "connection refused", not "Connect call failed
    ('127.0.0.1', 9)" (asyncio's wording of ECONNREFUSED)."""
    if isinstance(err, OSError) and not isinstance(err, socket.gaierror) and err.errno:
        return os.strerror(err.errno).lower()
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return "an unknown error"


def _certificate_problem(exc: BaseException) -> str:
    cert = getattr(exc, "certificate_error", exc)
    message = getattr(cert, "verify_message", None)
    return f"certificate not trusted ({message})" if message else "certificate not trusted"


def _ssl_reason(exc: BaseException) -> str:
    ssl_error = getattr(exc, "os_error", exc)
    reason = getattr(ssl_error, "reason", None)
    return reason.lower().replace("_", " ") if isinstance(reason, str) else "no details"


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


class Transport:
    """A pooled aiohttp session plus the redirect and error policy."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 30.0,
        stall_timeout_s: float = 30.0,
        verify_tls: bool = True,
        trust_env: bool = True,
        read_buffer_bytes: int = 4 * 1024 * 1024,
        limit: int = 0,
        limit_per_host: int = 0,
        max_redirects: int = 10,
        allow_https_downgrade: bool = False,
        user_agent: str = "modelhaul",
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._stall_timeout_s = stall_timeout_s
        self._verify_tls = verify_tls
        self._trust_env = trust_env
        self._read_buffer_bytes = read_buffer_bytes
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._max_redirects = max_redirects
        self._allow_downgrade = allow_https_downgrade
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._netrc_on = False
        self._netrc: netrc.netrc | bool | None = None  # None: not read yet; False: none

    @classmethod
    def for_config(cls, cfg: DownloadConfig, *, limit: int = 0, limit_per_host: int = 0) -> Self:
        """A transport with a download configuration's timeouts, TLS, proxy and redirect policy."""
        return cls(
            connect_timeout_s=cfg.timeouts.connect_s,
            stall_timeout_s=cfg.timeouts.stall_s,
            verify_tls=cfg.verify_tls,
            trust_env=cfg.trust_env,
            read_buffer_bytes=cfg.segments.read_buffer_bytes,
            limit=limit,
            limit_per_host=limit_per_host,
            max_redirects=cfg.max_redirects,
            allow_https_downgrade=cfg.allow_https_downgrade,
            user_agent=cfg.user_agent,
        )

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is not None:
            return
        # True: aiohttp's verified default context, built once at import from the system store
        # (SSL_CERT_FILE / SSL_CERT_DIR honoured); building our own costs ~30 ms per start.
        ssl_ctx: ssl.SSLContext | bool = self._verify_tls
        connector = aiohttp.TCPConnector(
            limit=self._limit,
            limit_per_host=self._limit_per_host,
            ssl=ssl_ctx,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=self._trust_env,
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self._connect_timeout_s,
                sock_read=self._stall_timeout_s,
            ),
            read_bufsize=self._read_buffer_bytes,
            auto_decompress=True,
            headers={"User-Agent": self._user_agent, "Accept-Encoding": "identity"},
        )
        # aiohttp silently resends an idempotent request once when the connection drops before
        # the response, so RetryPolicy(retries=3) became 8 requests, the extra ones without
        # backoff. The engine owns retries; this private switch is the only way to turn
        # aiohttp's off (its own test_utils does the same).
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False
        # With trust_env aiohttp reads ~/.netrc for every request (in an executor) and, when
        # the file has an entry for the host, refuses a request that carries its own
        # Authorization header (a token) with a ValueError. The transport reads the file once
        # and adds an entry only to a hop that has no Authorization of its own.
        if self._trust_env and hasattr(self._session, "_get_netrc_auth"):
            self._session._get_netrc_auth = _no_netrc  # type: ignore[method-assign]
            self._netrc_on = True

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        credential_url: str | None = None,
    ) -> Response:
        """Send a request, following redirects by hand; raise HTTPStatusError for >= 400.

        ``credential_url`` is the URL whose host may see sensitive headers (default: ``url``).
        """
        if self._session is None:
            await self.open()
        assert self._session is not None
        trusted = credential_url or url
        seen: set[str] = set()
        current = url
        for _hop in range(self._max_redirects + 1):
            send = dict(headers or {})
            if not same_host(trusted, current):
                send = strip_sensitive(send)
            if self._netrc_on and not any(k.lower() == "authorization" for k in send):
                login = await self._netrc_login(urlsplit(current).hostname or "")
                if login is not None:
                    send["Authorization"] = login
            try:
                resp = await self._session.request(
                    method, current, headers=send, allow_redirects=False
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise map_error(exc, current) from exc
            if resp.status in _REDIRECTS and "Location" in resp.headers:
                location = resp.headers["Location"]
                resp.release()
                seen.add(current)
                current = self._next_hop(current, location, seen)
                continue
            if resp.status >= 400:
                raise await _status_error(resp, current)
            return Response(resp, current, self._stall_timeout_s)
        raise RedirectRefused(f"more than {self._max_redirects} redirects from {url}")

    async def _netrc_login(self, host: str) -> str | None:
        """The Basic Authorization value ~/.netrc (or $NETRC) gives ``host``, if any."""
        if self._netrc is None:
            self._netrc = await asyncio.to_thread(_load_netrc)
        if self._netrc is False:
            return None
        entry = self._netrc.authenticators(host)
        if entry is None:
            return None
        login, account, password = entry
        return aiohttp.BasicAuth(login or account or "", password or "").encode()

    def _next_hop(self, current: str, location: str, seen: set[str]) -> str:
        target = urljoin(current, location)
        scheme = urlsplit(target).scheme.lower()
        if scheme not in ("http", "https"):
            raise RedirectRefused(f"refusing a redirect to a non-HTTP URL: {target[:200]}")
        downgrade = scheme == "http" and urlsplit(current).scheme.lower() == "https"
        if downgrade and not self._allow_downgrade:
            raise RedirectRefused(
                f"refusing an https -> http downgrade redirect to {_host(target)}",
                hint="Pass --allow-insecure-redirects if you trust this server.",
            )
        if target in seen:
            raise RedirectRefused(f"redirect loop at {target[:200]}")
        return target


def _no_netrc(host: str) -> None:
    return None


def _load_netrc() -> netrc.netrc | bool:
    """The user's netrc file, or False when there is none (or it does not parse), as curl
    --netrc-optional and requests treat it."""
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path)
    except (OSError, netrc.NetrcParseError):
        return False


async def _status_error(resp: aiohttp.ClientResponse, url: str) -> HTTPStatusError:
    headers = resp.headers
    message = headers.get("X-Error-Message")
    code = headers.get("X-Error-Code")
    retry_after = parse_retry_after(headers.get("Retry-After"))
    # The body of an error is small and not ours to keep; don't wait long for it.
    resp.close()
    text = f"HTTP {resp.status} from {_host(url)}"
    if message:
        text += f": {message[:300]}"
    return HTTPStatusError(
        resp.status, url, retry_after_s=retry_after, message=text, error_code=code
    )


async def sleep_s(seconds: float) -> None:
    """Backoff sleeps live here so tests can see every wait goes through one place."""
    await asyncio.sleep(seconds)
