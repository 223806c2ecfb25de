"""The rest of an HTTPS body, received and decrypted in a worker thread: TlsBody.

On the event loop every piece of a TLS body costs a wake-up, a receive into asyncio's buffer, a
copy into the TLS layer's memory BIO and one Python call per 16 KiB record to decrypt it, all on
the loop's thread: at a few hundred MB/s that thread is saturated and the download waits on it.
A TlsBody does the same work in a worker thread with blocking reads, as SocketBody does for plain
HTTP: the socket's bytes go into the connection's own memory BIO and OpenSSL decrypts them
straight into a lent stage buffer that is then written to the file (``SSLObject.read`` and
``recv`` release the GIL), so the loop only hears of whole receive jobs. Measured (1 GiB over
HTTPS, 32 connections): the loop thread's CPU went from 1.6-1.8 s to 0.55 s (0.35 s of it
start-up), the process's from 3.6 to 3.3 CPU-s, peak RSS from 118 to 98 MiB. It was slower,
though: each receive waited for a whole buffer (MSG_WAITALL), which cost a third of the
throughput (1 GiB over HTTPS, 32 connections: 5.3-5.6 s against the loop's 3.4-3.8). Taking
what has arrived, it is within 5-10 % of the loop (2.68 vs 2.55 s from nginx directly; 4.1 vs
3.8 s in case E, where its many small receives cost +0.4 CPU-s of system time), but not ahead,
so Response.take_over uses it only with ``response.TLS_IN_THREADS`` set (off by default).

The TLS state stays the connection's: ciphertext fed to the BIO and not decrypted remains there
for asyncio, so a body received exactly to its end leaves the connection ready for the next
request, as over plain TCP. While a receive runs the loop must not touch the TLS state: the
TCP transport's reading is paused for the body's lifetime, and a body not received to its end
aborts the connection instead of shutting TLS down (which would use the state from the loop).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

from ..disk.files import WriteFailed, pwritev_locked
from ..policy.segments import Segment
from .aiohttp_internals import TlsLayer
from .bodies import SocketBody
from .errors import map_error

# What one receive job decrypts into before writing it: a few dozen records per write. Written
# as soon as full, so memory follows the receives running at once, not the bytes asked for.
STAGE_BYTES = 256 * 1024
# Ciphertext taken per socket receive: several records per call.
RAW_BYTES = 128 * 1024
# The least one receive job may ask for. A job holds no memory of its own beyond a lent buffer,
# so asking for more only means fewer hand-offs to the loop (each costs it a wake-up and the
# bookkeeping of a write); the poll interval still bounds how long a job runs.
MIN_ASK_BYTES = 4 * 1024 * 1024


class _BufferPool:
    """Buffers of one size lent to receive jobs and returned when the job ends, so memory
    follows the receives running at once (never more than the receive pool's threads), and
    reused buffers are neither zeroed nor faulted in again for every body."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self._size)

    def give(self, buf: bytearray) -> None:
        with self._lock:
            self._free.append(buf)


_POOL = _BufferPool(STAGE_BYTES + RAW_BYTES)


class TlsBody(SocketBody):
    """A TLS body decrypted by blocking receives in a worker thread (see the module docstring).

    ``decrypt_to_file`` (http.receive's receive_into calls it) receives, decrypts and writes
    one stage-full at a time into a buffer lent for the call; there is no pipe (the bytes must
    be decrypted in this process) and no block of the body's own (``buffer_bytes`` is 0).
    ``finish`` and ``close`` come from the event loop.
    """

    def __init__(
        self,
        sock: socket.socket,
        layer: TlsLayer,
        remaining: int,
        block_bytes: int,
        poll_s: float,
        *,
        stall_s: float = 30.0,
        url: str = "",
    ) -> None:
        # No block of its own (block_bytes=0): a receive decrypts into a pooled buffer and
        # writes it (decrypt_to_file); block_bytes stays what one receive job may ask for.
        super().__init__(sock, remaining, 0, poll_s, stall_s=stall_s, url=url, use_pipe=False)
        self.block_bytes = max(block_bytes, MIN_ASK_BYTES)
        self._layer = layer
        self._ended = False
        # The TCP transport's reading is the body's to restore: asyncio would otherwise
        # receive (and decrypt) under the thread.
        self._raw_was_reading = layer.raw.is_reading()
        layer.raw.pause_reading()

    def recv_block(self, want: int) -> int:
        """Not for TLS: there is no block to receive into (decrypt_to_file is the receive)."""
        raise NotImplementedError("a TlsBody receives with decrypt_to_file")

    def decrypt_to_file(
        self, fd: int, lock: threading.Lock, seg: Segment, offset: int, want: int
    ) -> int:
        """In a worker thread: receive and decrypt up to ``want`` bytes of the body and write
        them to ``fd`` at ``offset``, never past ``seg.end`` (a steal may move it meanwhile);
        at most about one poll interval long. Returns the bytes written, 0 when nothing came,
        -1 at the end of the stream.

        Raises:
            WriteFailed: the file refused the bytes; ``written`` says how many reached it.
            TransferError: the receive failed (StallTimeout once nothing came for too long).
        """
        with self._receiving() as open_:
            if not open_ or self._ended:
                return -1
            buf = _POOL.take()
            try:
                done = self._decrypt_write(memoryview(buf), fd, lock, seg, offset, want)
            finally:
                _POOL.give(buf)
            if done:
                return done
            if self._ended:
                return -1
            self._check_stall()
            return 0

    def _decrypt_write(
        self, buf: memoryview, fd: int, lock: threading.Lock, seg: Segment, offset: int, want: int
    ) -> int:
        stage, raw = buf[:STAGE_BYTES], buf[STAGE_BYTES:]
        deadline = time.monotonic() + self._poll_s
        want = min(want, self.remaining)
        done = 0
        while done < want:
            try:
                n = self._decrypt_into(stage, min(STAGE_BYTES, want - done), raw, deadline)
            except ssl.SSLError as exc:
                raise map_error(exc, self._url) from exc
            if n == 0:
                break
            self._last_data = time.monotonic()
            self.remaining -= n
            at = offset + done
            keep = max(0, min(n, seg.end - at))
            if keep:
                try:
                    pwritev_locked(fd, lock, [stage[:keep]], at)
                except WriteFailed as exc:
                    raise WriteFailed(exc.cause, done + exc.written) from exc.cause
            done += keep
            if keep < n or time.monotonic() >= deadline:
                break
        return done

    def _decrypt_into(self, view: memoryview, want: int, raw: memoryview, deadline: float) -> int:
        """Decrypt into ``view[:want]`` what the BIO holds, receiving more ciphertext into
        ``raw`` as needed; returns early at ``deadline``, at the end of the stream, or when a
        receive times out."""
        read = self._layer.sslobj.read
        incoming = self._layer.incoming
        sock = self._sock
        got = 0
        while got < want:
            try:
                n = read(want - got, view[got:want])
            except ssl.SSLWantReadError:
                n = -1
            if n > 0:
                got += n
                continue
            if n == 0:  # close_notify: the peer ended the TLS session
                self._ended = True
                return got
            if got and time.monotonic() >= deadline:
                return got
            # The ciphertext still to come is at least the plaintext still wanted, less what the
            # BIO holds. Whatever has arrived is taken at once: waiting for a whole buffer
            # (MSG_WAITALL) made the same body take 1.5x as long, over loopback too.
            surely = self.remaining - got - incoming.pending
            try:
                k = sock.recv_into(raw, min(len(raw), surely) if surely > 0 else len(raw))
            except BlockingIOError:  # SO_RCVTIMEO passed with no byte
                return got
            except OSError as exc:
                raise map_error(exc, self._url) from exc
            if k == 0:
                self._ended = True
                return got
            incoming.write(raw[:k])
        return got

    def finish(self) -> bool:
        """As SocketBody.finish; the connection is intact only if the TLS layer has nothing to
        send (say, an answer to a key update the thread decrypted) and the stream did not end.
        An intact connection's TCP transport reads again as it did before; any other is
        aborted (see _let_go)."""
        with self._lock:
            busy = self._busy and not self._closing
        intact = super().finish() and not busy
        intact = intact and not self._ended and not self._layer.outgoing.pending
        self._let_go(intact)
        return intact

    def close(self) -> None:
        """As SocketBody.close, and the connection is aborted (see _let_go)."""
        super().close()
        self._let_go(False)

    def _let_go(self, intact: bool) -> None:
        """Give the connection back to the loop. Any but an intact one is aborted: a receive
        may still be using the TLS state in its thread, which a TLS shutdown on the loop must
        not touch, and the socket may still be in the blocking mode the thread set. The
        caller hands the transport back to aiohttp's protocol before the loop runs again, so
        aiohttp hears of the connection's end."""
        if not intact:
            self._layer.transport.abort()
        elif self._raw_was_reading:
            self._raw_was_reading = False
            self._layer.raw.resume_reading()


__all__ = ["MIN_ASK_BYTES", "RAW_BYTES", "STAGE_BYTES", "TlsBody"]
