"""Tests of the fault-injecting test origin: every other engine test trusts what it does.

Each feature is checked with a plain client (raw sockets, urllib or aiohttp) so the origin's
claims about bytes, statuses and connection endings are seen from the wire, not from inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import pytest

from origin import Fault, Origin, origin_fixture

DATA = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB, incompressible, position-dependent
SIZE = len(DATA)


@pytest.fixture
def origin(caplog: pytest.LogCaptureFixture) -> Iterator[Origin]:
    """An origin serving DATA as "a.bin"; fails the test if aiohttp logged an error."""
    for served in origin_fixture():
        served.add_file("a.bin", DATA, content_disposition='attachment; filename="a.bin"')
        yield served
    errors = [r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= 40]
    assert not errors, [r.getMessage() for r in errors]


@dataclass(frozen=True)
class Raw:
    """One HTTP exchange as seen on the socket, including how the connection ended."""

    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes
    end: str  # "eof", "reset" or "timeout"


def read_to_end(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the peer sends, and whether it ended with "eof", "reset" or "timeout"."""
    received = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            received += chunk
    except ConnectionResetError:
        return bytes(received), "reset"
    except TimeoutError:
        return bytes(received), "timeout"
    return bytes(received), "eof"


def exchange(
    url: str, headers: dict[str, str] | None = None, *, method: str = "GET", timeout: float = 5
) -> Raw:
    """Send one request on a fresh connection and read until EOF, reset or `timeout` of quiet."""
    parts = urlsplit(url)
    lines = [f"{method} {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        received, end = read_to_end(sock)
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    return Raw(int(status_line.split()[1]), parsed, body, end)


def get(origin: Origin, name: str = "a.bin", **headers: str) -> Raw:
    return exchange(origin.url(name), {k.replace("_", "-"): v for k, v in headers.items()})


# plain serving, ranges, validators


def test_get_and_head_send_the_file_and_its_validators(origin: Origin) -> None:
    full = get(origin)
    head = exchange(origin.url("a.bin"), method="HEAD")

    assert (full.status, full.body, full.end) == (200, DATA, "eof")
    assert full.headers["content-length"] == str(SIZE)
    assert full.headers["accept-ranges"] == "bytes"
    assert full.headers["etag"] == '"' + hashlib.sha256(DATA).hexdigest()[:16] + '"'
    assert full.headers["last-modified"].endswith(" GMT")
    assert full.headers["content-disposition"] == 'attachment; filename="a.bin"'
    assert full.headers["content-type"] == "application/octet-stream"
    assert head.status == 200 and head.body == b""
    for key in ("content-length", "etag", "last-modified", "accept-ranges"):
        assert head.headers[key] == full.headers[key]


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-9", 0, 10),
        ("bytes=1000-", 1000, SIZE),
        ("bytes=-5", SIZE - 5, SIZE),
        ("bytes=10-99999999", 10, SIZE),
        ("bytes=-99999999", 0, SIZE),
        (f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE),
    ],
)
def test_single_ranges_answer_206(origin: Origin, range_header: str, start: int, end: int) -> None:
    raw = get(origin, Range=range_header)

    assert (raw.status, raw.body) == (206, DATA[start:end])
    assert raw.headers["content-range"] == f"bytes {start}-{end - 1}/{SIZE}"
    assert raw.headers["content-length"] == str(end - start)
    origin.wait_idle(5)
    assert origin.ranges_served("a.bin") == [(start, end)]


@pytest.mark.parametrize("range_header", ["bytes=9-5", "bytes=0-1,5-6", "items=0-1", "bytes=-"])
def test_ranges_it_does_not_understand_are_ignored(origin: Origin, range_header: str) -> None:
    raw = get(origin, Range=range_header)

    assert (raw.status, raw.body) == (200, DATA)


@pytest.mark.parametrize(
    ("size", "range_header"),
    [
        (SIZE, f"bytes={SIZE}-"),
        (SIZE, f"bytes={SIZE}-{SIZE + 10}"),
        (SIZE, "bytes=-0"),
        (0, "bytes=0-"),
    ],
)
def test_unsatisfiable_range_answers_416(origin: Origin, size: int, range_header: str) -> None:
    origin.add_file("f", DATA[:size])

    raw = get(origin, "f", Range=range_header)

    assert raw.status == 416
    assert raw.headers["content-range"] == f"bytes */{size}"
    assert origin.bytes_served("f") == 0 and origin.ranges_served("f") == []


