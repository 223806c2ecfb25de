"""A lower bound on what any downloader can spend on case A, for comparison in the same run.

    floor.py URL OUT CONNECTIONS [--sha256]

Fetches URL into OUT with CONNECTIONS threads, one Range request each, and nothing else a real
tool needs: no retries, no journal, no progress. Each thread reads whole 4 MiB blocks with
``recv_into(MSG_WAITALL)`` and writes them with ``pwrite`` under one lock (page-cache writes to
one file queue on its inode lock anyway). With ``--sha256`` the file is then hashed once
through memory maps (64 MiB windows), the cheapest way to read it back, and the digest printed.

Its CPU seconds per GiB is the floor the receive, the page-cache writes and (with --sha256)
the verification cost on this machine; modelhaul's number in the same table is measured
against it.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import socket
import sys
import threading
from urllib.parse import urlsplit

BLOCK = 4 * 1024 * 1024


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


def _fetch(host: str, port: int, path: str, fd: int, lock: threading.Lock, a: int, b: int) -> None:
    sock, first = _request(host, port, path, f"Range: bytes={a}-{b - 1}\r\n")
    with sock:
        pos = a
        if first:
            with lock:
                os.pwrite(fd, first, pos)
            pos += len(first)
        view = memoryview(bytearray(BLOCK))
        while pos < b:
            n = sock.recv_into(view, min(BLOCK, b - pos), socket.MSG_WAITALL)
            if n <= 0:
                raise OSError("short body")
            with lock:
                os.pwrite(fd, view[:n], pos)
            pos += n


def main() -> int:
    url, out, conns = sys.argv[1], sys.argv[2], int(sys.argv[3])
    verify = "--sha256" in sys.argv[4:]
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    size = _size(host, port, path)
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(a: int, b: int) -> None:
        try:
            _fetch(host, port, path, fd, lock, a, b)
        except BaseException as exc:  # reported below; the file is then incomplete
            errors.append(exc)

    step = max(1, -(-size // conns))
    threads = [
        threading.Thread(target=run, args=(a, min(size, a + step))) for a in range(0, size, step)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print(f"floor: {errors[0]}", file=sys.stderr)
        return 1
    if verify and size:
        h = hashlib.sha256()
        window = 64 * 1024 * 1024  # one map per window: a whole-file map would count as RSS
        for i in range(0, size, window):
            n = min(window, size - i)
            with mmap.mmap(fd, n, offset=i, access=mmap.ACCESS_READ) as m, memoryview(m) as v:
                h.update(v)
        print(h.hexdigest())
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
