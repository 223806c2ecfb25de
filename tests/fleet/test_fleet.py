"""Nodes pull one model with --peers: the upstream sends each slice once for the whole fleet.

Eight ``modelhaul serve`` on 127.0.0.2-9 (one store each), shared by the tests of this module
(each test pulls its own model); the fake Hub's CDN is the upstream whose bytes are counted.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import pytest
from liar import LyingPeer

from fakehub import FakeHub
from fleet import (
    KiB,
    MiB,
    Node,
    add_model,
    assert_every_node_has,
    notices,
    run_pulls,
    serve_warnings,
    start_pull,
    stop_all,
    upstream_bytes,
)
from server_harness import wait_until

N_NODES = 8


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub() as fake:
        yield fake


@pytest.fixture(scope="module")
def nodes(hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    root = tmp_path_factory.mktemp("fleet")
    started: list[Node] = []
    try:
        for i in range(N_NODES):
            started.append(Node(i, root / f"node{i}").start(hub))
        yield started
    finally:
        stop_all(started)


@pytest.fixture(autouse=True)
def uncapped(hub: FakeHub) -> Iterator[None]:
    yield
    hub.set_total_speed_limit(None)


def _check(pulls: list, nodes: list[Node]) -> None:
    for p in pulls:
        assert p.code == 0, f"node {p.node.index}: {p.stderr[-2000:]}\n{serve_warnings(nodes)}"


@pytest.mark.timeout(300)  # sixteen processes on a shared machine
def test_eight_nodes_fetch_each_slice_upstream_once_and_share_the_uploads(
    hub: FakeHub, nodes: list[Node]
) -> None:
    # 768 slices: the busiest owner serves at most 2x the idlest, whatever the ports.
    repo, slice_bytes = "org/balanced", 128 * KiB
    commit, files = add_model(hub, repo, 4, 24 * MiB)
    size = sum(len(c) for c in files.values())
    owned_before = [n.sliced_bytes() for n in nodes]
    pulls = run_pulls(
        [start_pull(n, hub, repo, [m.url for m in nodes], slice_bytes) for n in nodes]
    )
    _check(pulls, nodes)
    assert_every_node_has(nodes, repo, commit, files)
    assert upstream_bytes(hub, files) <= 1.05 * size, (notices(pulls)[:20], serve_warnings(nodes))
    # What each node uploaded is what it owns times the nodes that asked for it (all eight).
    owned = [n.sliced_bytes() - b for n, b in zip(nodes, owned_before, strict=True)]
    assert sum(owned) <= 1.05 * size
    assert max(owned) <= 2 * min(owned), owned
    for p in pulls:
        result = p.result
        assert result["bytes_from_peers"] == 4 * 24 * MiB
        assert result["bytes_from_upstream"] == len(files["config.json"])
        per_file = {f["file"]: f["bytes_from_peers"] for f in p.files}
        assert per_file["model-0.safetensors"] == 24 * MiB


@pytest.mark.timeout(300)  # sixteen processes on a shared machine
def test_the_fleet_takes_about_as_long_as_one_node_alone(hub: FakeHub, nodes: list[Node]) -> None:
    """The upstream link (capped) is the bottleneck: eight nodes through peers need about the
    time one node needs alone, where eight nodes each on their own would need eight times it."""
    cap, slice_bytes = 4 * MiB, 1 * MiB
    add_model(hub, "org/alone", 4, 8 * MiB)
    hub.set_total_speed_limit(cap)
    alone = run_pulls([start_pull(nodes[0], hub, "org/alone", None, slice_bytes)])
    _check(alone, nodes)
    commit, files = add_model(hub, "org/together", 4, 8 * MiB)
    size = sum(len(c) for c in files.values())
    peers = [m.url for m in nodes]
    pulls = run_pulls([start_pull(n, hub, "org/together", peers, slice_bytes) for n in nodes])
    _check(pulls, nodes)
    assert_every_node_has(nodes, "org/together", commit, files)
    assert upstream_bytes(hub, files) <= 1.05 * size, notices(pulls)[:20]
    slowest = max(p.wall_s for p in pulls)
    # Sixteen processes need CPU where one waits on the link: on a machine busy with other work
    # they queue for it. Timed against the 1.3x where the load is within the cores, 3x
    # up to twice that (still far below the 8x of every node on its own); beyond, not timed.
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    if load <= 2:
        bound = 1.3 if load <= 1 else 3.0
        assert slowest <= bound * alone[0].wall_s, (slowest, alone[0].wall_s, load)
    else:
        warnings.warn(
            f"not timed: load {load:.1f} per core ({slowest:.1f} s vs {alone[0].wall_s:.1f} s)",
            stacklevel=1,
        )


def test_a_lying_peer_is_caught_by_the_sha256_and_every_node_ends_byte_exact(
    hub: FakeHub, nodes: list[Node]
) -> None:
    repo = "org/lied-to"
    commit, files = add_model(hub, repo, 2, 4 * MiB)
    with LyingPeer(nodes[-1].url, nodes[-1].host) as liar:
        peers = [m.url for m in nodes[:-1]] + [liar.url]
        pulls = run_pulls([start_pull(n, hub, repo, peers, 256 * KiB) for n in nodes[:-1]])
        assert liar.bytes_lied > 0
    _check(pulls, nodes)
    assert_every_node_has(nodes[:-1], repo, commit, files)
    # Caught by the file's SHA-256, then fetched again from upstream alone.
    assert any("SHA-256 mismatch" in n for n in notices(pulls)), notices(pulls)


def test_skewed_peer_lists_stay_correct(hub: FakeHub, nodes: list[Node]) -> None:
    """Half the nodes do not know two of the peers: correct, only a little more upstream."""
    repo = "org/skewed"
    commit, files = add_model(hub, repo, 4, 4 * MiB)
    size = sum(len(c) for c in files.values())
    everyone = [m.url for m in nodes]
    partial = [u for i, u in enumerate(everyone) if i not in (2, 5)]
    pulls = run_pulls(
        [start_pull(n, hub, repo, everyone if n.index % 2 else partial, 256 * KiB) for n in nodes]
    )
    _check(pulls, nodes)
    assert_every_node_has(nodes, repo, commit, files)
    assert upstream_bytes(hub, files) <= 1.5 * size


@pytest.mark.timeout(300)  # sixteen processes on a shared machine
def test_a_peer_killed_at_30_percent_leaves_the_others_complete(
    hub: FakeHub, nodes: list[Node]
) -> None:
    """Last in this module: the killed node's service is gone afterwards."""
    repo = "org/killed"
    commit, files = add_model(hub, repo, 4, 8 * MiB)
    size = sum(len(c) for c in files.values())
    hub.set_total_speed_limit(16 * MiB)
    peers = [m.url for m in nodes]
    pulls = [start_pull(n, hub, repo, peers, 256 * KiB) for n in nodes]
    victim = nodes[3]
    wait_until(lambda: upstream_bytes(hub, files) >= 0.3 * size, 60, "30 % upstream")
    assert victim.serve is not None
    victim.serve.kill()
    pulls[3].proc.kill()
    survivors = run_pulls([p for p in pulls if p.node is not victim])
    _check(survivors, nodes)
    assert_every_node_has([n for n in nodes if n is not victim], repo, commit, files)
    assert upstream_bytes(hub, files) <= 1.25 * size
