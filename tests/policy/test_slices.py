"""policy.slices: jump consistent hash, slice owners and the per-download router."""

from __future__ import annotations

from collections import Counter

import pytest

from modelhaul.errors import NetworkError, StallTimeout
from modelhaul.policy.slices import (
    MAX_IDLE_CLOSES,
    SLICE_HEADER,
    DropReason,
    PeerDrop,
    Served,
    SliceRouter,
    owners,
    slice_span,
)

SHA = "ab" * 32
PEERS = [f"http://127.0.0.{i}:8471" for i in range(2, 10)]


def test_owners_are_every_peer_once_and_the_same_in_any_order() -> None:
    for i in range(50):
        order = owners(SHA, i, PEERS)
        assert sorted(order) == sorted(PEERS)
        assert owners(SHA, i, [*reversed(PEERS), PEERS[0] + "/"]) == order


def test_slices_spread_evenly_over_the_peers() -> None:
    counts = Counter(owners(SHA, i, PEERS)[0] for i in range(800))
    assert len(counts) == 8
    assert max(counts.values()) / min(counts.values()) < 1.5


def test_a_missing_peer_moves_only_its_own_slices_each_to_its_next_owner() -> None:
    """What keeps differing peer lists cheap: a node that lacks one peer (any, not only the
    last: jump hash would move most slices then) agrees on every other slice's owner."""
    for gone in (PEERS[0], PEERS[3], PEERS[-1]):
        rest = [p for p in PEERS if p != gone]
        for i in range(200):
            order = owners(SHA, i, PEERS)
            assert owners(SHA, i, rest) == tuple(p for p in order if p != gone)


def test_slice_span_clips_the_last_slice() -> None:
    assert slice_span(0, 10, 25) == (0, 10)
    assert slice_span(2, 10, 25) == (20, 25)


def _router(
    size: int = 100, peers: list[str] = PEERS, dropped: dict[str, PeerDrop] | None = None
) -> SliceRouter:
    return SliceRouter(
        sha256=SHA,
        size=size,
        slice_bytes=10,
        peer_urls={p: f"{p}/hf/file" for p in peers},
        upstream_url="http://hub/file",
        dropped=dropped,
    )


def test_router_leases_each_slice_from_its_owner_clipped_to_the_slice() -> None:
    r = _router()
    lease = r.lease_nowait(13, 100)
    owner = owners(SHA, 1, PEERS)[0]
    assert (lease.url, lease.credential_url, lease.stop) == (f"{owner}/hf/file",) * 2 + (20,)
    assert lease.headers == {SLICE_HEADER: "10"}
    assert r.settle(13, 7, None) == owner
    assert (r.bytes_from_peers, r.bytes_from_upstream) == (7, 0)


def test_a_failed_peer_is_dropped_and_its_slices_go_to_the_next_owner_then_upstream() -> None:
    peers = PEERS[:2]
    r = _router(peers=peers)
    first, second = owners(SHA, 0, peers)
    assert r.lease_nowait(0, 100).peer == first
    assert r.settle(0, 3, StallTimeout("no data")) == first
    assert first in r.dropped
    assert r.lease_nowait(3, 100).peer == second
    r.settle(3, 0, StallTimeout("no data"))
    upstream = r.lease_nowait(3, 100)
    assert (upstream.peer, upstream.url, upstream.stop, dict(upstream.headers)) == (
        None,
        "http://hub/file",
        10,
        {},
    )
    assert r.settle(3, 7, None) is None
    assert (r.bytes_from_peers, r.bytes_from_upstream) == (3, 7)
    # The reasons are typed; what each peer sent is kept (to find a liar afterwards).
    assert r.dropped[first].reason is DropReason.STALLED
    assert [d.peer for d in r.drops_here()] == [first, second]
    assert r.served == [Served(0, 3, first)]


def test_a_peer_dropped_for_one_file_is_asked_nothing_for_the_others() -> None:
    dropped: dict[str, PeerDrop] = {}
    one, other = (
        _router(peers=PEERS[:1], dropped=dropped),
        _router(peers=PEERS[:1], dropped=dropped),
    )
    one.lease_nowait(0, 100)
    one.settle(0, 0, NetworkError("connection refused", kind="refused"))
    assert dropped[PEERS[0]].reason is DropReason.FAILED
    assert other.lease_nowait(0, 100).peer is None
    assert other.drops_here() == ()  # told once, by the file that dropped it
    other.drop(PEERS[0], DropReason.LIED, "again")
    assert dropped[PEERS[0]].reason is DropReason.FAILED  # the first reason stays


def test_router_refuses_a_zero_slice() -> None:
    with pytest.raises(ValueError, match="slice_bytes"):
        SliceRouter(sha256=SHA, size=1, slice_bytes=0, peer_urls={}, upstream_url="u")


def test_a_peer_closing_idle_connections_is_dropped_only_when_it_keeps_doing_it() -> None:
    r = _router(peers=PEERS[:1])
    closed = NetworkError("closed the connection unexpectedly", kind="closed")
    for _ in range(MAX_IDLE_CLOSES):
        r.lease_nowait(0, 100)
        r.settle(0, 0, closed)
        assert not r.dropped
    r.lease_nowait(0, 100)
    r.settle(0, 0, closed)
    assert PEERS[0] in r.dropped
    r2 = _router(peers=PEERS[:1])
    r2.lease_nowait(0, 100)
    r2.settle(0, 0, NetworkError("connection refused", kind="refused"))
    assert PEERS[0] in r2.dropped
    # A reset before the first byte is the same race (the request reached a closing socket).
    r3 = _router(peers=PEERS[:1])
    r3.lease_nowait(0, 100)
    r3.settle(0, 0, NetworkError("connection reset", kind="reset"))
    assert not r3.dropped
    r3.lease_nowait(0, 100)
    r3.settle(0, 5, NetworkError("connection reset", kind="reset"))  # mid-body: dropped
    assert r3.dropped[PEERS[0]].reason is DropReason.FAILED
