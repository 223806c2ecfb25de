"""The peers of one pull: which files go through them, and each file's router.

A peer is another node's ``modelhaul serve``, given by its base URL; its Hugging Face mirror
is at ``BASE/hf``. Only files of a Hub model with a SHA-256 (LFS files) go through peers: the
peer's mirror checks the caller's access with the Hub and fetches only the slices asked for,
and the SHA-256 lets the node verify what several sources sent. Small files are not worth a
detour and go upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping, Sequence

from ..errors import InvalidInput
from ..policy.hubpaths import HubPath
from ..policy.slices import PeerDrop, SliceRouter, normalize_peer
from ..policy.urls import check_url
from ..sources.model import ModelFile, ModelSpec

DEFAULT_SLICE_BYTES = 256 * 1024 * 1024
# The smallest slice a peer's mirror accepts (mirror.slices.MIN_SLICE_BYTES).
MIN_SLICE_BYTES = 64 * 1024
# Files smaller than this go upstream: one request there costs less than a detour.
MIN_PEER_FILE_BYTES = 1024 * 1024


def parse_peers(values: str | Iterable[str] | None) -> tuple[str, ...]:
    """Peer base URLs from ``URL[,URL...]`` (or several such), checked and deduplicated.

    Raises:
        InvalidInput: a URL that is not http(s).
    """
    if values is None:
        return ()
    items = [values] if isinstance(values, str) else list(values)
    peers: list[str] = []
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            url = normalize_peer(part)
            check_url(url)
            if url not in peers:
                peers.append(url)
    return tuple(peers)


def check_slice_bytes(n: int) -> int:
    if n < MIN_SLICE_BYTES:
        raise InvalidInput(f"the slice size must be at least {MIN_SLICE_BYTES} bytes, got {n}")
    return n


def peer_file_url(peer: str, spec: ModelSpec, f: ModelFile) -> str:
    """The URL of ``f`` (at the spec's commit) on a peer's mirror."""
    at = HubPath(
        kind="resolve",
        repo_type=spec.repo_type,
        repo_id=spec.repo_id,
        revision=spec.commit,
        path=f.path,
    )
    return f"{normalize_peer(peer)}/hf{at.upstream_path()}"


def router_for(
    spec: ModelSpec,
    f: ModelFile,
    peers: Sequence[str],
    slice_bytes: int,
    dropped: MutableMapping[str, PeerDrop] | None = None,
) -> SliceRouter | None:
    """The router of ``f``'s ranges over ``peers``; None when the file goes upstream whole.
    ``dropped``: the peers left out so far, shared by the files of one pull."""
    if not peers or spec.source != "hf" or f.sha256 is None or f.size < MIN_PEER_FILE_BYTES:
        return None
    return SliceRouter(
        sha256=f.sha256,
        size=f.size,
        slice_bytes=slice_bytes,
        peer_urls={p: peer_file_url(p, spec, f) for p in peers},
        upstream_url=f.urls[0],
        dropped=dropped,
    )


__all__ = [
    "DEFAULT_SLICE_BYTES",
    "MIN_PEER_FILE_BYTES",
    "MIN_SLICE_BYTES",
    "check_slice_bytes",
    "parse_peers",
    "peer_file_url",
    "router_for",
]
