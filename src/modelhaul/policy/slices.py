"""Which peer serves which slice of a file (issue 17), and the router one download asks per range.

A file is cut into slices of ``slice_bytes``; slice ``i`` is ``[i * slice_bytes, (i + 1) *
slice_bytes)``. The peers that may serve a slice are ranked by rendezvous hashing (Thaler &
Ravishankar's highest random weight): each peer scores ``hash(file sha256, slice index, peer
URL)`` and the highest score owns the slice, the next is its fallback, and so on. Issue 17 named
jump consistent hash (Lamping & Veach), as replicate/pget uses; it is consistent only when
buckets are added or removed at the end of the list, so two nodes whose peer lists differ by one
peer in the middle would disagree on most owners and the upstream would send most slices twice.
With rendezvous hashing they disagree only on the slices of the peer one of them lacks, and a
dropped peer's slices go each to its own next owner, the same one on every node that dropped it.
Ranking costs one small hash per peer and slice (cached per download).

``SliceRouter`` is the mutable part, used by one download: it hands out a source per range
(``lease_nowait``), hears how each went (``settle``), drops a peer that failed for the rest of
the download, and counts the bytes from peers and from upstream. No I/O happens here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


def peer_score(sha256: str, index: int, peer: str) -> int:
    """The rendezvous weight of ``peer`` for slice ``index`` of the file ``sha256`` (64 bits)."""
    text = f"{sha256}:{index}:{normalize_peer(peer)}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def normalize_peer(url: str) -> str:
    """A peer's base URL as every node spells it: no trailing slash."""
    return url.strip().rstrip("/")


def owners(sha256: str, index: int, peers: Sequence[str]) -> tuple[str, ...]:
    """Every peer, in the order that asks them for slice ``index`` of the file ``sha256``:
    the owner first, then each fallback."""
    unique = {normalize_peer(p) for p in peers if p.strip()}
    return tuple(sorted(unique, key=lambda p: (peer_score(sha256, index, p), p), reverse=True))


def slice_span(index: int, slice_bytes: int, size: int) -> tuple[int, int]:
    """``[start, stop)`` of slice ``index`` in a file of ``size`` bytes."""
    start = index * slice_bytes
    return start, min(size, start + slice_bytes)


@dataclass(frozen=True, slots=True)
class SourceLease:
    """Where to ask for the bytes ``[start, stop)``: ``url`` (credentials go to
    ``credential_url``'s host), with ``headers`` added; ``peer`` is None for the upstream."""

    url: str
    credential_url: str
    stop: int
    headers: Mapping[str, str] = field(default_factory=dict)
    peer: str | None = None


class RangeSources(Protocol):
    """What a download asks for the source of each range (the engine's one hook)."""

    def lease_nowait(self, start: int, stop: int) -> SourceLease:
        """The source of the bytes from ``start``; ``stop`` clipped to where it ends."""
        ...

    def settle(self, start: int, gained: int, error: Exception | None) -> str | None:
        """The request leased at ``start`` ended: ``gained`` bytes arrived; ``error``: why it
        stopped early (a peer is dropped). Returns the peer it went to (None: upstream)."""
        ...


class DropReason(StrEnum):
    """Why a peer was left out of a pull (the ``reason`` of ``--json``'s ``dropped_peers``)."""

    FAILED = "failed"  # refused, reset, answered an error or sent less than asked
    STALLED = "stalled"  # sent nothing for the stall timeout
    LIED = "lied"  # sent bytes that differ from the upstream's


@dataclass(frozen=True, slots=True)
class PeerDrop:
    """One peer left out of a pull: ``reason`` is typed, ``detail`` is for people."""

    peer: str
    reason: DropReason
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"peer": self.peer, "reason": self.reason.value, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Served:
    """Bytes ``[start, stop)`` of a file as ``peer`` sent them."""

    start: int
    stop: int
    peer: str


# Connections a peer may close or reset before sending a byte before it is dropped (idle
# keep-alive connections it timed out, reused at the wrong moment).
MAX_IDLE_CLOSES = 8
# The request header that asks a peer's mirror for one slice: the slice size in bytes.
SLICE_HEADER = "X-Modelhaul-Slice"


