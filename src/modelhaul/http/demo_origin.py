"""A misbehaving local origin for ``modelhaul demo``: one generated file, served badly on purpose.

The demo has to work on a fresh machine with no network, so the "remote" is an aiohttp server
on 127.0.0.1 (an ephemeral port) in the caller's event loop. It serves one file and, per GET,
may answer 503, reset the connection at a random offset, or stall for longer than the client's
timeout; it caps each connection's speed and the total, so a download takes long enough to
watch. Every fault is counted, so the demo can say what the client survived, and reported as it
happens to an ``on_fault`` callback, so the demo can show it live.

The content is generated, not stored: a random 1 MiB block, rotated by a per-MiB amount and
stamped with its MiB counter, so no two MiB are alike (nothing compresses or dedups it) yet any
range is cheap to produce and the whole file is the same for the same seed.

This is a server, not a client: it uses ``aiohttp.web`` and never ``transport.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from aiohttp import web

from ..config import MiB
from ..policy.ratelimit import TokenBucket

_PIECE_BYTES = 64 * 1024
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")

FAULT_KINDS = ("dropped", "stalled", "http_503")
RETRY_AFTER_S = 1  # what a 503 asks the client to wait


class DemoContent:
    """``size`` deterministic bytes from ``seed``, produced a MiB block at a time."""

    def __init__(self, size: int, seed: int = 0) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.size = size
        self._base = random.Random(seed).randbytes(MiB)

    def block(self, index: int) -> bytes:
        """MiB block ``index`` (the last one may be short)."""
        shift = (index * 40_503) % MiB
        data = index.to_bytes(8, "big") + self._base[shift + 8 :] + self._base[:shift]
        return data[: max(0, min(MiB, self.size - index * MiB))]

    def pieces(self, start: int, end: int) -> Iterator[memoryview]:
        """The bytes of [start, end) as views of at most _PIECE_BYTES each."""
        pos = start
        current: tuple[int, memoryview] | None = None
        while pos < end:
            index, offset = divmod(pos, MiB)
            if current is None or current[0] != index:
                current = (index, memoryview(self.block(index)))
            block = current[1]
            n = min(_PIECE_BYTES, len(block) - offset, end - pos)
            yield block[offset : offset + n]
            pos += n

    def sha256(self) -> str:
        """The digest of the whole file (run it in a thread: about a second for 256 MiB)."""
        h = hashlib.sha256()
        for index in range((self.size + MiB - 1) // MiB):
            h.update(self.block(index))
        return h.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoFaults:
    """How badly the demo origin behaves. Probabilities are per GET response."""

    drop_p: float = 0.08
    stall_p: float = 0.05
    error_p: float = 0.04
    # A client halves its connections on each 503 and never grows them back, so a few are
    # enough to show the retry; more would only make the demo crawl on one connection.
    max_errors: int = 2
    stall_s: float = 4.0
    connection_bytes_per_s: int = 6 * MiB
    total_bytes_per_s: int = 24 * MiB
    # The first responses misbehave for sure, so even a small file shows every kind of fault.
    scripted: tuple[str, ...] = ("dropped", "http_503", "stalled")
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("drop_p", "stall_p", "error_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)!r}")
        if self.drop_p + self.stall_p + self.error_p > 1:
            raise ValueError("drop_p + stall_p + error_p must not exceed 1")
        for name in ("connection_bytes_per_s", "total_bytes_per_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        unknown = set(self.scripted) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"scripted holds unknown fault kinds: {sorted(unknown)}")


@dataclass(frozen=True, slots=True)
class InjectedFault:
    """One fault as the origin commits it: ``kind`` (one of FAULT_KINDS), the response's byte
    span [start, end), and for a drop or stall the offset ``at`` where the body stopped."""

    kind: str
    start: int
    end: int
    at: int | None = None


@dataclass(slots=True)
class DemoStats:
    """What the origin did: faults by kind, requests and body bytes sent."""

    faults: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    bytes_sent: int = 0


class DemoOrigin:
    """Serve ``content`` at ``/<name>`` on 127.0.0.1 with ``faults``; an async context manager.

    Example::

        async with DemoOrigin(DemoContent(64 * MiB), DemoFaults()) as origin:
            await download(origin.url, ...)
            print(origin.stats.faults)
    """

    def __init__(
        self,
        content: DemoContent,
        faults: DemoFaults,
        name: str = "demo.bin",
        on_fault: Callable[[InjectedFault], None] | None = None,
    ) -> None:
        self.content = content
        self.faults = faults
        self.name = name
        self.on_fault = on_fault
        self.stats = DemoStats()
        self.etag = f'"demo-{faults.seed}-{content.size}"'
        self._rng = random.Random(faults.seed)
        self._scripted = list(faults.scripted)
        self._total = TokenBucket(faults.total_bytes_per_s)
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/{self.name}"

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a stalled handler whose client gave up ends at once.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))  # loopback only: the demo never listens on the network
        self._port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _next_fault(self) -> str | None:
        if self._scripted:
            return self._scripted.pop(0)
        f = self.faults
        r = self._rng.random()
        if r < f.error_p:
            return "http_503" if self.stats.faults["http_503"] < f.max_errors else None
        if r < f.error_p + f.drop_p:
            return "dropped"
        if r < f.error_p + f.drop_p + f.stall_p:
            return "stalled"
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path != f"/{self.name}":
            return web.Response(status=404, text="no such file\n")
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        size = self.content.size
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": self.etag,
            "Content-Type": "application/octet-stream",
        }
        span = self._span(request, size)
        if span is None:
            headers["Content-Range"] = f"bytes */{size}"
            return web.Response(status=416, headers=headers)
        start, end, ranged = span
        if ranged:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if request.method == "HEAD":
            return web.Response(status=206 if ranged else 200, headers=headers)
        self.stats.requests += 1
        fault = self._next_fault()
        if fault == "http_503":
            self._injected(InjectedFault(fault, start, end))
            return web.Response(
                status=503, text="busy, try again\n", headers={"Retry-After": str(RETRY_AFTER_S)}
            )
        length = end - start
        cut = None
        if fault == "dropped" and length > 1:
            cut = self._rng.randrange(1, length)
        elif fault == "stalled" and length > 0:
            cut = self._rng.randrange(0, length)
        response = web.StreamResponse(status=206 if ranged else 200, headers=headers)
        response.content_length = length
        await response.prepare(request)
        await self._send(request, response, start, end, fault if cut is not None else None, cut)
        return response

    def _span(self, request: web.Request, size: int) -> tuple[int, int, bool] | None:
        """[start, end) to send and whether it answers a Range; None means 416.

        No Range, a malformed one, or an If-Range that does not match get the whole file.
        """
        m = _RANGE.match(request.headers.get("Range", "").replace(" ", ""))
        if_range = request.headers.get("If-Range")
        if m is None or (if_range is not None and if_range != self.etag):
            return 0, size, False
        first, last = int(m.group(1)), m.group(2)
        if first >= size:
            return None
        end = size if not last else min(size, int(last) + 1)
        if end <= first:
            return 0, size, False
        return first, end, True

    async def _send(
        self,
        request: web.Request,
        response: web.StreamResponse,
        start: int,
        end: int,
        fault: str | None,
        cut: int | None,
    ) -> None:
        per_connection = TokenBucket(self.faults.connection_bytes_per_s)
        stop = end if cut is None else start + cut
        try:
            for piece in self.content.pieces(start, stop):
                await per_connection.acquire(len(piece))
                await self._total.acquire(len(piece))
                self.stats.bytes_sent += len(piece)
                await response.write(piece)
            if fault is None:
                return
            self._injected(InjectedFault(fault, start, end, at=stop))
            if fault == "stalled":
                await asyncio.sleep(self.faults.stall_s)
                for piece in self.content.pieces(stop, end):  # if the client is still there
                    await response.write(piece)
                    self.stats.bytes_sent += len(piece)
            elif request.transport is not None:
                request.transport.abort()  # "dropped": a reset mid-body
        except ConnectionError:
            return  # the client left (it timed out a stall, or stole the rest)

    def _injected(self, fault: InjectedFault) -> None:
        self.stats.faults[fault.kind] += 1
        if self.on_fault is not None:
            self.on_fault(fault)
