"""Zero-copy receive of a plain-HTTP body: "receive this range of this response into this
file descriptor at this offset", behind one call (receive_into).

A SocketBody (http.transport) owns the socket; on Linux its bytes go socket -> pipe -> file with
splice, so they never enter the process; elsewhere, or where the file's filesystem refuses
splice, they are received into the body's buffer and written with pwritev. Runs in a worker
thread: it gets only a FileSink (descriptor, lock) and the segment whose end bounds it.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass

from ..disk.files import WriteFailed, pwritev_all, pwritev_locked
from ..policy.segments import Segment
from .bodies import SocketBody
from .tlsbody import TlsBody

# The longest one receive_into blocks; a SocketBody for it is taken with this poll_s.
POLL_S = 0.5
# The most one receive through a pipe asks for: no memory of ours, a few pipe-fulls.
_PIPE_ASK = 4 * 1024 * 1024
# What splice into a file raises where the filesystem cannot take it.
_NO_SPLICE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF})


@dataclass(slots=True, eq=False)
class FileSink:
    """Where received bytes go: a file descriptor, and the lock its writers queue on.

    ``splice_ok`` turns False once the file's filesystem refused a splice; the caller passes
    it on, so later bodies of the same file do without a pipe.
    """

    fd: int
    lock: threading.Lock
    splice_ok: bool = True


def most_per_receive(body: SocketBody) -> int:
    """The most one receive_into of ``body`` should ask for: its block, or a few pipe-fulls."""
    return body.block_bytes if body.pipe_fd is None else _PIPE_ASK


def receive_into(body: SocketBody, sink: FileSink, seg: Segment, offset: int, want: int) -> int:
    """In a worker thread: receive up to ``want`` bytes of ``body`` into ``sink`` at ``offset``.

    Never past ``seg.end``, which another connection may move while this runs (a steal). At
    most one poll interval long. Returns the bytes written (0: nothing yet, -1: end of stream).

    Raises:
        WriteFailed: the file refused the bytes; ``written`` says how many reached it.
        TransferError: the receive failed (StallTimeout once nothing came for too long).
    """
    if isinstance(body, TlsBody):
        return body.decrypt_to_file(sink.fd, sink.lock, seg, offset, want)
    if body.pipe_fd is not None:
        return _splice_write(body, sink, seg, offset, want)
    n = body.recv_block(want)
    if n <= 0:
        return n
    # A steal may have moved the segment's end while this thread was receiving.
    n = max(0, min(n, seg.end - offset))
    if n:
        pwritev_locked(sink.fd, sink.lock, [body.view[:n]], offset)
    return n


def _splice_write(body: SocketBody, sink: FileSink, seg: Segment, offset: int, want: int) -> int:
    """receive_into through the body's pipe, a pipe-full at a time, for at most one poll
    interval (as a receive into a buffer)."""
    deadline = time.monotonic() + POLL_S
    done = 0
    while done < want:
        n = body.splice_block(want - done, deadline)
        if n <= 0:
            return done or n
        at = offset + done
        keep = max(0, min(n, seg.end - at))  # as in receive_into: a steal may have come
        if keep:
            try:
                with sink.lock:
                    _pipe_to_file(body, sink, keep, at)
            except WriteFailed as exc:
                raise WriteFailed(exc.cause, done + exc.written) from exc.cause
        done += keep
        if keep < n:
            body.discard(n - keep)
            break
        if time.monotonic() >= deadline:
            break
    return done


def _pipe_to_file(body: SocketBody, sink: FileSink, n: int, offset: int) -> None:
    """Move ``n`` bytes from the body's pipe into the partial file at ``offset``, or raise
    WriteFailed with how many did reach it."""
    fd = body.pipe_fd
    assert fd is not None
    written = 0
    try:
        while written < n and not body.copy_out:
            try:
                m = os.splice(fd, sink.fd, n - written, offset_dst=offset + written)
            except OSError as exc:
                if exc.errno not in _NO_SPLICE or written:
                    raise
                # This filesystem refuses splice; later bodies of the file do without a pipe.
                body.copy_out = True
                sink.splice_ok = False
                break
            if m == 0:
                raise OSError(errno.EIO, "the receive pipe ran dry")
            written += m
        while written < n:
            data = os.read(fd, n - written)
            if not data:
                raise OSError(errno.EIO, "the receive pipe ran dry")
            written += pwritev_all(sink.fd, [data], offset + written)
    except WriteFailed as exc:
        raise WriteFailed(exc.cause, written + exc.written) from exc.cause
    except OSError as exc:
        raise WriteFailed(exc, written) from exc


__all__ = ["POLL_S", "FileSink", "most_per_receive", "receive_into"]