class SliceRouter:
    """The sources of one file's ranges: each slice from its first live owner, else upstream.

    Example::

        router = SliceRouter(sha256=sha, size=size, slice_bytes=4 << 20,
                             peer_urls={"http://10.0.0.2:8765": "http://10.0.0.2:8765/hf/..."},
                             upstream_url=url)
        lease = router.lease_nowait(0, size)   # ask lease.url for [0, lease.stop)
        router.settle(0, gained=n, error=None)
    """

    def __init__(
        self,
        *,
        sha256: str,
        size: int,
        slice_bytes: int,
        peer_urls: Mapping[str, str],
        upstream_url: str,
        dropped: MutableMapping[str, PeerDrop] | None = None,
    ) -> None:
        if slice_bytes <= 0:
            raise ValueError(f"slice_bytes must be positive, got {slice_bytes}")
        self.sha256 = sha256
        self.size = size
        self.slice_bytes = slice_bytes
        self._urls = {normalize_peer(p): u for p, u in peer_urls.items()}
        self._upstream = upstream_url
        # Peer -> why it was left out; shared by the files of one pull (a peer dropped for
        # one file is asked nothing for the others).
        self.dropped: MutableMapping[str, PeerDrop] = {} if dropped is None else dropped
        self.served: list[Served] = []  # what each peer sent, to find a liar afterwards
        self.dropped_here: list[str] = []  # the peers this router dropped, in order
        self.bytes_from_peers = 0
        self.bytes_from_upstream = 0
        self.bytes_by_peer: dict[str, int] = {}
        self._open: dict[int, str | None] = {}  # lease start -> its peer (None: upstream)
        self._ranked: dict[int, tuple[str, ...]] = {}
        self._closes: dict[str, int] = {}

    def owner_nowait(self, index: int) -> str | None:
        """The first live owner of slice ``index``; None: every owner was dropped."""
        ranked = self._ranked.get(index)
        if ranked is None:
            ranked = self._ranked[index] = owners(self.sha256, index, list(self._urls))
        for peer in ranked:
            if peer not in self.dropped:
                return peer
        return None

    def lease_nowait(self, start: int, stop: int) -> SourceLease:
        index = start // self.slice_bytes
        peer = self.owner_nowait(index)
        self._open[start] = peer
        # Clipped at the slice's end even from upstream: the next slice may have a live owner.
        end = min(stop, slice_span(index, self.slice_bytes, self.size)[1])
        if peer is None:
            return SourceLease(url=self._upstream, credential_url=self._upstream, stop=end)
        url = self._urls[peer]
        headers = {SLICE_HEADER: str(self.slice_bytes)}
        return SourceLease(url=url, credential_url=url, stop=end, headers=headers, peer=peer)

    def settle(self, start: int, gained: int, error: Exception | None) -> str | None:
        peer = self._open.pop(start, None)
        if peer is None:
            self.bytes_from_upstream += gained
            return None
        self.bytes_from_peers += gained
        self.bytes_by_peer[peer] = self.bytes_by_peer.get(peer, 0) + gained
        if gained:
            self.served.append(Served(start, start + gained, peer))
        if error is None:
            return peer
        if gained == 0 and str(getattr(error, "kind", "")) in ("closed", "reset"):
            # A kept-alive connection the peer had just closed (reset when our request reached
            # it as it closed): not the peer's fault, unless it keeps happening (a dead peer
            # refuses the next connection, and is dropped at once).
            self._closes[peer] = self._closes.get(peer, 0) + 1
            if self._closes[peer] <= MAX_IDLE_CLOSES:
                return peer
        stalled = getattr(error, "category", None) == "timeout"
        self.drop(peer, DropReason.STALLED if stalled else DropReason.FAILED, str(error))
        return peer

    def drop(self, peer: str, reason: DropReason, detail: str) -> None:
        """Ask ``peer`` nothing more in this pull (the first reason stays)."""
        key = normalize_peer(peer)
        if key not in self.dropped:
            self.dropped[key] = PeerDrop(key, reason, detail)
            self.dropped_here.append(key)

    def drops_here(self) -> tuple[PeerDrop, ...]:
        """The peers this router dropped (others of the pull may have dropped more)."""
        return tuple(self.dropped[p] for p in self.dropped_here)


__all__ = [
    "MAX_IDLE_CLOSES",
    "SLICE_HEADER",
    "DropReason",
    "PeerDrop",
    "RangeSources",
    "Served",
    "SliceRouter",
    "SourceLease",
    "normalize_peer",
    "owners",
    "peer_score",
    "slice_span",
]