@pytest.mark.parametrize(
    ("if_range", "status"),
    [
        ("{etag}", 206),
        ('"another"', 200),
        ("W/{etag}", 200),  # If-Range needs a strong match
        ("{last_modified}", 206),
        ("Tue, 02 Jan 2024 00:00:00 GMT", 200),
        ("not a validator", 200),
    ],
)
def test_if_range_ignores_range_unless_the_version_matches(
    origin: Origin, if_range: str, status: int
) -> None:
    head = exchange(origin.url("a.bin"), method="HEAD").headers
    value = if_range.format(etag=head["etag"], last_modified=head["last-modified"])

    raw = get(origin, Range="bytes=100-199", If_Range=value)

    assert raw.status == status
    assert raw.body == (DATA[100:200] if status == 206 else DATA)


def test_weak_or_missing_validators_never_satisfy_if_range(origin: Origin) -> None:
    origin.add_file("weak", DATA, weak_etag=True)
    origin.add_file("bare", DATA, etag=None, last_modified=None)
    weak_etag = exchange(origin.url("weak"), method="HEAD").headers["etag"]
    bare = exchange(origin.url("bare"), method="HEAD").headers

    assert weak_etag.startswith('W/"')
    assert "etag" not in bare and "last-modified" not in bare
    assert get(origin, "weak", Range="bytes=0-0", If_Range=weak_etag).status == 200
    assert get(origin, "bare", Range="bytes=0-0", If_Range='"x"').status == 200
    assert get(origin, "bare", Range="bytes=0-0").status == 206


def test_explicit_etag_is_quoted(origin: Origin) -> None:
    origin.add_file("f", b"abc", etag="v1", last_modified="Sun, 07 Jul 2024 10:00:00 GMT")

    headers = get(origin, "f").headers

    assert headers["etag"] == '"v1"'
    assert headers["last-modified"] == "Sun, 07 Jul 2024 10:00:00 GMT"


def test_file_without_range_support_always_answers_200(origin: Origin) -> None:
    origin.add_file("f", DATA, accept_ranges=False)

    raw = get(origin, "f", Range="bytes=0-9")

    assert (raw.status, raw.body) == (200, DATA)
    assert "accept-ranges" not in raw.headers


def test_unknown_names_404_and_other_methods_405(origin: Origin) -> None:
    assert get(origin, "missing").status == 404
    assert exchange(origin.url("a.bin"), method="POST").status == 405


def test_names_with_slashes_and_spaces(origin: Origin) -> None:
    origin.add_file("org/model/a b.bin", b"xyz")

    assert "a%20b.bin" in origin.url("org/model/a b.bin")
    assert get(origin, "org/model/a b.bin").body == b"xyz"
    assert [r.path for r in origin.requests_for("org/model/a b.bin")] == ["/org/model/a b.bin"]


# faults


def test_status_faults_are_consumed_in_order_then_the_file_is_served(origin: Origin) -> None:
    origin.plan("a.bin", [Fault(status=503, headers={"Retry-After": "1"}), Fault(status=429)])

    first, second, third = get(origin), get(origin), get(origin)

    assert (first.status, first.headers["retry-after"]) == (503, "1")
    assert second.status == 429 and len(second.body) < 100
    assert (third.status, third.body) == (200, DATA)
    origin.wait_idle(5)
    assert [r.fault and r.fault.status for r in origin.requests_for("a.bin")] == [503, 429, None]
    assert origin.ranges_served("a.bin") == [(0, SIZE)]


def test_get_plans_skip_head_and_head_has_its_own_queue(origin: Origin) -> None:
    origin.plan("a.bin", [Fault(status=500)])
    origin.plan("a.bin", [Fault(status=404)], method="HEAD")

    assert exchange(origin.url("a.bin"), method="HEAD").status == 404
    assert exchange(origin.url("a.bin"), method="HEAD").status == 200
    assert get(origin).status == 500
    assert get(origin).status == 200


def test_default_fault_applies_when_nothing_is_planned(origin: Origin) -> None:
    origin.set_default("a.bin", Fault(status=503))
    origin.plan("a.bin", [Fault(status=429)])

    assert [get(origin).status for _ in range(3)] == [429, 503, 503]
    origin.set_default("a.bin", None)
    assert get(origin).status == 200


