"""The pull command's peer options (issue 17): ``--peers URL[,URL...]`` (or ``MODELHAUL_PEERS``)
and ``--slice-size SIZE``, read once here and handed to ``ModelPuller``."""

from __future__ import annotations

import argparse
import os
from typing import TypedDict

from ..errors import InvalidInput
from ..fleet.routing import DEFAULT_SLICE_BYTES, check_slice_bytes, parse_peers
from ..policy.units import parse_size

PEERS_ENV = "MODELHAUL_PEERS"


def add_peer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--peers",
        action="append",
        metavar="URL[,URL...]",
        help="other nodes' 'modelhaul serve' URLs: each slice of a large file comes from the "
        "peer that owns it, which fetches it upstream once for all (default: $MODELHAUL_PEERS)",
    )
    p.add_argument(
        "--slice-size",
        metavar="SIZE",
        help="with --peers, the bytes each peer owns at a time (default 256M; every node "
        "must use the same)",
    )


class PeerOptions(TypedDict):
    """``ModelPuller``'s peer keywords."""

    peers: tuple[str, ...]
    slice_bytes: int


def peer_options(args: argparse.Namespace) -> PeerOptions:
    """The peers and slice size the command line (else the environment) gives, as
    ``ModelPuller``'s keywords.

    Raises:
        InvalidInput: a peer that is not an http(s) URL, or a slice size out of bounds.
    """
    given = getattr(args, "peers", None) or os.environ.get(PEERS_ENV) or None
    try:
        peers = parse_peers(given)
    except InvalidInput as exc:
        raise InvalidInput(f"--peers: {exc.message}") from None
    text = getattr(args, "slice_size", None)
    size = parse_size(text, what="--slice-size") if text else DEFAULT_SLICE_BYTES
    try:
        return PeerOptions(peers=peers, slice_bytes=check_slice_bytes(size))
    except InvalidInput as exc:
        raise InvalidInput(f"--slice-size: {exc.message}") from None


__all__ = ["PEERS_ENV", "PeerOptions", "add_peer_options", "peer_options"]
