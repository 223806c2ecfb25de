#!/usr/bin/env python3
"""Tiny HTTP/1.1 delay proxy: holds every request for a fixed time before forwarding it.

The kernel on the bench VM has no netem, so "a far-away server" is emulated here: each
request (each header block, also on reused keep-alive connections) is forwarded to the
upstream only ``delay`` after its last header byte arrived, so every request's first response
byte comes at least ``delay`` late.  Response bytes are passed through untouched.

One process can listen on several ports with different delays (``--delay-ms 30 --delay-ms 0``),
which lets the harness measure the proxy's own overhead (delay 0 vs. talking to nginx directly).
On start it prints one JSON line ``{"ports": {"30": 41235, "0": 41236}}`` to stdout.

Written with asyncio Protocols (no streams) so the data path is a single ``transport.write``
per received chunk with proper flow control in both directions.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import signal
import sys

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_MAX_HEADER = 64 * 1024


class _Upstream(asyncio.Protocol):
    """Connection proxy -> upstream server; response bytes go straight to the client."""

    def __init__(self, client: _Client) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def eof_received(self) -> bool:
        self.client.transport.close()  # flushes buffered response bytes first
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()

    # The upstream socket's send buffer is full: stop reading requests from the client.
    def pause_writing(self) -> None:
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()


class _Client(asyncio.Protocol):
    """Connection client -> proxy: parses request boundaries and delays their forwarding."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream_addr = upstream
        self.delay = delay
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport
        self.up: asyncio.Transport | None = None
        self.up_paused = False
        self.buf = bytearray()
        self.body_left = 0
        self.last_due = 0.0
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.client_eof = False
        self.closed = False

    # -- client side -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        host, port = self.upstream_addr
        try:
            tr, _ = await self.loop.create_connection(lambda: _Upstream(self), host, port)
        except OSError:
            self.transport.close()
            return
        if self.closed:
            tr.close()
            return
        self.up = tr
        if self.up_paused:
            tr.pause_reading()
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        now = self.loop.time()
        while self.buf:
            if self.body_left:
                n = min(self.body_left, len(self.buf))
                self._enqueue(self.last_due, bytes(self.buf[:n]))
                del self.buf[:n]
                self.body_left -= n
                continue
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEADER:  # not HTTP as we know it: pass through
                    self._enqueue(max(now, self.last_due), bytes(self.buf))
                    self.buf.clear()
                break
            head = bytes(self.buf[: end + 4])
            del self.buf[: end + 4]
            m = _CONTENT_LENGTH.search(head)
            self.body_left = int(m.group(1)) if m else 0
            self.last_due = max(now + self.delay, self.last_due)
            self._enqueue(self.last_due, head)
        self._flush()

    def eof_received(self) -> bool:
        self.client_eof = True
        self._flush()
        return True  # keep our write side open until the response is through

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer:
            self.timer.cancel()
        if self.up:
            self.up.close()

    # The client is slow to read responses: stop reading from the upstream.
    def pause_writing(self) -> None:
        self.up_paused = True
        if self.up:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        self.up_paused = False
        if self.up:
            self.up.resume_reading()

    # -- delayed forwarding ------------------------------------------------------------------
    def _enqueue(self, due: float, data: bytes) -> None:
        self.queue.append((due, data))

    def _flush(self) -> None:
        self.timer = None
        if self.up is None or self.closed:
            return
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now + 0.0002:
            self.up.write(self.queue.popleft()[1])
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)
        elif self.client_eof and self.up.can_write_eof():
            self.up.write_eof()


async def _serve(upstream: tuple[str, int], delays_ms: list[float], host: str) -> None:
    loop = asyncio.get_running_loop()
    ports: dict[str, int] = {}
    servers = []
    for d in delays_ms:
        srv = await loop.create_server(
            lambda d=d: _Client(upstream, d / 1000.0), host, 0, backlog=1024, reuse_address=True
        )
        servers.append(srv)
        ports[f"{d:g}"] = srv.sockets[0].getsockname()[1]
    print(json.dumps({"ports": ports}), flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    for srv in servers:
        srv.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="HOST:PORT of the real server")
    ap.add_argument("--listen-host", default="127.0.0.1")
    ap.add_argument(
        "--delay-ms",
        type=float,
        action="append",
        required=True,
        help="open one listening port per value (repeatable)",
    )
    args = ap.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    asyncio.run(_serve((host, int(port)), args.delay_ms, args.listen_host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
