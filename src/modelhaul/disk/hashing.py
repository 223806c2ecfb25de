"""SHA-256 of a file that is still being written, hashed as its complete prefix grows.

Segments finish out of order, so the hash cannot be fed from the sockets; instead a worker
thread reads back the completed prefix (from the page cache) while the transfer goes on, and
verification adds little wall time. hashlib releases the GIL on large updates, so this runs
truly in parallel with the event loop.

The prefix is read with ``preadv`` into a buffer, and both hashes read it from there. That beats
hashing straight from a memory map, although the map skips a copy: SHA-256 reading memory that
is not in the CPU cache is what costs. Measured on the 2-core VM, per GiB from the page cache:
16 MiB maps 0.93 CPU-s, 512 KiB reads 0.71 (0.78 with the xxh3 below, which costs 0.16 more
from a map). Reads of 512 KiB to 4 MiB cost the same alone (0.73-0.77 CPU-s per GiB with both
hashes), but each read and each hash call hands the GIL back and takes it again: among a
download's busy receive threads, this thread spent 0.8-0.9 s of 4 GiB on its pool thread not
running (waiting for the GIL or a CPU) with 512 KiB reads, 0.6-0.8 s with 4 MiB. This thread
is the one the end of a large download waits for, so every saving here comes off the tail.

The same pass digests each ``CHUNK_BYTES`` piece with xxh3-128 (``FileDigest``), so a store can
record per-chunk digests for repair without reading the file again. xxh3 is not cryptographic
and need not be: it only locates bad chunks, and a repaired file is SHA-256-verified again.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import xxhash

from .files import Buffer

# Repair granularity: a flipped byte costs one chunk of refetch. Small enough to save
# (1-4 MiB), large enough that the per-chunk bookkeeping is nothing (512 digests per GiB).
CHUNK_BYTES = 2 * 1024 * 1024
CHUNK_ALGO = "xxh3_128"

_BLOCK = 4 * 1024 * 1024
# One read of the prefix: few GIL turns per GiB (see above), two repair chunks.
READ_BYTES = 4 * 1024 * 1024
# Hashed between two looks at the target (a lock turn, and a wake-up for waiters).
_SPAN_BYTES = 16 * 1024 * 1024
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="modelhaul-hash")
# Each hash thread's read buffer, made once: a file's hash runs many times on its way (each
# time the prefix grows past where it stopped), and so do the next files'.
_BUFFERS = threading.local()


def _read_buffer() -> memoryview:
    view: memoryview | None = getattr(_BUFFERS, "view", None)
    if view is None:
        view = _BUFFERS.view = memoryview(bytearray(READ_BYTES))
    return view


class FileDigest:
    """SHA-256 of a stream fed in order, plus the xxh3-128 of each ``chunk_bytes`` piece.

    Each piece is fed to both hashes before the next one, so a piece read once (a memory map,
    a received buffer) is still in the CPU cache for the second hash. Both hashes release the
    GIL on large updates.
    """

    __slots__ = ("_chunk_bytes", "_chunks", "_in_part", "_part", "_sha")

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self._chunk_bytes = chunk_bytes
        self._sha = hashlib.sha256()
        self._part = xxhash.xxh3_128()
        self._in_part = 0
        self._chunks: list[str] = []

    @property
    def chunk_bytes(self) -> int:
        return self._chunk_bytes

    def update(self, data: Buffer) -> None:
        with memoryview(data) as whole, whole.cast("B") as view:
            n = len(view)
            pos = 0
            while pos < n:
                take = min(n - pos, self._chunk_bytes - self._in_part)
                with view[pos : pos + take] as piece:
                    self._sha.update(piece)
                    self._part.update(piece)
                self._in_part += take
                pos += take
                if self._in_part == self._chunk_bytes:
                    self._chunks.append(self._part.hexdigest())
                    self._part.reset()
                    self._in_part = 0

    def hexdigest(self) -> str:
        """The SHA-256 of everything fed so far."""
        return self._sha.hexdigest()

    def chunks(self) -> tuple[str, ...]:
        """The xxh3-128 of each piece fed so far, the last (short) one included."""
        tail = (self._part.hexdigest(),) if self._in_part else ()
        return (*self._chunks, *tail)


class PrefixHasher:
    """Hash ``[0, n)`` of an open file descriptor as ``advance(n)`` says it is complete.

    Besides the SHA-256 it keeps the xxh3-128 of each ``CHUNK_BYTES`` piece (``chunks``),
    from the same read of every byte, unless ``chunks`` is False.
    """

    def __init__(self, fd: int, *, chunks: bool = True) -> None:
        self._fd = fd
        self._hash: FileDigest | hashlib._Hash = FileDigest() if chunks else hashlib.sha256()
        self._pos = 0
        self._target = 0
        self._running = False  # submitted to the pool: queued or on a thread
        self._on_thread = False
        self._closed = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None], int]] = []
        self._idle_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def hashed_bytes(self) -> int:
        return self._pos

    @property
    def unhashed_bytes(self) -> int:
        """Announced final by ``advance`` but not hashed yet (read without the lock: a hint
        that may be a moment old)."""
        return self._target - self._pos

    @property
    def on_thread(self) -> bool:
        """Whether a pool thread is hashing for it now (False while it waits for one: the
        pool is shared by every file of the process)."""
        return self._on_thread

    def advance(self, end: int) -> None:
        """The bytes before ``end`` are final; hash them in the background. Never blocks."""
        with self._lock:
            if end <= self._target or self._closed:
                return
            self._target = end
            if self._running:
                return
            self._running = True
        _POOL.submit(self._run)

    def _run(self) -> None:
        self._on_thread = True
        try:
            self._hash_while_behind()
        finally:
            self._on_thread = False

    def _hash_while_behind(self) -> None:
        view = _read_buffer()
        while True:
            with self._lock:
                target = self._target
                if self._pos >= target or self._closed or self._error is not None:
                    self._running = False
                    self._wake_locked()
                    return
            try:
                got = self._hash_span(view, self._pos, min(target, self._pos + _SPAN_BYTES))
            except Exception as exc:  # handed to the awaiting task, never lost
                with self._lock:
                    self._error = exc
                    self._running = False
                    self._wake_locked()
                return
            with self._lock:
                self._pos += got
                self._wake_locked()

    def _hash_span(self, view: memoryview, start: int, end: int) -> int:
        """Read ``[start, end)`` through ``view`` and hash it; returns ``end - start``."""
        at = start
        while at < end:
            with view[: min(len(view), end - at)] as want:
                got = os.preadv(self._fd, [want], at)
                if got <= 0:
                    raise OSError("unexpected end of file while hashing")
                with want[:got] as data:
                    self._hash.update(data)
            at += got
        return end - start

    def _wake_locked(self) -> None:
        if not self._running:
            for loop, fut in self._idle_waiters:
                loop.call_soon_threadsafe(_resolve, fut)
            self._idle_waiters = []
        still = []
        for loop, fut, until in self._waiters:
            if self._error is not None or self._pos >= until or self._closed:
                loop.call_soon_threadsafe(_resolve, fut)
            else:
                still.append((loop, fut, until))
        self._waiters = still

    async def digest(self, size: int) -> str:
        """Wait until ``[0, size)`` is hashed and return the hex digest."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiters.append((loop, fut, size))
            self._wake_locked()
        self.advance(size)
        await fut
        if self._error is not None:
            raise self._error
        if self._pos != size:
            raise RuntimeError("hasher closed before the end")
        return self._hash.hexdigest()

    async def reached(self, n: int) -> None:
        """Wait until the first ``n`` bytes are hashed, or the hasher stopped."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._pos >= n or self._closed or self._error is not None:
                return
            self._waiters.append((loop, fut, n))
        await fut

    def chunks(self) -> tuple[int, tuple[str, ...]]:
        """The chunk size and the xxh3-128 of each chunk hashed so far (after ``digest``: all);
        ``(0, ())`` without chunk digests."""
        if not isinstance(self._hash, FileDigest):
            return 0, ()
        return self._hash.chunk_bytes, self._hash.chunks()

    async def aclose(self) -> None:
        """Stop hashing and wait until the worker thread no longer touches the descriptor.

        The caller closes the descriptor next; a read still in flight could otherwise hit a
        reused descriptor number.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._closed = True
            self._wake_locked()
            if not self._running:
                return
            self._idle_waiters.append((loop, fut))
        await asyncio.shield(fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def sha256_file(path: str | os.PathLike[str], *, block: int = _BLOCK) -> str:
    """Hash a whole file with one reusable buffer (flat memory)."""
    h = hashlib.sha256()
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


async def sha256_file_async(path: str | os.PathLike[str]) -> str:
    return await asyncio.get_running_loop().run_in_executor(_POOL, sha256_file, path)
