"""A real HTTP origin for tests, with faults injected per request.

The engine and manager tests need an origin that misbehaves on cue: a 503 then a 200, a
connection reset after a known number of bytes, a stall, a 200 to a ranged request, a file that
changes between requests. Mocks cannot show how a client reacts to real sockets, so this is an
`aiohttp.web` server on loopback only, listening on 127.0.0.1 and on 127.0.0.2 (Linux routes all
of 127/8 to lo), which plays "another host" for cross-host redirects.

The server runs its own event loop in a daemon thread, so the same origin serves sync tests,
async tests and subprocesses alike. Every public method is thread-safe.

Usage::

    from origin import Fault, Origin, origin_fixture

    @pytest.fixture
    def origin():
        yield from origin_fixture()

    def test_resume(origin):
        origin.add_file("m.bin", data)
        origin.plan("m.bin", [Fault(drop_after=1000)])  # first GET: reset after 1000 bytes
        ...  # download origin.url("m.bin")
        assert origin.ranges_served("m.bin") == [(0, 1000), (1000, len(data))]

(`tests/` has no `__init__.py`, so pytest's default import mode puts it on `sys.path`.)

Planned faults apply to the next GET requests of a name in arrival order, one per request; a
default fault (`set_default`) applies to every request that has no planned fault. Counters are in
file coordinates: `bytes_served` and `ranges_served` count only bytes of the file's content
actually handed to the transport, while `RequestRecord.bytes_sent` counts every body byte written.
They are updated before the bytes can reach a client, so once a client has read n bytes the
counters show at least n; `wait_idle()` tells when every handler has finished.

In async tests use the `*_async` waits: the blocking ones would stall the test's own event loop
and with it the client under test.

`Origin(tls=True)` serves HTTPS with a certificate for 127.0.0.1, 127.0.0.2 and localhost from a
throwaway CA made with `trustme` (`origin.tls`: the client's SSL context, or the CA as a PEM file
for SSL_CERT_FILE). `connections_accepted` counts TCP accepts and `tls_handshakes` TLS
handshakes, so a test can tell a reused connection from a new one.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import ipaddress
import random
import re
import socket
import ssl
import struct
import sys
import threading
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from types import MappingProxyType
from urllib.parse import quote, urlsplit

from aiohttp import web

__all__ = ["Fault", "Origin", "RequestRecord", "TestTls", "origin_fixture"]

CHUNK_BYTES = 128 * 1024
"""Largest single write. Faults still land on their exact byte offsets: pieces are cut there."""

_GARBAGE = random.Random(0).randbytes(64 * 1024)
_BASE_LAST_MODIFIED_S = 1_704_067_200  # 2024-01-01 00:00:00 GMT; version k is k days later
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """How to misbehave on one response.

    Keyword-only. Byte counts are body bytes on the wire. When several fields are set they combine in this
    order: `delay_s`, then `status` (which replaces the file response), then the body shape
    (`endless`, `gzip`, `ignore_range`, `wrong_content_range`), then the body faults.
    HEAD requests honour only `delay_s`, `status`, `headers` and the body-shape headers.

    Args:
        status: Answer this status with a small text body instead of the file.
        headers: Extra response headers; they override the origin's own (e.g. `ETag`).
        drop_after: Send this many body bytes (all if shorter), wait until the peer has
            acknowledged them, then reset the connection (RST).
        stall_after: Send this many body bytes (all if shorter), then send nothing for
            `stall_s` with the connection open; the rest follows if the client is still there.
        stall_s: Length of the stall.
        truncate_after: Send this many body bytes, then close cleanly (FIN) although
            Content-Length promised more.
        ignore_range: Answer 200 with the full body even if Range was sent.
        wrong_content_range: Answer 206 with the requested bytes but a Content-Range shifted
            by +1024.
        rate_bytes_per_s: Never send faster than this on this response.
        delay_s: Wait this long before sending the headers.
        gzip: Answer 200 with the gzip-compressed full file and `Content-Encoding: gzip`.
        extra_body: After the body, send this many garbage bytes beyond Content-Length, then
            close the connection (a lying origin).
        endless: Answer 200, chunked, with no Content-Length and a never-ending garbage body;
            it stops when the client disconnects.
    """

    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    drop_after: int | None = None
    stall_after: int | None = None
    stall_s: float = 3600
    truncate_after: int | None = None
    ignore_range: bool = False
    wrong_content_range: bool = False
    rate_bytes_per_s: int | None = None
    delay_s: float = 0
    gzip: bool = False
    extra_body: int = 0
    endless: bool = False

    def __post_init__(self) -> None:
        if self.status is not None and not 200 <= self.status <= 599:
            raise ValueError(f"status must be 200..599, got {self.status}")
        for name in ("drop_after", "stall_after", "truncate_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.drop_after is not None and self.truncate_after is not None:
            raise ValueError("drop_after and truncate_after are exclusive")
        if self.rate_bytes_per_s is not None and self.rate_bytes_per_s <= 0:
            raise ValueError(f"rate_bytes_per_s must be > 0, got {self.rate_bytes_per_s}")
        for name in ("stall_s", "delay_s", "extra_body"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        # A read-only copy, so a frozen fault cannot change behind a queued plan.
        object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRecord:
    """What one request asked for and what the origin did about it, at the time of reading.

    Attributes:
        name: The file name the path maps to (path without the leading slash).
        host: The Host header; local_addr: the address that accepted the connection.
        peer: The client's "address:port" (one per TCP connection: count connections by it).
        status: The status sent, or None while the handler has not answered yet.
        bytes_sent: Body bytes written, garbage included.
        served: The [start, end) interval of the file written, or None if the response
            carried no file content (HEAD, injected status, redirect, 416, endless).
        done: The handler has finished (completed, failed or was cut off).
    """

    method: str
    path: str
    name: str
    host: str
    local_addr: str
    headers: Mapping[str, str]
    range_header: str | None
    status: int | None
    bytes_sent: int
    fault: Fault | None
    served: tuple[int, int] | None
    done: bool
    peer: str = ""


@dataclass(slots=True)
class _Record:
    """The mutable twin of RequestRecord, updated by the handler under the origin's lock."""

    method: str
    path: str
    name: str
    host: str
    local_addr: str
    headers: Mapping[str, str]
    fault: Fault | None
    epoch: int
    status: int | None = None
    bytes_sent: int = 0
    served: tuple[int, int] | None = None
    done: bool = False
    peer: str = ""

    def freeze(self) -> RequestRecord:
        return RequestRecord(
            method=self.method,
            path=self.path,
            name=self.name,
            host=self.host,
            local_addr=self.local_addr,
            headers=self.headers,
            range_header=self.headers.get("Range"),
            status=self.status,
            bytes_sent=self.bytes_sent,
            fault=self.fault,
            served=self.served,
            done=self.done,
            peer=self.peer,
        )


