"""A lower bound on what any downloader can spend on case A, for comparison in the same run.

    floor.py URL OUT CONNECTIONS [--sha256] [--fsync]

Fetches URL into OUT with CONNECTIONS threads and nothing else a real tool needs: no retries,
no journal, no progress. The threads take 32 MiB chunks in file order, one Range request each.
Where the system has splice (Linux), each thread moves its bytes socket -> pipe -> file, so they
never enter the process (one copy, as modelhaul does); elsewhere it reads whole 4 MiB blocks
with ``recv_into(MSG_WAITALL)`` and writes them with ``pwrite``. Writes to the file take one
lock (page-cache writes to one file queue on its inode lock anyway).

With ``--sha256`` a thread hashes the completed prefix as it grows, through 64 MiB memory maps
(the cheapest way to read it back), overlapping the transfer, and prints the digest.

With ``--fsync`` the file is also made durable, as modelhaul makes it: each completed chunk's
writeback is started at once (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, Linux), so the final
``fsync`` has little left to wait for.

Its wall time and CPU seconds per GiB are the floor of receive + page-cache write (+ an
overlapped verification) on this machine; modelhaul's numbers in the same table are measured
against it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import hashlib
import mmap
import os
import socket
import sys
import threading
from urllib.parse import urlsplit

BLOCK = 4 * 1024 * 1024
CHUNK = 32 * 1024 * 1024
PIPE = 1024 * 1024
WINDOW = 64 * 1024 * 1024  # one map per window: a whole-file map would count as RSS
SPLICE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
SYNC_FILE_RANGE_WRITE = 2


def _writeback_starter() -> object | None:
    """libc's sync_file_range where there is one (Linux), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


def _request(host: str, port: int, path: str, extra: str = "") -> tuple[socket.socket, bytes]:
    """Send a GET; return the socket and the body bytes that came with the headers."""
    sock = socket.create_connection((host, port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("floor: the server closed the connection")
        head += chunk
    headers, _, rest = head.partition(b"\r\n\r\n")
    status = headers.split(b" ", 2)[1]
    if status not in (b"200", b"206"):
        raise SystemExit(f"floor: HTTP {status.decode()}")
    return sock, rest


def _size(host: str, port: int, path: str) -> int:
    with socket.create_connection((host, port)) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = sock.recv(65536).decode("latin-1")
    for line in data.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return int(value)
    raise SystemExit("floor: no Content-Length")


class Fetcher:
    """The chunks of one file, handed out in order; ``prefix`` is where the completed prefix
    ends, announced through ``cond``."""

    def __init__(
        self, host: str, port: int, path: str, fd: int, size: int, writeback: object | None
    ) -> None:
        self.host, self.port, self.path, self.fd, self.size = host, port, path, fd, size
        self.writeback = writeback
        self.write_lock = threading.Lock()
        self.cond = threading.Condition()
        self.next = 0
        self.done: dict[int, int] = {}
        self.prefix = 0
        self.failed = False

    def run(self) -> None:
        pipe = os.pipe() if SPLICE else None
        if pipe is not None:
            fcntl.fcntl(pipe[1], fcntl.F_SETPIPE_SZ, PIPE)
        view = memoryview(bytearray(BLOCK)) if pipe is None else None
        try:
            while True:
                with self.cond:
                    a = self.next
                    if a >= self.size:
                        return
                    b = self.next = min(self.size, a + CHUNK)
                self._fetch(a, b, pipe, view)
                if self.writeback is not None:
                    self.writeback(self.fd, a, b - a, SYNC_FILE_RANGE_WRITE)  # type: ignore[operator]
                with self.cond:
                    self.done[a] = b
                    while self.prefix in self.done:
                        self.prefix = self.done.pop(self.prefix)
                    self.cond.notify_all()
        finally:
            if pipe is not None:
                os.close(pipe[0])
                os.close(pipe[1])

    def _fetch(self, a: int, b: int, pipe: tuple[int, int] | None, view: memoryview | None) -> None:
        sock, first = _request(self.host, self.port, self.path, f"Range: bytes={a}-{b - 1}\r\n")
        with sock:
            pos = a
            if first:
                with self.write_lock:
                    os.pwrite(self.fd, first, pos)
                pos += len(first)
            while pos < b:
                if pipe is not None:
                    n = os.splice(sock.fileno(), pipe[1], min(PIPE, b - pos))
                    if n <= 0:
                        raise OSError("short body")
                    with self.write_lock:
                        left = n
                        while left:
                            m = os.splice(pipe[0], self.fd, left, offset_dst=pos + n - left)
                            left -= m
                else:
                    assert view is not None
                    n = sock.recv_into(view, min(BLOCK, b - pos), socket.MSG_WAITALL)
                    if n <= 0:
                        raise OSError("short body")
                    with self.write_lock:
                        os.pwrite(self.fd, view[:n], pos)
                pos += n

    def hash(self) -> str:
        h = hashlib.sha256()
        at = 0
        while at < self.size:
            with self.cond:
                while self.prefix <= at and not self.failed:
                    self.cond.wait()
                if self.failed:
                    raise SystemExit("floor: the transfer failed")
                end = self.prefix
            while at < end:
                base = at - at % mmap.ALLOCATIONGRANULARITY
                n = min(WINDOW, end - base)
                with (
                    mmap.mmap(self.fd, n, offset=base, access=mmap.ACCESS_READ) as m,
                    memoryview(m) as v,
                ):
                    h.update(v[at - base :])
                at = base + n
        return h.hexdigest()


def main() -> int:
    url, out, conns = sys.argv[1], sys.argv[2], int(sys.argv[3])
    verify = "--sha256" in sys.argv[4:]
    durable = "--fsync" in sys.argv[4:]
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    size = _size(host, port, path)
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    fetcher = Fetcher(host, port, path, fd, size, _writeback_starter() if durable else None)
    errors: list[BaseException] = []
    digest: list[str] = []

    def guarded(fn: object) -> None:
        try:
            result = fn()  # type: ignore[operator]
            if isinstance(result, str):
                digest.append(result)
        except BaseException as exc:  # reported below; the file is then incomplete
            errors.append(exc)
            with fetcher.cond:  # a failed chunk never completes the prefix: stop the hash
                fetcher.failed = True
                fetcher.cond.notify_all()

    threads = [threading.Thread(target=guarded, args=(fetcher.run,)) for _ in range(conns)]
    if verify and size:
        threads.append(threading.Thread(target=guarded, args=(fetcher.hash,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if durable and not errors:
        os.fsync(fd)
    os.close(fd)
    if errors:
        print(f"floor: {errors[0]}", file=sys.stderr)
        return 1
    if digest:
        print(digest[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
