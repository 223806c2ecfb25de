"""Ray, the distributed engine (issue 17): a real Ray cluster (``ray.cluster_utils.Cluster``, three
nodes on this machine, each with its own store root and state directory), the fake Hub upstream.

One cluster for the module (starting one costs 10-45 s); the tests run in file order and the last
one kills a node. The file takes 90-110 s on this shared, busy 2-core machine (most of it starting
Ray's processes and the nodes' Python processes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from conftest import cli_env, modelhaul_cmd
from fakehub import FakeHub
from modelhaul.cli.main import build_parser
from modelhaul.cluster import ClusterPullResult, pull_on_ray
from modelhaul.errors import InvalidInput, ModelhaulError
from server_harness import wait_until

pytestmark = pytest.mark.timeout(300)

KiB = 1024
MiB = 1024 * KiB


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


MODEL_A = {
    "config.json": b'{"model_type": "fleet"}',
    "model-00001.safetensors": payload(1, 3 * MiB),
    "model-00002.safetensors": payload(2, 2 * MiB + 12345),
}
MODEL_B = {  # pulled slowly, so a node can be killed in the middle
    "config.json": b'{"model_type": "fleet-b"}',
    "model.safetensors": payload(3, 4 * MiB),
}


def _pull_takes_peers() -> bool:
    """Whether ``modelhaul pull`` has ``--peers`` yet (issue 17's peers, another branch)."""
    for action in build_parser(["pull"])._actions:
        if isinstance(action, argparse._SubParsersAction):
            return "--peers" in action.choices["pull"].format_help()
    return False


# Until peers land every node fetches the whole model upstream; the assertion that the cluster
# costs the upstream one copy is written and runs, expected to fail until then (strict: once
# peers are merged it must pass, or this file fails). Merged with s8-peers it passed: the fake Hub
# sent 5,255,294 bytes for the 5,255,248-byte model pulled by three nodes.
PENDING_PEERS = pytest.mark.xfail(
    not _pull_takes_peers(),
    strict=True,
    reason="PENDING PEERS: modelhaul pull has no --peers yet, so every node pulls upstream",
)


@dataclass
class RayCluster:
    cluster: Cluster
    nodes: list[Any]  # ray._private.node.Node, the head first
    roots: dict[str, Path]  # node id -> that node's store root

    @property
    def address(self) -> str:
        return self.cluster.address


def _node_env(base: Path, hub: FakeHub) -> dict[str, str]:
    """A node's own home, state and store; proxies off (everything is on this machine)."""
    home = base / "home"
    home.mkdir(parents=True)
    return {
        "HOME": str(home),
        "MODELHAUL_STATE_DIR": str(base / "state"),
        "HF_HOME": str(home / "hf"),
        "HF_HUB_CACHE": str(base / "hub"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "*",
        "no_proxy": "*",
    }


def test_options_a_node_cannot_take_are_refused_before_ray_is_asked() -> None:
    with pytest.raises(InvalidInput, match="peers"):
        pull_on_ray("org/x", peers=["http://a:1"])  # the cluster's mirrors are the peers
    with pytest.raises(InvalidInput, match="absolute"):
        pull_on_ray("org/x", local_dir="models")  # relative to which node's directory?


def test_an_address_that_refuses_is_said_at_once() -> None:
    """Runs before the cluster exists (no connection yet in this process)."""
    with pytest.raises(ModelhaulError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1"):
        pull_on_ray("org/x", address="127.0.0.1:1")


@pytest.fixture(scope="module")
def fake_hub() -> Iterator[FakeHub]:
    with FakeHub() as hub:
        for name, files in (("org/a", MODEL_A), ("org/b", MODEL_B)):
            hub.add_repo(name, files)
        yield hub


@pytest.fixture(scope="module")
def ray_cluster(
    tmp_path_factory: pytest.TempPathFactory, fake_hub: FakeHub
) -> Iterator[RayCluster]:
    base = tmp_path_factory.mktemp("ray")
    common = {"num_cpus": 1, "object_store_memory": 80 * MiB}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **common,
            "include_dashboard": False,
            "env_vars": _node_env(base / "n0", fake_hub),
        },
    )
    try:
        nodes = [cluster.head_node]
        for i in (1, 2):
            nodes.append(cluster.add_node(**common, env_vars=_node_env(base / f"n{i}", fake_hub)))
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        roots = {n.node_id: base / f"n{i}" / "hub" for i, n in enumerate(nodes)}
        yield RayCluster(cluster, nodes, roots)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _upstream_bytes(hub: FakeHub, model: dict[str, bytes]) -> int:
    return sum(hub.bytes_sent(_sha256(content)) for content in model.values())


def _assert_byte_exact(path: str | None, root: Path, model: dict[str, bytes]) -> None:
    assert path is not None
    snapshot = Path(path)
    assert snapshot.is_relative_to(root), f"{snapshot} is not in the node's store {root}"
    for name, content in model.items():
        assert (snapshot / name).read_bytes() == content, f"{snapshot / name} differs"


@dataclass
class Pulled:
    proc: subprocess.CompletedProcess[str]
    record: dict[str, Any]  # the --json result line
    upstream_bytes: int


@pytest.fixture(scope="module")
def pulled_a(ray_cluster: RayCluster, fake_hub: FakeHub) -> Pulled:
    """``modelhaul pull SOURCE --json --ray ADDRESS``: a second Ray driver. The command's
    HF_ENDPOINT must reach the nodes (theirs has none)."""
    proc = subprocess.run(
        modelhaul_cmd("pull", "hf://org/a", "--json", "--ray", ray_cluster.address),
        env=cli_env(HF_ENDPOINT=fake_hub.endpoint),
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert len(lines) == 1, lines  # the one result line, nothing else on stdout
    return Pulled(proc, json.loads(lines[0]), _upstream_bytes(fake_hub, MODEL_A))


def test_one_pull_per_node_and_every_node_byte_exact(
    ray_cluster: RayCluster, pulled_a: Pulled
) -> None:
    record = pulled_a.record
    assert record["event"] == "result" and record["status"] == "completed"
    assert record["error"] is None
    # Each node id is the one its task reported from where it ran: one task per alive node.
    assert [n["node_id"] for n in record["nodes"]] == sorted(ray_cluster.roots)
    for n in record["nodes"]:
        assert n["status"] == "completed", n
        _assert_byte_exact(n["path"], ray_cluster.roots[n["node_id"]], MODEL_A)
        assert n["wall_s"] > 0 and n["address"]
        assert n["bytes_from_upstream"] + n["bytes_from_peers"] > 0
    # One mirror per node, each on its own port, all given to every node as peers; all stopped.
    assert len(set(record["peers"])) == 3
    assert all(p.startswith("http://") for p in record["peers"])
    for root in ray_cluster.roots.values():
        assert not _processes_with_env(f"HF_HUB_CACHE={root}", argv_has=b"main\0serve\0")


@PENDING_PEERS
def test_the_cluster_costs_the_upstream_one_copy(pulled_a: Pulled) -> None:
    size = sum(len(c) for c in MODEL_A.values())
    assert pulled_a.upstream_bytes <= 1.05 * size, (pulled_a.upstream_bytes, size)
    assert pulled_a.record["bytes_from_upstream"] <= 1.05 * size
    assert pulled_a.record["bytes_from_peers"] >= 2 * size * 0.95
    # The pulls' upstream bytes leave out what each node's mirror fetched for the others; with
    # it the record accounts for what the Hub sent.
    mirrors = [n["mirror_bytes_from_upstream"] for n in pulled_a.record["nodes"]]
    assert all(isinstance(m, int) for m in mirrors), mirrors
    total = pulled_a.record["bytes_from_upstream"] + pulled_a.record["mirror_bytes_from_upstream"]
    assert total == sum(mirrors) + pulled_a.record["bytes_from_upstream"]
    assert 0.95 * pulled_a.upstream_bytes <= total <= 1.05 * pulled_a.upstream_bytes, (
        total,
        pulled_a.upstream_bytes,
    )


def test_import_and_cli_do_not_load_ray_without_the_option() -> None:
    code = (
        "import sys, modelhaul, modelhaul.cluster; from modelhaul.cli.main import build_parser; "
        "build_parser(['pull', 'x']).parse_args(['pull', 'org/x']); print('ray' in sys.modules)"
    )
    out = subprocess.run(
        [*modelhaul_cmd()[:1], "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def _processes_with_env(entry: str, *, argv_has: bytes = b"") -> list[int]:
    """Processes whose environment holds ``entry`` (a node's raylet, workers, mirror, pull) and
    whose command line holds ``argv_has``."""
    found = []
    needle = entry.encode() + b"\0"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            env = (proc / "environ").read_bytes()
            argv = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in env + b"\0" and argv_has in argv:
            found.append(int(proc.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_nodes_command_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """The tie: ``modelhaul serve`` started the way a node starts it dies when its starter (the
    Ray worker) is SIGKILLed, so nothing outlives its node or actor."""
    starter = (
        "import subprocess, sys\n"
        "from modelhaul.cluster.node import modelhaul_argv\n"
        "child = subprocess.Popen(modelhaul_argv('serve', '--port', '0', '--json'),"
        " stdout=subprocess.PIPE, text=True)\n"
        "child.stdout.readline()\n"
        "print(child.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", starter],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    child = 0
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        assert _alive(child)
        proc.kill()
        proc.wait(timeout=10)
        wait_until(lambda: not _alive(child), 10, "the tied child to die with its starter")
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if child and _alive(child):  # only when the test failed: stop what it started
            os.kill(child, signal.SIGKILL)


def _partial_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.modelhaul.part") if p.is_file())


def test_a_node_killed_mid_pull_fails_alone(ray_cluster: RayCluster, fake_hub: FakeHub) -> None:
    """Runs last: it leaves the cluster one node short."""
    victim = ray_cluster.nodes[-1]
    victim_root = ray_cluster.roots[victim.node_id]
    outcome: list[ClusterPullResult] = []
    # Per response, so 4 MiB over two connections take a node ~16 s: the kill lands mid-pull, and
    # a pull that outlived its node would still be running when its processes are looked for.
    fake_hub.set_speed_limit(128 * KiB)
    try:
        puller = threading.Thread(
            target=lambda: outcome.append(
                pull_on_ray("hf://org/b", endpoint=fake_hub.endpoint, connections=2, jobs=1)
            )
        )
        puller.start()
        wait_until(lambda: _partial_bytes(victim_root) > 0, 120, "the victim's pull to start")
        assert _processes_with_env(f"HF_HUB_CACHE={victim_root}")  # the check below can fail
        ray_cluster.cluster.remove_node(victim, allow_graceful=False)
        # Nothing of the dead node keeps writing into its store: its pull (and its mirror) died
        # with their Ray worker, well before the throttled pull could have finished.
        wait_until(
            lambda: not _processes_with_env(f"HF_HUB_CACHE={victim_root}"),
            8,
            "the killed node's processes to be gone",
        )
        fake_hub.set_speed_limit(None)  # new requests of the survivors need not crawl
        puller.join(timeout=180)
        assert not puller.is_alive()
    finally:
        fake_hub.set_speed_limit(None)
    result = outcome[0]
    assert not result.ok
    by_id = {n.node_id: n for n in result.nodes}
    assert sorted(by_id) == sorted(ray_cluster.roots)
    dead = by_id.pop(victim.node_id)
    assert dead.status == "failed" and dead.error is not None
    assert victim.node_id in dead.error["message"] and "died" in dead.error["message"]
    assert dead.error["hint"]
    for n in by_id.values():
        assert n.ok, n.error
        _assert_byte_exact(n.path, ray_cluster.roots[n.node_id], MODEL_B)
    said = result.to_dict()
    assert said["status"] == "failed" and "1 of 3 nodes failed" in said["error"]["message"]
