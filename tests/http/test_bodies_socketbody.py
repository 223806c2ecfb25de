"""SocketBody, the blocking receiver of plain-HTTP bodies, on a loopback TCP pair.

Each receive runs in a worker thread in real use; here a thread stands in for the pool. The
engine relies on four answers: a full block, "nothing yet" after the poll interval, the end of
the stream, and a prompt return when the event loop aborts the body. Both ways of receiving
give them: through a pipe with splice (Linux), and into the body's own buffer.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from modelhaul.errors import StallTimeout
from modelhaul.http.bodies import SocketBody

needs_splice = pytest.mark.skipif(not hasattr(os, "splice"), reason="no splice on this system")


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    with a, b:
        yield a, b


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as ex:
        yield ex


@pytest.fixture(params=["pipe", "buffer"])
def mode(request: pytest.FixtureRequest) -> str:
    if request.param == "pipe" and not hasattr(os, "splice"):
        pytest.skip("no splice on this system")
    return str(request.param)


def make(sock: socket.socket, mode: str, **kwargs: object) -> SocketBody:
    body = SocketBody(sock, use_pipe=mode == "pipe", **kwargs)  # type: ignore[arg-type]
    assert (body.pipe_fd is not None) == (mode == "pipe")
    return body


def receive(body: SocketBody, want: int) -> int:
    """One receive, as the engine's worker makes it."""
    return body.splice_block(want) if body.pipe_fd is not None else body.recv_block(want)


def taken(body: SocketBody, n: int) -> bytes:
    """The ``n`` bytes the last receive brought."""
    if body.pipe_fd is None:
        return bytes(body.view[:n])
    out = b""
    while len(out) < n:
        out += os.read(body.pipe_fd, n - len(out))
    return out


def test_a_receive_returns_once_the_whole_block_arrived(
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor, mode: str
) -> None:
    ours, peer = pair
    body = make(ours, mode, remaining=10_000, block_bytes=4096, poll_s=5.0)
    job = pool.submit(receive, body, 4096)
    # Sent in pieces: one receive still hands back the whole block.
    for i in range(4):
        peer.sendall(bytes([i]) * 1024)
    assert job.result(timeout=10) == 4096
    assert taken(body, 4096) == b"".join(bytes([i]) * 1024 for i in range(4))
    assert body.remaining == 10_000 - 4096


def test_a_receive_never_reads_past_the_body(
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor, mode: str
) -> None:
    ours, peer = pair
    body = make(ours, mode, remaining=100, block_bytes=4096, poll_s=5.0)
    peer.sendall(b"x" * 100 + b"NEXT")
    assert pool.submit(receive, body, 4096).result(timeout=10) == 100
    # The bytes after the body are still in the socket.
    ours.setblocking(False)
    assert ours.recv(16) == b"NEXT"


def test_nothing_within_the_poll_interval_is_zero_and_some_is_partial(
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor, mode: str
) -> None:
    ours, peer = pair
    body = make(ours, mode, remaining=1 << 20, block_bytes=1 << 20, poll_s=0.2)
    assert pool.submit(receive, body, 1 << 20).result(timeout=10) == 0
    peer.sendall(b"abc")
    # Less than a block: the receive gives what it has once the interval passed.
    assert pool.submit(receive, body, 1 << 20).result(timeout=10) == 3
    assert taken(body, 3) == b"abc"


def test_the_end_of_the_stream_is_minus_one(
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor, mode: str
) -> None:
    ours, peer = pair
    body = make(ours, mode, remaining=1000, block_bytes=4096, poll_s=5.0)
    peer.shutdown(socket.SHUT_WR)
    assert pool.submit(receive, body, 4096).result(timeout=10) == -1


def test_abort_wakes_a_blocked_receive(
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor, mode: str
) -> None:
    ours, _peer = pair
    # A poll interval far longer than the test's bound: only abort() can end the wait.
    body = make(ours, mode, remaining=1 << 20, block_bytes=1 << 20, poll_s=60.0)
    started = threading.Event()

    def blocked() -> int:
        started.set()
        return receive(body, 1 << 20)

    job = pool.submit(blocked)
    assert started.wait(10)
    for _ in range(100):  # until the thread is inside recv (abort before it is also fine)
        body.abort()
        if job.done():
            break
        try:
            job.result(timeout=0.1)
        except TimeoutError:
            continue
    assert job.result(timeout=10) == -1


def test_close_during_a_receive_is_deferred_to_the_receiving_thread(
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor, mode: str
) -> None:
    ours, peer = pair
    body = make(ours, mode, remaining=1 << 20, block_bytes=1 << 20, poll_s=60.0)
    job = pool.submit(receive, body, 8)
    for _ in range(10_000):  # bounded: until the thread has begun its receive
        if body._busy:
            break
        time.sleep(0.001)
    assert body._busy
    body.close()
    # The descriptor stays valid while the receive runs, so this data still arrives...
    peer.sendall(b"12345678")
    assert job.result(timeout=10) == 8
    # ...and the receiving thread released it on its way out.
    assert ours.fileno() == -1
    # A closed body ends every later receive at once.
    assert receive(body, 8) == -1


def test_nothing_for_the_stall_timeout_is_a_stall(
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor, mode: str
) -> None:
    ours, _peer = pair
    body = make(
        ours,
        mode,
        remaining=1 << 20,
        block_bytes=1 << 20,
        poll_s=0.1,
        stall_s=0.3,
        url="http://h/x",
    )
    empty = 0
    with pytest.raises(StallTimeout, match="no data from h"):
        for _ in range(200):  # bounded: the stall must come within 200 polls
            assert pool.submit(receive, body, 1 << 20).result(timeout=10) == 0
            empty += 1
    assert empty >= 2  # an empty poll alone is not yet a stall


@needs_splice
def test_a_pipe_takes_at_most_its_size_and_unwanted_bytes_can_be_dropped(
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor
) -> None:
    ours, peer = pair
    # The poll interval bounds the second receive, which waits for more after its 5000.
    body = make(ours, "pipe", remaining=8 << 20, block_bytes=4 << 20, poll_s=1.0)
    assert body.pipe_bytes >= 256 * 1024
    assert body.buffer_bytes == 0  # the bytes never enter the process
    data = os.urandom(body.pipe_bytes + 5000)
    sender = pool.submit(peer.sendall, data)
    assert receive(body, 4 << 20) == body.pipe_bytes
    body.discard(100)
    assert taken(body, body.pipe_bytes - 100) == data[100 : body.pipe_bytes]
    assert receive(body, 4 << 20) == 5000
    assert taken(body, 5000) == data[body.pipe_bytes :]
    sender.result(timeout=10)
    assert body.remaining == (8 << 20) - len(data)


@needs_splice
def test_a_full_pipe_ends_the_receive_instead_of_blocking_it(
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor
) -> None:
    ours, peer = pair
    # A poll interval far longer than the test's bound: waiting on the pipe would hang here.
    body = make(ours, "pipe", remaining=8 << 20, block_bytes=4 << 20, poll_s=60.0)
    assert body._pipe is not None
    # Network pieces smaller than a page fill the pipe's slots before its byte size; a pipe
    # with room for one page left stands in for that.
    os.write(body._pipe[1], b"\0" * (body.pipe_bytes - 4096))
    peer.sendall(os.urandom(100_000))
    n = pool.submit(receive, body, 4 << 20).result(timeout=10)
    assert 0 < n <= 4096