@dataclass(frozen=True, slots=True)
class TestTls:
    """A throwaway CA and a server certificate for 127.0.0.1, 127.0.0.2 and localhost."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    server_context: ssl.SSLContext
    ca_pem: bytes

    @classmethod
    def make(cls) -> TestTls:
        import trustme  # only the HTTPS tests need it

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "127.0.0.2", "localhost")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        return cls(ctx, ca.cert_pem.bytes())

    def client_context(self) -> ssl.SSLContext:
        """An SSL context for a client that trusts this CA (and verifies as usual)."""
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    def write_ca(self, path: Path) -> Path:
        """The CA certificate as a PEM file at ``path`` (for SSL_CERT_FILE); returns ``path``."""
        path.write_bytes(self.ca_pem)
        return path


@dataclass(frozen=True, slots=True)
class _Version:
    """One version of a file's content; requests keep the version they arrived under."""

    view: memoryview
    etag: str | None
    last_modified: str | None


@dataclass(slots=True)
class _File:
    version: _Version
    generation: int
    weak_etag: bool
    accept_ranges: bool
    content_disposition: str | None
    content_type: str
    pending: tuple[int, bytes] | None = None  # (GET requests left, next content)


@dataclass(frozen=True, slots=True)
class _Admitted:
    record: _Record
    fault: Fault | None
    file: _File | None
    version: _Version | None
    redirect: tuple[str, int] | None


