#!/usr/bin/env python3
"""Round-trip delay proxy: makes loopback behave like a far-away server (no netem here).

Two modes, one listening port per ``--listen NAME=MODE:RTT_MS[@HOST:PORT]``:

``http``  Parses request boundaries (header blocks plus Content-Length bodies) and forwards each
          request to the upstream one round trip after it arrived, also on reused keep-alive
          connections, so every response starts at least one RTT after its request. Response
          bytes pass straight through.
``tcp``   No parsing: every chunk of bytes, in each direction, is forwarded RTT/2 after it
          arrived, in order. TLS handshakes therefore pay their real round trips.

In both modes a NEW connection costs one more round trip, as a TCP handshake does before the
client may send: on loopback the kernel completes the handshake at once and the client sends
straight away, so the proxy holds the client's first bytes until ``accept + RTT`` (then the
mode's own delay applies). A first request over ``http`` is thus answered after 2 RTT, a TLS 1.3
handshake over ``tcp`` completes after 2 RTT and its first response arrives after 3.

Flow control is kept in both directions: a sink that stops draining, or more than
``HIGH_WATER`` bytes held in a delay queue, pauses reading from the source. There is no
emulation of TCP slow start or loss.

``--delay-ms MS`` (repeatable) is the older spelling of ``--listen MS=http:MS``. On start the
proxy prints one JSON line, ``{"ports": {"NAME": PORT, ...}}``, to stdout.

Written with asyncio Protocols (no streams) so the data path is one ``transport.write`` per
received chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import signal
import sys
from dataclasses import dataclass

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_MAX_HEADER = 64 * 1024
HIGH_WATER = 4 * 1024 * 1024  # bytes held in one direction's delay queue before pausing
LOW_WATER = 1 * 1024 * 1024
_EARLY_S = 0.0002  # release chunks due within this much: timers fire a little late anyway


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    mode: str  # "http" | "tcp"
    rtt_s: float
    upstream: tuple[str, int]


class _Pipe:
    """One direction of a proxied connection: chunks released to the sink at their due time,
    in order; the source is paused while the sink is full or too much is queued."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.timer: asyncio.TimerHandle | None = None
        self.eof = False  # the source ended; pass that on once the queue is empty
        self.done = False  # EOF passed on to the sink
        self.sink_full = False
        self.queue_full = False
        self.on_done: list[object] = []

    def push(self, due: float, data: bytes) -> None:
        if self.sink is not None and not self.queue and due <= self.loop.time() + _EARLY_S:
            if not self.sink.is_closing():
                self.sink.write(data)  # nothing to wait for (0 ms, or response bytes in http mode)
            return
        self.queue.append((due, data))
        self.queued += len(data)
        if self.queued > HIGH_WATER and not self.queue_full:
            self.queue_full = True
            self.steer()
        if self.timer is None:
            self.release()

    def finish(self) -> None:
        self.eof = True
        if self.timer is None:
            self.release()

    def set_sink(self, sink: asyncio.Transport) -> None:
        self.sink = sink
        self.release()

    def set_sink_full(self, full: bool) -> None:
        self.sink_full = full
        self.steer()

    def release(self) -> None:
        self.timer = None
        sink = self.sink
        if sink is None or sink.is_closing():
            return
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now + _EARLY_S:
            data = self.queue.popleft()[1]
            self.queued -= len(data)
            sink.write(data)
        if self.queue_full and self.queued < LOW_WATER:
            self.queue_full = False
            self.steer()
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self.release)
        elif self.eof and not self.done:
            self.done = True
            if sink.can_write_eof():
                sink.write_eof()
            else:
                sink.close()
            for cb in self.on_done:
                cb()  # type: ignore[operator]

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.queued = 0

    def steer(self) -> None:
        src = self.source
        if src is None or src.is_closing():
            return
        if self.sink_full or self.queue_full:
            src.pause_reading()
        else:
            src.resume_reading()


class _Upstream(asyncio.Protocol):
    """Connection proxy -> upstream; its bytes go into the down pipe."""

    def __init__(self, conn: _Client) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn.down_data(data)

    def eof_received(self) -> bool:
        self.conn.down.finish()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.down.finish()
        self.conn.up_lost()

    def pause_writing(self) -> None:
        self.conn.up.set_sink_full(True)

    def resume_writing(self) -> None:
        self.conn.up.set_sink_full(False)


