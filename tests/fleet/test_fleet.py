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


@pytest.mark.timeout(420)  # sixteen processes and 4.5 GiB on a shared machine
def test_the_fleet_takes_about_as_long_as_one_node_alone(hub: FakeHub, nodes: list[Node]) -> None:
    """The issue's fleet: eight nodes pull a 4-file model of 512 MiB at once through an upstream
    capped at 20 MiB/s. The capped link is the bottleneck: through peers eight nodes need about
    the time one node needs alone (each on its own they would need eight times it), the upstream
    sends the model about once, and the owners share the uploads."""
    cap, slice_bytes, file_bytes = 20 * MiB, 2 * MiB, 128 * MiB
    add_model(hub, "org/alone", 4, file_bytes)
    hub.set_total_speed_limit(cap)
    alone = run_pulls([start_pull(nodes[0], hub, "org/alone", None, slice_bytes)])
    _check(alone, nodes)
    commit, files = add_model(hub, "org/together", 4, file_bytes)
    size = sum(len(c) for c in files.values())
    peers = [m.url for m in nodes]
    # The machine's load before the fleet starts (the 1-minute average: after one node's
    # half-minute alone, earlier tests weigh little), not the fleet's own sixteen processes.
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    owned_before = [n.sliced_bytes() for n in nodes]
    pulls = run_pulls([start_pull(n, hub, "org/together", peers, slice_bytes) for n in nodes])
    _check(pulls, nodes)
    assert_every_node_has(nodes, "org/together", commit, files)
    assert upstream_bytes(hub, files) <= 1.05 * size, notices(pulls)[:20]
    # 256 slices: each owner fetched (and so uploaded to the eight nodes) about its share. Who
    # claims a slice first is the scheduler's doing: within 2x in the earlier runs, 2.04x once
    # in a full CI run on the shared VM (98 MiB against 48). 3x still fails a node left out or
    # one node fetching most of the model.
    owned = [n.sliced_bytes() - b for n, b in zip(nodes, owned_before, strict=True)]
    assert max(owned) <= 3 * min(owned), owned
    slowest = max(p.wall_s for p in pulls)
    ratio = slowest / alone[0].wall_s
    print(f"fleet: slowest {slowest:.1f} s, alone {alone[0].wall_s:.1f} s, ratio {ratio:.2f}")
    # Sixteen processes need CPU (4 GiB received, hashed and served) where one node alone waits
    # on the link: on a machine busy with other work they queue for the cores, and the wall
    # time measures that queue, not the fleet. Measured 1.09x quiet and 1.10x at a load of 4
    # per core (2-core VM), so the 1.3x is asserted up to a load of 2 per core, 3x up
    # to 4 (still far below the 8x of every node on its own); beyond, the ratio is reported.
    if load <= 4:
        bound = 1.3 if load <= 2 else 3.0
        assert ratio <= bound, (slowest, alone[0].wall_s, load)
    else:
        warnings.warn(
            f"wall not asserted: load {load:.1f} per core; ratio {ratio:.2f} "
            f"({slowest:.1f} s vs {alone[0].wall_s:.1f} s alone)",
            stacklevel=1,
        )


def test_a_lying_peer_is_caught_by_the_sha256_and_every_node_ends_byte_exact(
    hub: FakeHub, nodes: list[Node]
) -> None:
    repo = "org/lied-to"
    commit, files = add_model(hub, repo, 2, 4 * MiB)
    size = sum(len(c) for c in files.values())
    with LyingPeer(nodes[-1].url, nodes[-1].host) as liar:
        peers = [m.url for m in nodes[:-1]] + [liar.url]
        pulls = run_pulls([start_pull(n, hub, repo, peers, 256 * KiB) for n in nodes[:-1]])
        assert liar.bytes_lied > 0
    _check(pulls, nodes)
    assert_every_node_has(nodes[:-1], repo, commit, files)
    # Caught by the file's SHA-256, then what peers sent fetched again from upstream alone.
    assert any("SHA-256 mismatch" in n for n in notices(pulls)), notices(pulls)
    # The liar, and only the liar, is named: compared with the upstream's bytes, no honest
    # peer's differ. Each node refetches at most what peers sent it of the files it caught.
    blamed = [d for p in pulls for d in p.result["dropped_peers"] if d["reason"] == "lied"]
    assert blamed and {d["peer"] for d in blamed} == {liar.url}, blamed
    assert upstream_bytes(hub, files) <= (1.05 + len(blamed)) * size


def test_a_liar_is_dropped_for_the_rest_of_the_pull(hub: FakeHub, nodes: list[Node]) -> None:
    """One file at a time (-j 1) from an honest peer and a liar: the file that caught it gets
    what peers sent again from upstream, before any file not yet started (its refetch goes
    first), and the liar is asked nothing about those files."""
    repo = "org/lied-to-once"
    commit, files = add_model(hub, repo, 4, 2 * MiB)
    with LyingPeer(nodes[-1].url, nodes[-1].host) as liar:
        pull = run_pulls(
            [start_pull(nodes[0], hub, repo, [nodes[1].url, liar.url], 128 * KiB, "-j", "1")]
        )[0]
    _check([pull], nodes)
    assert_every_node_has(nodes[:1], repo, commit, files)
    lfs = [name for name in files if name.endswith(".safetensors")]
    asked = {name for name in lfs for path in liar.asked if path.endswith("/" + name)}
    # The file in flight when the first one was caught may have asked it too; no other did.
    assert 1 <= len(asked) <= 2, (asked, notices([pull]))
    assert pull.result["dropped_peers"] == [
        {"peer": liar.url, "reason": "lied", "detail": pull.result["dropped_peers"][0]["detail"]}
    ]
    by_file = {f["file"]: f["dropped_peers"] for f in pull.files}
    assert sum(len(d) for d in by_file.values()) == 1  # told once, by the file that caught it
    assert any(f"peer {liar.url}" in n and "lied" in n for n in notices([pull])), notices([pull])


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
