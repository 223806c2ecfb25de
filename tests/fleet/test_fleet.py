"""8 nodes pull one model with --peers: the upstream sends each slice once for the fleet."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fakehub import FakeHub
from fleet import (
    REPO,
    KiB,
    MiB,
    Node,
    run_pulls,
    serve_warnings,
    start_pull,
    stop_all,
    upstream_bytes,
)
from helpers import blob

N_NODES = 8
FILE_BYTES = 24 * MiB
SLICE_BYTES = 128 * KiB  # 768 slices: owners balanced within 2x whatever the ports


@pytest.fixture
def model(hub: FakeHub) -> tuple[str, dict[str, bytes]]:
    files = {f"model-{i}.safetensors": blob(FILE_BYTES, seed=i) for i in range(4)}
    files["config.json"] = b'{"model_type": "fleet"}'
    commit = hub.add_repo(REPO, files)
    return commit, files


@pytest.fixture
def nodes(hub: FakeHub, tmp_path: Path) -> Iterator[list[Node]]:
    started: list[Node] = []
    try:
        for i in range(N_NODES):
            started.append(Node(i, tmp_path / f"node{i}").start(hub))
        yield started
    finally:
        stop_all(started)


def test_eight_nodes_fetch_each_slice_from_upstream_once(
    hub: FakeHub, model: tuple[str, dict[str, bytes]], nodes: list[Node]
) -> None:
    commit, files = model
    size = sum(len(c) for c in files.values())
    peers = [n.url for n in nodes]
    pulls = run_pulls([start_pull(n, hub, peers, SLICE_BYTES) for n in nodes])
    for p in pulls:
        assert p.code == 0, p.stderr
        for path, content in files.items():
            assert p.node.snapshot_bytes(commit, path) == content
    sent = upstream_bytes(hub, files)
    print("upstream", sent / size, "walls", [round(p.wall_s, 1) for p in pulls])
    print(
        "results", [(p.result["bytes_from_peers"], p.result["bytes_from_upstream"]) for p in pulls]
    )
    print("owned", [n.sliced_bytes() for n in nodes])
    print(serve_warnings(nodes))
    print("DROPS", [line for p in pulls for line in p.stderr.splitlines() if "DROP" in line][:10])
    from collections import Counter

    cdn = [r for r in hub.requests if r.site == "cdn"]
    ranges = Counter((r.path, r.headers.get("range")) for r in cdn)
    print("cdn requests", len(cdn), "dups", [(k, v) for k, v in ranges.items() if v > 1][:10])
    print(
        "statuses",
        Counter(r.status for r in cdn),
        "short",
        [(r.headers.get("range"), r.body_bytes) for r in cdn if r.body_bytes != 128 * 1024][:10],
    )
    assert sent <= 1.05 * size