class _Client(asyncio.Protocol):
    """Connection client -> proxy: the up pipe (to the upstream) and the down pipe (back)."""

    def __init__(self, listener: Listener) -> None:
        self.lst = listener
        self.loop = asyncio.get_running_loop()
        self.up = _Pipe(self.loop)
        self.down = _Pipe(self.loop)
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.ready_at = 0.0  # when a real TCP handshake would let the client send
        self.closed = False
        # http mode: request parsing state
        self.buf = bytearray()
        self.body_left = 0
        self.last_due = 0.0
        self.up.on_done.append(self._maybe_close)
        self.down.on_done.append(self._maybe_close)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ready_at = self.loop.time() + self.lst.rtt_s
        self.up.source = transport
        self.down.set_sink(transport)
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        host, port = self.lst.upstream
        try:
            tr, _ = await self.loop.create_connection(lambda: _Upstream(self), host, port)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        if self.closed:
            tr.close()
            return
        self.upstream = tr
        self.down.source = tr
        self.down.steer()
        self.up.set_sink(tr)

    # -- client -> upstream --------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        if self.lst.mode == "tcp":
            self.up.push(max(now, self.ready_at) + self.lst.rtt_s / 2, data)
            return
        self._http_requests(now, data)

    def _http_requests(self, now: float, data: bytes) -> None:
        """Queue each request whole, due one RTT after its header block arrived (two on a new
        connection: the handshake's round trip first)."""
        self.buf += data
        while self.buf:
            if self.body_left:
                n = min(self.body_left, len(self.buf))
                self.up.push(self.last_due, bytes(self.buf[:n]))
                del self.buf[:n]
                self.body_left -= n
                continue
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEADER:  # not HTTP as we know it: pass through
                    self.up.push(max(now, self.last_due), bytes(self.buf))
                    self.buf.clear()
                break
            head = bytes(self.buf[: end + 4])
            del self.buf[: end + 4]
            m = _CONTENT_LENGTH.search(head)
            self.body_left = int(m.group(1)) if m else 0
            self.last_due = max(max(now, self.ready_at) + self.lst.rtt_s, self.last_due)
            self.up.push(self.last_due, head)

    def eof_received(self) -> bool:
        self.up.finish()
        return True  # keep our write side open until the response is through

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.up.close()
        self.down.close()
        if self.upstream is not None:
            self.upstream.close()

    # -- upstream -> client --------------------------------------------------------------------
    def down_data(self, data: bytes) -> None:
        delay = self.lst.rtt_s / 2 if self.lst.mode == "tcp" else 0.0
        self.down.push(self.loop.time() + delay, data)

    def up_lost(self) -> None:
        self.up.close()
        self.up.done = True  # nothing more can reach the upstream
        self._maybe_close()

    def pause_writing(self) -> None:
        self.down.set_sink_full(True)

    def resume_writing(self) -> None:
        self.down.set_sink_full(False)

    def _maybe_close(self) -> None:
        # http: the upstream ending its side ends the exchange (Connection: close, as before);
        # tcp: close once both directions have ended.
        if self.down.done and (self.lst.mode == "http" or self.up.done):
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered first
        if self.upstream is not None:
            self.upstream.close()


async def _serve(listeners: list[Listener], host: str) -> None:
    loop = asyncio.get_running_loop()
    ports: dict[str, int] = {}
    servers = []
    for lst in listeners:
        srv = await loop.create_server(
            lambda lst=lst: _Client(lst), host, 0, backlog=1024, reuse_address=True
        )
        servers.append(srv)
        ports[lst.name] = srv.sockets[0].getsockname()[1]
    print(json.dumps({"ports": ports}), flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    for srv in servers:
        srv.close()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def parse_listener(spec: str, default_upstream: tuple[str, int] | None) -> Listener:
    """``NAME=MODE:RTT_MS[@HOST:PORT]`` -> Listener."""
    name, _, rest = spec.partition("=")
    rest, _, up = rest.partition("@")
    mode, _, ms = rest.partition(":")
    if not name or mode not in ("http", "tcp") or not ms:
        raise ValueError(f"bad --listen {spec!r}: want NAME=http|tcp:RTT_MS[@HOST:PORT]")
    upstream = _hostport(up) if up else default_upstream
    if upstream is None:
        raise ValueError(f"--listen {spec!r} has no upstream and there is no --upstream")
    return Listener(name, mode, float(ms) / 1000.0, upstream)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--upstream", help="HOST:PORT of the real server (default for listeners)")
    ap.add_argument("--listen-host", default="127.0.0.1")
    ap.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="NAME=MODE:RTT_MS[@HOST:PORT]",
        help="one listening port (repeatable); MODE is http or tcp",
    )
    ap.add_argument(
        "--delay-ms", type=float, action="append", default=[], help="same as --listen MS=http:MS"
    )
    args = ap.parse_args(argv)
    default_up = _hostport(args.upstream) if args.upstream else None
    try:
        listeners = [parse_listener(s, default_up) for s in args.listen]
        listeners += [parse_listener(f"{d:g}=http:{d:g}", default_up) for d in args.delay_ms]
    except ValueError as exc:
        ap.error(str(exc))
    if not listeners:
        ap.error("nothing to listen on: give --listen or --delay-ms")
    asyncio.run(_serve(listeners, args.listen_host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