def test_drop_after_sends_exactly_n_bytes_then_resets(origin: Origin) -> None:
    origin.plan("a.bin", [Fault(drop_after=700_001), Fault(drop_after=0)])

    dropped = get(origin)
    headers_only = get(origin, Range="bytes=5-")

    assert (dropped.status, dropped.end, dropped.body) == (200, "reset", DATA[:700_001])
    assert dropped.headers["content-length"] == str(SIZE)
    assert (headers_only.status, headers_only.end, headers_only.body) == (206, "reset", b"")
    origin.wait_idle(5)
    assert origin.ranges_served("a.bin") == [(0, 700_001), (5, 5)]
    assert origin.bytes_served("a.bin") == 700_001


async def test_drop_after_surfaces_as_a_payload_error_in_aiohttp(origin: Origin) -> None:
    origin.plan("a.bin", [Fault(drop_after=1000)])

    async with aiohttp.ClientSession() as session, session.get(origin.url("a.bin")) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


def test_truncate_after_closes_cleanly_short_of_content_length(origin: Origin) -> None:
    origin.plan("a.bin", [Fault(truncate_after=5000)])

    raw = get(origin, Range="bytes=100-")

    assert (raw.status, raw.end, raw.body) == (206, "eof", DATA[100:5100])
    assert raw.headers["content-length"] == str(SIZE - 100)


