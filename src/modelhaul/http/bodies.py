"""The rest of a response body, received past aiohttp: BodyPump, SocketBody and the splice pipe.

Once a ranged response's headers are parsed (``response.Response.take_body``, ``take_socket``
and ``take_tls``), the body's bytes no longer go through aiohttp's parser: over plain TCP a
SocketBody receives whole blocks with blocking reads in a worker thread, on Linux spliced
through a pipe so that they never enter the process; over TLS its subclass TlsBody
(``tlsbody.py``) does the same and decrypts in the thread. A BodyPump (a buffered protocol on
the event loop) receives into a few reusable blocks where the loop must see the bytes (an
in-order hash). These are the hot paths of a download.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator

from ..errors import StallTimeout
from ..policy.urls import host_of
from .errors import map_error


class BodyPump(asyncio.BufferedProtocol):
    """Receives the rest of a response body straight into a few reusable buffers.

    aiohttp allocates a fresh bytes object for every recv() and its parser copies the body into
    another; for a multi-GiB body that is two extra copies and thousands of large allocations
    on the event-loop thread. Once the headers are parsed, the connection's transport is handed
    to this protocol, which lets the kernel copy into our own buffers (recv_into, or the TLS
    layer's decrypt-into) and hands out full blocks. A block is only reused after the caller
    gives it back, so a write still running in a thread never sees its buffer overwritten.
    It never asks the transport for more than the body's remaining bytes, so a body received
    to its end leaves the connection at a message boundary, ready for aiohttp again (finish).
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
        self._exc: Exception | None = None
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
                raise StallTimeout(f"no data from {host_of(url)} within the timeout")
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

    def finish(self) -> bool:
        """Let go of the transport; whether the whole body arrived on a connection that is
        still open (reading stays paused: the body's last byte paused it)."""
        self._transport = None
        return self._remaining <= 0 and self._exc is None and not self._eof

    def close(self) -> None:
        """Let go of the transport (the connection is being dropped)."""
        self._transport = None

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

    The socket is a duplicate of the connection's, whose transport stays open but paused; the
    receives never ask for more than the body's remaining bytes, so once the body was received
    to its end ``finish`` restores the socket's flags (the duplicate shares them) and the
    connection can carry another request.

    ``recv_block``/``splice_block`` run in a worker thread, one call at a time; ``abort``,
    ``finish`` and ``close`` come from the event loop.
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
        self._aborted = False
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
            raise StallTimeout(f"no data from {host_of(self._url)} within the timeout")

    def abort(self) -> None:
        """Wake a receive in progress: it returns what it has (or the end of the stream)."""
        with self._lock:
            self._aborted = True
            if not self._closing:
                with contextlib.suppress(OSError):  # already closed by the peer
                    self._sock.shutdown(socket.SHUT_RDWR)

    def finish(self) -> bool:
        """Release the descriptors as close does; whether the body was received to its end
        with the connection intact, its socket back in the non-blocking mode the event loop
        expects (O_NONBLOCK and the receive timeout belong to the socket, not the duplicate)."""
        with self._lock:
            if self._closing:
                return False
            self._closing = True
            if self._busy:  # a receive still runs: release() follows it, the connection goes
                return False
            intact = self.remaining == 0 and not self._aborted
            if intact:
                try:
                    self._sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 0)
                    )
                    self._sock.setblocking(False)
                except OSError:
                    intact = False
            self._release()
            return intact

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


def socket_is_quiet(fd: int) -> bool:
    """Whether the kernel holds nothing to read on socket ``fd``: no byte and no end of stream
    (a peek that does not block). A connection that has either cannot carry another request."""
    try:
        peek = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        peek.close()
    return False  # a byte past the body, or the peer closed


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