class _Body:
    """Wire bytes of one response body and how far into the file a wire offset reaches."""

    length: int | None  # None: endless

    def piece(self, pos: int, n: int) -> memoryview:
        raise NotImplementedError

    def file_pos(self, pos: int) -> int | None:
        raise NotImplementedError


class _IdentityBody(_Body):
    def __init__(self, view: memoryview, start: int, end: int) -> None:
        self._view = view[start:end]  # a view: no per-request copy of the file
        self._start = start
        self.length = end - start

    def piece(self, pos: int, n: int) -> memoryview:
        return self._view[pos : pos + n]

    def file_pos(self, pos: int) -> int:
        return self._start + pos


class _GzipBody(_Body):
    """The file compressed in CHUNK_BYTES blocks, each sync-flushed so it is decodable alone.

    The sync flushes are what let the counters stay in file coordinates: a block counts as
    served once all its compressed bytes were written.
    """

    def __init__(self, view: memoryview) -> None:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip framing
        parts: list[bytes] = []
        self._wire_ends: list[int] = []
        self._file_ends: list[int] = []
        wire = 0
        for off in range(0, len(view), CHUNK_BYTES):
            block = view[off : off + CHUNK_BYTES]
            part = compressor.compress(block) + compressor.flush(zlib.Z_SYNC_FLUSH)
            parts.append(part)
            wire += len(part)
            self._wire_ends.append(wire)
            self._file_ends.append(off + len(block))
        parts.append(compressor.flush())
        self._wire = memoryview(b"".join(parts))
        self.length = len(self._wire)
        self._wire_ends.append(self.length)
        self._file_ends.append(len(view))

    def piece(self, pos: int, n: int) -> memoryview:
        return self._wire[pos : pos + n]

    def file_pos(self, pos: int) -> int:
        i = bisect.bisect_right(self._wire_ends, pos)
        return self._file_ends[i - 1] if i else 0


class _EndlessBody(_Body):
    length = None

    def piece(self, pos: int, n: int) -> memoryview:
        off = pos % len(_GARBAGE)
        return memoryview(_GARBAGE)[off : off + n]

    def file_pos(self, pos: int) -> None:
        return None