def test_stall_after_sends_n_bytes_then_goes_quiet(origin: Origin) -> None:
    origin.plan("a.bin", [Fault(stall_after=1000)])
    parts = urlsplit(origin.base_url)

    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(b"GET /a.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        origin.wait_bytes("a.bin", 1000, timeout=5)
        sock.settimeout(0.3)  # how long "quiet" must last to count as a stall here
        received, end = read_to_end(sock)

    assert end == "timeout" and received.endswith(b"\r\n\r\n" + DATA[:1000])
    origin.wait_idle(5)  # the client left, so the stalled handler must end too
    assert origin.requests_for("a.bin")[0].done


def test_short_stall_then_the_rest_follows(origin: Origin) -> None:
    origin.plan("a.bin", [Fault(stall_after=1000, stall_s=0.2)])

    started = time.monotonic()
    raw = get(origin)

    assert time.monotonic() - started >= 0.2
    assert (raw.status, raw.end, raw.body) == (200, "eof", DATA)


def test_ignore_range_answers_200_with_everything(origin: Origin) -> None:
    origin.plan("a.bin", [Fault(ignore_range=True)])

    raw = get(origin, Range="bytes=10-19")

    assert (raw.status, raw.body) == (200, DATA)
    assert "content-range" not in raw.headers
    origin.wait_idle(5)
    assert origin.ranges_served("a.bin") == [(0, SIZE)]


def test_wrong_content_range_shifts_the_header_not_the_bytes(origin: Origin) -> None:
    origin.plan("a.bin", [Fault(wrong_content_range=True)])

    raw = get(origin, Range="bytes=2048-3071")

    assert (raw.status, raw.body) == (206, DATA[2048:3072])
    assert raw.headers["content-range"] == f"bytes 3072-4095/{SIZE}"


def test_rate_cap_slows_each_response(origin: Origin) -> None:
    origin.set_default("a.bin", Fault(rate_bytes_per_s=400_000))

    started = time.monotonic()
    raw = get(origin, Range="bytes=0-99999")

    assert raw.body == DATA[:100_000]
    assert 0.25 <= time.monotonic() - started < 3


def test_delay_holds_back_the_headers(origin: Origin) -> None:
    origin.plan("a.bin", [Fault(delay_s=0.2, status=503)])

    started = time.monotonic()
    raw = get(origin)

    assert raw.status == 503 and time.monotonic() - started >= 0.2


def test_gzip_sends_the_compressed_file_and_counts_file_bytes(origin: Origin) -> None:
    text = b"compressible line of text\n" * 20_000  # several 128 KiB blocks
    origin.add_file("t.txt", text)
    origin.plan("t.txt", [Fault(gzip=True)])

    raw = get(origin, "t.txt", Range="bytes=0-9")

    assert (raw.status, raw.headers["content-encoding"]) == (200, "gzip")
    assert int(raw.headers["content-length"]) == len(raw.body) < len(text)
    assert gzip.decompress(raw.body) == text
    origin.wait_idle(5)
    assert origin.ranges_served("t.txt") == [(0, len(text))]
    assert origin.requests_for("t.txt")[0].bytes_sent == len(raw.body)


def test_extra_body_sends_garbage_past_content_length(origin: Origin) -> None:
    origin.plan("a.bin", [Fault(extra_body=100)])

    raw = get(origin, Range="bytes=0-9")

    assert raw.headers["content-length"] == "10"
    assert raw.body[:10] == DATA[:10] and len(raw.body) == 110 and raw.end == "eof"
    origin.wait_idle(5)
    assert origin.bytes_served("a.bin") == 10
    assert origin.requests_for("a.bin")[0].bytes_sent == 110


async def test_endless_streams_chunked_until_the_client_leaves(origin: Origin) -> None:
    origin.plan("a.bin", [Fault(endless=True)])

    async with aiohttp.ClientSession() as session:
        async with session.get(origin.url("a.bin")) as resp:
            assert "Content-Length" not in resp.headers
            assert resp.headers["Transfer-Encoding"] == "chunked"
            received = 0
            while received < 3 * SIZE:
                received += len(await resp.content.readany())
        await origin.wait_idle_async(5)

    record = origin.requests_for("a.bin")[0]
    assert record.done and record.bytes_sent >= 3 * SIZE
    assert record.served is None and origin.bytes_served("a.bin") == 0


def test_fault_validation_names_the_field() -> None:
    for kwargs, field_name in [
        ({"status": 99}, "status"),
        ({"drop_after": -1}, "drop_after"),
        ({"rate_bytes_per_s": 0}, "rate_bytes_per_s"),
        ({"delay_s": -1}, "delay_s"),
        ({"drop_after": 1, "truncate_after": 1}, "drop_after"),
    ]:
        with pytest.raises(ValueError, match=field_name):
            Fault(**kwargs)  # type: ignore[arg-type]


# content changes


def test_change_content_after_n_gets_switches_version(origin: Origin) -> None:
    new = DATA[::-1]
    origin.change_content_after("a.bin", 2, new)

    exchange(origin.url("a.bin"), method="HEAD")  # HEAD does not count
    first, second, third = get(origin), get(origin), get(origin)

    assert first.body == second.body == DATA
    assert third.body == new
    assert third.headers["etag"] != first.headers["etag"]
    assert third.headers["last-modified"] != first.headers["last-modified"]


def test_set_content_makes_an_old_if_range_fetch_the_new_file(origin: Origin) -> None:
    old_etag = get(origin).headers["etag"]
    origin.set_content("a.bin", b"new version")

    raw = get(origin, Range="bytes=5-", If_Range=old_etag)

    assert (raw.status, raw.body) == (200, b"new version")
    assert raw.headers["etag"] != old_etag


# redirects and the second host


def test_redirect_to_the_other_loopback_host(origin: Origin) -> None:
    origin.add_redirect("r", origin.url("a.bin", alt=True))

    with urllib.request.urlopen(origin.url("r"), timeout=5) as resp:
        body = resp.read()

    assert body == DATA
    origin.wait_idle(5)
    first, second = origin.requests
    assert (first.path, first.status, first.local_addr) == ("/r", 302, "127.0.0.1")
    assert (second.path, second.status, second.local_addr) == ("/a.bin", 200, "127.0.0.2")
    assert second.host == urlsplit(origin.alt_base_url).netloc


def test_redirect_status_and_targets_stay_on_loopback(origin: Origin) -> None:
    origin.add_redirect("r", "/a.bin", status=307)

    raw = exchange(origin.url("r"), method="HEAD")

    assert (raw.status, raw.headers["location"]) == (307, "/a.bin")
    for target in ("http://example.com/a", "https://10.0.0.1/a"):
        with pytest.raises(ValueError, match="loopback"):
            origin.add_redirect("x", target)


# records and waits


def test_records_counters_and_reset(origin: Origin) -> None:
    get(origin, Range="bytes=0-99")
    get(origin, Range="bytes=100-199", X_Test="yes")
    get(origin, "missing")
    origin.wait_idle(5)

    records = origin.requests_for("a.bin")
    assert [r.range_header for r in records] == ["bytes=0-99", "bytes=100-199"]
    assert records[1].headers["x-test"] == "yes" and records[1].status == 206
    assert all(r.done and r.method == "GET" for r in records)
    assert origin.bytes_served("a.bin") == 200
    assert origin.ranges_served("a.bin") == [(0, 100), (100, 200)]
    assert len(origin.requests) == 3
    origin.wait_requests("a.bin", 2, timeout=1)

    origin.reset_stats()

    assert origin.requests == [] and origin.bytes_served("a.bin") == 0
    with pytest.raises(TimeoutError):
        origin.wait_requests("a.bin", 1, timeout=0.05)


def test_wait_bytes_follows_a_response_in_flight(origin: Origin) -> None:
    origin.plan("a.bin", [Fault(stall_after=300_000)])
    with socket.create_connection(("127.0.0.1", urlsplit(origin.base_url).port), timeout=5) as s:
        s.sendall(b"GET /a.bin HTTP/1.1\r\nHost: x\r\n\r\n")

        origin.wait_bytes("a.bin", 300_000, timeout=5)

        assert origin.bytes_served("a.bin") == 300_000
        assert not origin.requests_for("a.bin")[0].done
        with pytest.raises(TimeoutError, match=r"a\.bin"):
            origin.wait_bytes("a.bin", 300_001, timeout=0.05)


async def test_async_waits_leave_the_callers_loop_free(origin: Origin) -> None:
    async def fetch() -> bytes:
        async with aiohttp.ClientSession() as session, session.get(origin.url("a.bin")) as resp:
            return await resp.read()

    # The request is only made if the waits below let this loop run the fetch task.
    task = asyncio.create_task(fetch())
    await origin.wait_requests_async("a.bin", 1, timeout=5)
    await origin.wait_bytes_async("a.bin", SIZE, timeout=5)

    assert await task == DATA
    with pytest.raises(TimeoutError):
        await origin.wait_bytes_async("a.bin", SIZE + 1, timeout=0.05)


def test_a_subprocess_can_download_from_it(origin: Origin) -> None:
    code = "import sys,urllib.request as u; sys.stdout.buffer.write(u.urlopen(sys.argv[1]).read())"

    result = subprocess.run(
        [sys.executable, "-c", code, origin.url("a.bin")], capture_output=True, timeout=30
    )

    assert result.returncode == 0 and result.stdout == DATA


# lifecycle


def test_stop_is_prompt_with_stalled_and_endless_responses_in_flight() -> None:
    with contextlib.ExitStack() as stack:
        origin = stack.enter_context(Origin())
        origin.add_file("a.bin", DATA)
        origin.plan("a.bin", [Fault(stall_after=10), Fault(endless=True)])
        sockets = []
        for n, base_url in enumerate((origin.base_url, origin.alt_base_url), start=1):
            parts = urlsplit(base_url)
            sock = stack.enter_context(socket.create_connection((parts.hostname, parts.port), 5))
            sock.sendall(b"GET /a.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            origin.wait_requests("a.bin", n, timeout=5)
            sockets.append(sock)
        origin.wait_bytes("a.bin", 10, timeout=5)  # the stall has begun; endless is unread

        started = time.monotonic()
        origin.stop()

        assert time.monotonic() - started < 5
        for sock in sockets:  # both connections were ended, not left hanging
            assert read_to_end(sock)[1] in ("eof", "reset")


def test_stop_is_idempotent_and_works_unstarted() -> None:
    Origin().stop()
    origin = Origin().start()
    origin.stop()
    origin.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(origin.url("a.bin"), timeout=1)


def test_public_methods_are_safe_from_many_threads(origin: Origin) -> None:
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            origin.add_file(f"f{i}", DATA[: 1000 * (i + 1)])
            assert get(origin, f"f{i}").body == DATA[: 1000 * (i + 1)]
            origin.wait_bytes(f"f{i}", 1000 * (i + 1), timeout=5)
        except Exception as exc:  # reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert not errors
    assert len(origin.requests) == 8


def test_http_error_statuses_reach_urllib(origin: Origin) -> None:
    origin.plan("a.bin", [Fault(status=404)])

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(origin.url("a.bin"), timeout=5)

    assert info.value.code == 404


def test_tls_origin_counts_accepts_and_handshakes() -> None:
    """Two requests on one kept-alive HTTPS connection are one accept and one handshake; a
    second connection is one more of each. The client verifies against the origin's CA."""
    import http.client

    with Origin(tls=True) as served:
        assert served.tls is not None
        served.add_file("a.bin", DATA)
        host, port = urlsplit(served.base_url).hostname, urlsplit(served.base_url).port
        assert served.base_url.startswith("https://")
        ctx = served.tls.client_context()
        for expected in (1, 2):
            conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
            try:
                for _ in range(2):
                    conn.request("GET", "/a.bin")
                    assert conn.getresponse().read() == DATA
            finally:
                conn.close()
            assert served.connections_accepted == expected
            assert served.tls_handshakes == expected
        served.reset_stats()
        assert (served.connections_accepted, served.tls_handshakes) == (0, 0)


def test_plain_origin_counts_accepts(origin: Origin) -> None:
    for expected in (1, 2):
        with socket.create_connection(("127.0.0.1", urlsplit(origin.base_url).port)) as sock:
            sock.sendall(b"GET /a.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while sock.recv(65536):
                pass
        assert origin.connections_accepted == expected
    assert origin.tls_handshakes == 0
