"""SocketBody, the blocking receiver of plain-HTTP bodies, on a local socket pair.

Each receive runs in a worker thread in real use; here a thread stands in for the pool. The
engine relies on four answers: a full block, "nothing yet" after the poll interval, the end of
the stream, and a prompt return when the event loop aborts the body.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from modelhaul.errors import StallTimeout
from modelhaul.transport import SocketBody


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        yield a, b


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as ex:
        yield ex


def test_a_receive_returns_once_the_whole_block_arrived(
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor
) -> None:
    ours, peer = pair
    body = SocketBody(ours, remaining=10_000, block_bytes=4096, poll_s=5.0)
    job = pool.submit(body.recv_block, 4096)
    # Sent in pieces: MSG_WAITALL still hands back one full block.
    for i in range(4):
        peer.sendall(bytes([i]) * 1024)
    assert job.result(timeout=10) == 4096
    assert bytes(body.view[:4096]) == b"".join(bytes([i]) * 1024 for i in range(4))
    assert body.remaining == 10_000 - 4096


def test_a_receive_never_reads_past_the_body(
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor
) -> None:
    ours, peer = pair
    body = SocketBody(ours, remaining=100, block_bytes=4096, poll_s=5.0)
    peer.sendall(b"x" * 100 + b"NEXT")
    assert pool.submit(body.recv_block, 4096).result(timeout=10) == 100
    # The bytes after the body are still in the socket.
    ours.setblocking(False)
    assert ours.recv(16) == b"NEXT"


def test_nothing_within_the_poll_interval_is_zero_and_some_is_partial(
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor
) -> None:
    ours, peer = pair
    body = SocketBody(ours, remaining=1 << 20, block_bytes=1 << 20, poll_s=0.2)
    assert pool.submit(body.recv_block, 1 << 20).result(timeout=10) == 0
    peer.sendall(b"abc")
    # Less than a block: the receive gives what it has once the interval passed.
    assert pool.submit(body.recv_block, 1 << 20).result(timeout=10) == 3
    assert bytes(body.view[:3]) == b"abc"


def test_the_end_of_the_stream_is_minus_one(
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor
) -> None:
    ours, peer = pair
    body = SocketBody(ours, remaining=1000, block_bytes=4096, poll_s=5.0)
    peer.shutdown(socket.SHUT_WR)
    assert pool.submit(body.recv_block, 4096).result(timeout=10) == -1


def test_abort_wakes_a_blocked_receive(
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor
) -> None:
    ours, _peer = pair
    # A poll interval far longer than the test's bound: only abort() can end the wait.
    body = SocketBody(ours, remaining=1 << 20, block_bytes=1 << 20, poll_s=60.0)
    started = threading.Event()

    def receive() -> int:
        started.set()
        return body.recv_block(1 << 20)

    job = pool.submit(receive)
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
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor
) -> None:
    ours, peer = pair
    body = SocketBody(ours, remaining=1 << 20, block_bytes=1 << 20, poll_s=60.0)
    job = pool.submit(body.recv_block, 8)
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
    assert body.recv_block(8) == -1


def test_nothing_for_the_stall_timeout_is_a_stall(
    pair: tuple[socket.socket, socket.socket], pool: ThreadPoolExecutor
) -> None:
    ours, _peer = pair
    body = SocketBody(
        ours, remaining=1 << 20, block_bytes=1 << 20, poll_s=0.1, stall_s=0.3, url="http://h/x"
    )
    empty = 0
    with pytest.raises(StallTimeout, match="no data from h"):
        for _ in range(200):  # bounded: the stall must come within 200 polls
            assert pool.submit(body.recv_block, 1 << 20).result(timeout=10) == 0
            empty += 1
    assert empty >= 2  # an empty poll alone is not yet a stall