class _Unsatisfiable(Exception):
    """The Range header is valid but selects nothing in the file: answer 416."""


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Return the [start, end) of a single byte range, or None to ignore the header.

    Multiple ranges and malformed values are ignored (a full 200), which RFC 9110 section 14.2
    allows. Raises _Unsatisfiable for a valid range that misses the file.
    """
    match = _RANGE_RE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _Unsatisfiable
    end = size if not last else min(int(last) + 1, size)
    return start, end


def _file_headers(entry: _File, version: _Version) -> dict[str, str]:
    headers = {"Content-Type": entry.content_type}
    if entry.accept_ranges:
        headers["Accept-Ranges"] = "bytes"
    if version.etag is not None:
        headers["ETag"] = version.etag
    if version.last_modified is not None:
        headers["Last-Modified"] = version.last_modified
    if entry.content_disposition is not None:
        headers["Content-Disposition"] = entry.content_disposition
    return headers


def _choose_body(
    request: web.BaseRequest, entry: _File, version: _Version, fault: Fault, headers: dict[str, str]
) -> tuple[int, _Body]:
    """Pick the status and body for a file response, adding the headers that go with them.

    Raises _Unsatisfiable when the answer must be 416.
    """
    if fault.endless:
        return 200, _EndlessBody()
    if fault.gzip:
        headers["Content-Encoding"] = "gzip"
        return 200, _GzipBody(version.view)
    size = len(version.view)
    span: tuple[int, int] | None = None
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if (
        range_header is not None
        and entry.accept_ranges
        and not fault.ignore_range
        and (if_range is None or _if_range_matches(if_range, version))
    ):
        span = _parse_range(range_header, size)
    if fault.wrong_content_range and span is None and size > 0:
        span = (0, size)
    if span is None:
        return 200, _IdentityBody(version.view, 0, size)
    shift = 1024 if fault.wrong_content_range else 0
    headers["Content-Range"] = f"bytes {span[0] + shift}-{span[1] - 1 + shift}/{size}"
    return 206, _IdentityBody(version.view, *span)


def _if_range_matches(value: str, version: _Version) -> bool:
    """RFC 9110 section 13.1.5: a strong ETag match, or a date equal to Last-Modified."""
    value = value.strip()
    if value.startswith(('"', "W/")):
        etag = version.etag
        return etag is not None and not etag.startswith("W/") and value == etag
    if version.last_modified is None:
        return False
    try:
        return parsedate_to_datetime(value) == parsedate_to_datetime(version.last_modified)
    except (TypeError, ValueError):
        return False


def _make_version(
    data: bytes | bytearray | memoryview,
    etag: str | None,
    weak: bool,
    last_modified: str | None,
    generation: int,
) -> _Version:
    content = data if isinstance(data, bytes) else bytes(data)
    if etag == "auto":
        etag = '"' + hashlib.sha256(content).hexdigest()[:16] + '"'
    elif etag is not None and not etag.startswith(('"', "W/")):
        etag = f'"{etag}"'
    if etag is not None and weak and not etag.startswith("W/"):
        etag = "W/" + etag
    if last_modified == "auto":
        last_modified = formatdate(_BASE_LAST_MODIFIED_S + generation * 86400, usegmt=True)
    return _Version(memoryview(content), etag, last_modified)


def _check_loopback_url(url: str) -> None:
    """Redirect targets stay on loopback: this origin must never send a client off the box."""
    host = urlsplit(url).hostname
    if host is None or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"redirect target must be a loopback or relative URL, got {url!r}")


def _unacked_bytes(sock: socket.socket) -> int:
    """Bytes the kernel still holds for this socket (unsent or unacknowledged); 0 off Linux."""
    if sys.platform != "linux":
        return 0
    import fcntl
    import termios

    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ
    return struct.unpack("i", raw)[0]


class Origin:
    """An HTTP origin on 127.0.0.1 and 127.0.0.2 that serves in-memory files and faults.

    Example::

        with Origin() as origin:
            origin.add_file("a.bin", b"x" * 1000)
            origin.plan("a.bin", [Fault(status=503, headers={"Retry-After": "1"})])
            urllib.request.urlopen(origin.url("a.bin"))  # HTTPError 503, the next GET works
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, tls: bool = False) -> None:
        self.tls = TestTls.make() if tls and ssl_context is None else None
        if self.tls is not None:
            ssl_context = self.tls.server_context
        self._ssl_context = ssl_context  # serve HTTPS with it
        self._accepts = 0
        self._handshakes_before = 0  # the context's count of handshakes at the last reset
        self._servers: list[asyncio.AbstractServer] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._files: dict[str, _File] = {}
        self._redirects: dict[str, tuple[str, int]] = {}
        self._plans: dict[tuple[str, str], deque[Fault]] = {}
        self._defaults: dict[str, Fault] = {}
        self._records: list[_Record] = []
        self._served: dict[str, int] = {}
        self._arrivals: dict[str, int] = {}
        self._epoch = 0
        self._in_flight = 0
        self._async_waiters: list[
            tuple[Callable[[], bool], asyncio.AbstractEventLoop, asyncio.Future[None]]
        ] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._handler_tasks: set[asyncio.Task[object]] = set()
        self._transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        self._base_url: str | None = None
        self._alt_base_url: str | None = None

    # lifecycle

    def start(self) -> Origin:
        """Bind both loopback addresses on ephemeral ports and start serving; returns self."""
        if self._thread is not None:
            raise RuntimeError("origin already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="test-origin", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start_serving(), loop).result(_STOP_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop serving and join the thread, cutting off stalled and endless responses.

        Idempotent; returns within a few seconds whatever the handlers are doing.
        """
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if not thread.is_alive():
            self._loop = self._thread = None
            return
        try:
            future = asyncio.run_coroutine_threadsafe(self._stop_serving(), loop)
            with contextlib.suppress(TimeoutError):
                future.result(_STOP_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_STOP_TIMEOUT_S)
            self._loop = self._thread = None

    def __enter__(self) -> Origin:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        if self._base_url is None:
            raise RuntimeError("origin not started")
        return self._base_url

    @property
    def alt_base_url(self) -> str:
        """`http://127.0.0.2:PORT2`: the same files, seen as another host."""
        if self._alt_base_url is None:
            raise RuntimeError("origin not started")
        return self._alt_base_url

    def url(self, name: str, *, alt: bool = False) -> str:
        """The URL of `name` on 127.0.0.1 (or on 127.0.0.2 with `alt=True`)."""
        return f"{self.alt_base_url if alt else self.base_url}/{quote(name, safe='/')}"

    # content

    def add_file(
        self,
        name: str,
        data: bytes | bytearray | memoryview,
        *,
        etag: str | None = "auto",
        weak_etag: bool = False,
        last_modified: str | None = "auto",
        accept_ranges: bool = True,
        content_disposition: str | None = None,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Serve `data` at /name, replacing any file or redirect of that name.

        Args:
            etag: "auto" for a strong ETag from sha256(data)[:16]; None for no ETag; any
                other value is used as the ETag (quoted if it is not already).
            weak_etag: Send the ETag as weak (W/"..."), which never satisfies If-Range.
            last_modified: "auto" for a fixed HTTP date; None for no Last-Modified.
            accept_ranges: False ignores Range entirely: always 200, no Accept-Ranges.
        """
        version = _make_version(data, etag, weak_etag, last_modified, generation=0)
        with self._lock:
            self._redirects.pop(name, None)
            self._files[name] = _File(
                version, 0, weak_etag, accept_ranges, content_disposition, content_type
            )

    def set_content(
        self,
        name: str,
        data: bytes | bytearray | memoryview,
        *,
        etag: str | None = "auto",
        last_modified: str | None = "auto",
    ) -> None:
        """Publish a new version of `name`; "auto" validators change with it.

        Requests already in flight finish with the version they started with.
        """
        with self._lock:
            entry = self._files[name]
            entry.generation += 1
            entry.version = _make_version(
                data, etag, entry.weak_etag, last_modified, entry.generation
            )

    def change_content_after(
        self, name: str, n_requests: int, data: bytes | bytearray | memoryview
    ) -> None:
        """After the next `n_requests` GET requests of `name`, switch to `data` (new ETag).

        Those n requests are served the current version; later requests, HEAD included, see
        the new one.
        """
        if n_requests < 0:
            raise ValueError(f"n_requests must be >= 0, got {n_requests}")
        content = data if isinstance(data, bytes) else bytes(data)
        with self._lock:
            if name not in self._files:
                raise KeyError(name)
            self._files[name].pending = (n_requests, content)
            if n_requests == 0:
                self._apply_pending_locked(self._files[name])

    def add_redirect(self, name: str, target_url: str, status: int = 302) -> None:
        """Answer GET and HEAD of /name with `status` and `Location: target_url`.

        The target must be relative or on loopback, e.g. `origin.url("f", alt=True)`.
        """
        if status not in (301, 302, 303, 307, 308):
            raise ValueError(f"status must be a redirect status, got {status}")
        _check_loopback_url(target_url)
        with self._lock:
            self._redirects[name] = (target_url, status)

    # faults

    def plan(self, name: str, faults: Iterable[Fault], *, method: str = "GET") -> None:
        """Queue faults for the next requests of `name`, one per request in arrival order.

        Args:
            method: "GET" (the default) or "HEAD"; each method has its own queue.
        """
        method = method.upper()
        if method not in ("GET", "HEAD"):
            raise ValueError(f"method must be GET or HEAD, got {method!r}")
        faults = list(faults)
        with self._lock:
            self._plans.setdefault((name, method), deque()).extend(faults)

    def set_default(self, name: str, fault: Fault | None) -> None:
        """Apply `fault` to every request of `name` with no planned fault; None clears it."""
        with self._lock:
            if fault is None:
                self._defaults.pop(name, None)
            else:
                self._defaults[name] = fault

    # records

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request since start or the last reset_stats, in arrival order."""
        with self._lock:
            return [record.freeze() for record in self._records]

    def requests_for(self, name: str) -> list[RequestRecord]:
        """The requests whose path maps to `name`, in arrival order."""
        with self._lock:
            return [record.freeze() for record in self._records if record.name == name]

    def connections(self) -> int:
        """How many TCP connections carried the requests recorded since start or the last
        reset_stats (told apart by the client's address and port)."""
        with self._lock:
            return len({r.peer for r in self._records})

    def bytes_served(self, name: str) -> int:
        """Bytes of `name`'s content handed to the transport so far, over all requests."""
        with self._lock:
            return self._served.get(name, 0)

    def ranges_served(self, name: str) -> list[tuple[int, int]]:
        """The [start, end) interval written by each request that carried file content."""
        with self._lock:
            return [r.served for r in self._records if r.name == name and r.served is not None]

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted (on both addresses) since start or the last reset_stats."""
        with self._lock:
            return self._accepts

    @property
    def tls_handshakes(self) -> int:
        """TLS handshakes begun since start or the last reset_stats (0 over plain HTTP)."""
        if self._ssl_context is None:
            return 0
        return self._ssl_context.session_stats()["accept"] - self._handshakes_before

    def reset_stats(self) -> None:
        """Forget all records and counters; responses still in flight stop counting."""
        with self._lock:
            self._accepts = 0
            if self._ssl_context is not None:
                self._handshakes_before = self._ssl_context.session_stats()["accept"]
            self._epoch += 1
            self._records.clear()
            self._served.clear()
            self._arrivals.clear()

    def wait_bytes(self, name: str, n: int, timeout: float = 30) -> None:
        """Block until bytes_served(name) >= n.

        Raises:
            TimeoutError: not reached within `timeout` seconds.
        """
        self._wait(lambda: self._served.get(name, 0) >= n, timeout, f"{n} bytes of {name!r}")

    async def wait_bytes_async(self, name: str, n: int, timeout: float = 30) -> None:
        """wait_bytes for async tests: waits without blocking the caller's event loop."""
        await self._wait_async(
            lambda: self._served.get(name, 0) >= n, timeout, f"{n} bytes of {name!r}"
        )

    def wait_requests(self, name: str, n: int, timeout: float = 30) -> None:
        """Block until `n` requests (any method) for `name` have arrived.

        Raises:
            TimeoutError: not reached within `timeout` seconds.
        """
        self._wait(lambda: self._arrivals.get(name, 0) >= n, timeout, f"{n} requests of {name!r}")

    async def wait_requests_async(self, name: str, n: int, timeout: float = 30) -> None:
        """wait_requests for async tests."""
        await self._wait_async(
            lambda: self._arrivals.get(name, 0) >= n, timeout, f"{n} requests of {name!r}"
        )

    def wait_idle(self, timeout: float = 30) -> None:
        """Block until every request that has arrived has been fully handled.

        A handler ends after its last byte is written (or the client vanished), so this is how
        a test knows a cut-off stalled or endless response has really stopped.

        Raises:
            TimeoutError: some handler is still running after `timeout` seconds.
        """
        self._wait(self._idle_locked, timeout, "all requests to finish")

    async def wait_idle_async(self, timeout: float = 30) -> None:
        """wait_idle for async tests."""
        await self._wait_async(self._idle_locked, timeout, "all requests to finish")

    def _idle_locked(self) -> bool:
        return self._in_flight == 0

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"origin: waited {timeout}s for {what}")

    async def _wait_async(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter = (predicate, loop, future)
        with self._lock:
            if predicate():
                return
            self._async_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            raise TimeoutError(f"origin: waited {timeout}s for {what}") from None
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._async_waiters.remove(waiter)

    def _notify_locked(self) -> None:
        self._cond.notify_all()
        for waiter in list(self._async_waiters):
            predicate, loop, future = waiter
            if predicate():
                self._async_waiters.remove(waiter)
                with contextlib.suppress(RuntimeError):  # the waiter's loop is closed
                    loop.call_soon_threadsafe(_resolve, future)

    # server internals (all below run on the origin's loop)

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _start_serving(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a handler whose client vanished (stalled, endless) ends at once.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        self._runner = runner
        handler = runner.server
        assert handler is not None

        def accept() -> asyncio.BaseProtocol:
            with self._lock:
                self._accepts += 1
            return handler()

        loop = asyncio.get_running_loop()
        urls = []
        for host in ("127.0.0.1", "127.0.0.2"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, 0))
            # A server of our own rather than aiohttp's site, to count the accepts.
            self._servers.append(
                await loop.create_server(accept, sock=sock, ssl=self._ssl_context, backlog=128)
            )
            scheme = "https" if self._ssl_context is not None else "http"
            urls.append(f"{scheme}://{host}:{sock.getsockname()[1]}")
        self._base_url, self._alt_base_url = urls

    async def _stop_serving(self) -> None:
        runner = self._runner
        if runner is None:
            return
        for server in self._servers:
            server.close()
        self._servers.clear()
        # Abort rather than close: a graceful close waits to flush what an unread client
        # (an endless response, say) will never take, and would leave the socket open.
        for transport in list(self._transports):
            # A transport that finished closing by itself once its buffer drained has dropped
            # its loop without counting the loss (CPython's selector transport), and abort()
            # then raises AttributeError; there is nothing left to cut.
            with contextlib.suppress(AttributeError):
                transport.abort()
        tasks = list(self._handler_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        await runner.cleanup()
        self._runner = None

    def _admit(self, request: web.BaseRequest) -> _Admitted:
        """Record the request and decide, atomically, which fault and version it gets."""
        name = request.path[1:]
        method = request.method
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        peername = transport.get_extra_info("peername") if transport is not None else None
        with self._lock:
            queue = self._plans.get((name, method))
            fault = queue.popleft() if queue else self._defaults.get(name)
            entry = self._files.get(name)
            version = entry.version if entry is not None else None
            if entry is not None and method == "GET" and entry.pending is not None:
                left, content = entry.pending
                entry.pending = (left - 1, content)
                if left <= 1:
                    self._apply_pending_locked(entry)
            record = _Record(
                method=method,
                path=request.path,
                name=name,
                host=request.headers.get("Host", ""),
                local_addr=sockname[0] if sockname else "",
                headers=request.headers,
                fault=fault,
                epoch=self._epoch,
                peer=f"{peername[0]}:{peername[1]}" if peername else "",
            )
            self._records.append(record)
            self._in_flight += 1
            self._arrivals[name] = self._arrivals.get(name, 0) + 1
            self._notify_locked()
            return _Admitted(record, fault, entry, version, self._redirects.get(name))

    def _apply_pending_locked(self, entry: _File) -> None:
        assert entry.pending is not None
        content = entry.pending[1]
        entry.pending = None
        entry.generation += 1
        entry.version = _make_version(content, "auto", entry.weak_etag, "auto", entry.generation)

    def _update_locked(self, record: _Record, **changes: object) -> None:
        for key, value in changes.items():
            setattr(record, key, value)
        self._notify_locked()

    def _account(self, record: _Record, sent: int, file_pos: int | None) -> None:
        """Note `sent` wire bytes written; `file_pos` is how far into the file they reach."""
        with self._lock:
            record.bytes_sent = sent
            if file_pos is not None and record.served is not None:
                start, end = record.served
                record.served = (start, file_pos)
                if record.epoch == self._epoch:
                    self._served[record.name] = self._served.get(record.name, 0) + file_pos - end
            self._notify_locked()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._handler_tasks.add(task)
        if request.transport is not None:
            self._transports.add(request.transport)
        admitted = self._admit(request)
        try:
            return await self._respond(request, admitted)
        finally:
            self._handler_tasks.discard(task)
            with self._lock:
                self._in_flight -= 1
                self._update_locked(admitted.record, done=True)

    async def _respond(self, request: web.Request, admitted: _Admitted) -> web.StreamResponse:
        fault, record = admitted.fault, admitted.record
        if fault is not None and fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if request.method not in ("GET", "HEAD"):
            return self._small_response(request, record, 405, {"Allow": "GET, HEAD"})
        if admitted.redirect is not None:
            target, status = admitted.redirect
            return self._small_response(request, record, status, {"Location": target})
        extra = dict(fault.headers) if fault is not None else {}
        if fault is not None and fault.status is not None:
            return self._small_response(request, record, fault.status, extra)
        if admitted.file is None or admitted.version is None:
            return self._small_response(request, record, 404, extra)
        return await self._send_file(request, admitted.file, admitted.version, fault, record)

    def _small_response(
        self, request: web.Request, record: _Record, status: int, headers: dict[str, str]
    ) -> web.Response:
        body = b"" if status in (204, 304) else f"test origin: {status}\n".encode()
        with self._lock:
            self._update_locked(
                record, status=status, bytes_sent=0 if request.method == "HEAD" else len(body)
            )
        return web.Response(status=status, body=body or None, headers=headers)

    async def _send_file(
        self,
        request: web.Request,
        entry: _File,
        version: _Version,
        fault: Fault | None,
        record: _Record,
    ) -> web.StreamResponse:
        fault = fault or Fault()
        headers = _file_headers(entry, version)
        try:
            status, body = _choose_body(request, entry, version, fault, headers)
        except _Unsatisfiable:
            headers["Content-Range"] = f"bytes */{len(version.view)}"
            headers.update(fault.headers)
            return self._small_response(request, record, 416, headers)
        headers.update(fault.headers)

        response = web.StreamResponse(status=status, headers=headers)
        if body.length is None:
            response.enable_chunked_encoding()
        else:
            response.content_length = body.length
        if fault.extra_body or fault.truncate_after is not None:
            response.force_close()  # the connection must end with the lie, not be reused
        with self._lock:  # before prepare(), so no client sees headers the record lacks
            served = None if request.method == "HEAD" or body.length is None else body.file_pos(0)
            self._update_locked(
                record, status=status, served=None if served is None else (served, served)
            )
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        with contextlib.suppress(ConnectionError):  # the client left; aiohttp tidies up
            await self._stream(request, response, body, fault, record)
        return response

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        body: _Body,
        fault: Fault,
        record: _Record,
    ) -> None:
        """Write the body piecewise so faults and the rate cap land on exact byte offsets."""
        loop = asyncio.get_running_loop()
        transport = request.transport
        end = body.length
        for cut in (fault.drop_after, fault.truncate_after):
            if cut is not None:
                end = cut if end is None else min(end, cut)
        stall_at = fault.stall_after
        if stall_at is not None and end is not None:
            stall_at = min(stall_at, end)
        rate = fault.rate_bytes_per_s
        chunk = CHUNK_BYTES if rate is None else max(1, min(CHUNK_BYTES, rate // 20))
        sent, started = 0, loop.time()
        while True:
            if stall_at is not None and sent >= stall_at:
                await asyncio.sleep(fault.stall_s)
                stall_at = None
            if end is not None and sent >= end:
                break
            limit = sent + chunk
            for stop in (end, stall_at):
                if stop is not None:
                    limit = min(limit, stop)
            piece = body.piece(sent, limit - sent)
            if rate is not None:
                await asyncio.sleep(max(0.0, started + (sent + len(piece)) / rate - loop.time()))
            if transport is None or transport.is_closing():
                return  # the client left
            # Count first: write() hands the piece to the transport before it can suspend, so
            # the counters never lag behind what a client (in another thread) has received.
            sent += len(piece)
            self._account(record, sent, body.file_pos(sent))
            await response.write(piece)
        if fault.drop_after is not None:
            await self._reset_connection(request)
            return
        remaining = fault.extra_body
        while remaining > 0 and transport is not None and not transport.is_closing():
            piece = _GARBAGE[: min(remaining, len(_GARBAGE))]
            remaining -= len(piece)
            sent += len(piece)
            self._account(record, sent, None)
            transport.write(piece)  # straight to the transport: aiohttp clips at Content-Length

    @staticmethod
    async def _reset_connection(request: web.Request) -> None:
        """Abort with RST, but only once the peer holds every byte already written.

        An RST discards whatever the kernel has not sent yet, so aborting at once would cut
        the body short by an unpredictable amount. Linux keeps received data readable after an
        RST, so waiting for the acknowledgement makes `drop_after` exact. There is no event for
        "all acknowledged", hence the short, bounded poll.
        """
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + 2.0, 0.0005
        while not transport.is_closing() and loop.time() < deadline:
            if transport.get_write_buffer_size() == 0 and _unacked_bytes(sock) == 0:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)
        if transport.is_closing():
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def origin_fixture() -> Iterator[Origin]:
    """Run an Origin for one test: `@pytest.fixture def origin(): yield from origin_fixture()`."""
    with Origin() as origin:
        yield origin
