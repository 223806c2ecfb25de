"""A fleet on one machine: ``modelhaul serve`` per node on 127.0.0.2-9 (each with its own store
and state directory), and ``modelhaul pull --peers`` per node, all against one fake Hub.

Everything runs as real processes, as users run them; waits are bounded.
"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from conftest import cli_env, modelhaul_cmd
from fakehub import FakeHub
from helpers import blob, sha
from modelhaul.store.repo import RepoStore
from server_harness import ServerProcess

KiB = 1024
MiB = 1024 * KiB
LFS_BYTES = 1024
PULL_TIMEOUT_S = 240.0


@dataclass
class Node:
    """One machine: its store, state directory and (once started) its service."""

    index: int
    root: Path
    serve: ServerProcess | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.{2 + self.index}"

    @property
    def store(self) -> Path:
        return self.root / "hub"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def url(self) -> str:
        assert self.serve is not None
        return self.serve.url

    def env(self, hub: FakeHub) -> dict[str, str]:
        return cli_env(
            HF_HUB_CACHE=str(self.store),
            MODELHAUL_STATE_DIR=str(self.state),
            HF_ENDPOINT=hub.endpoint,
        )

    def start(self, hub: FakeHub) -> Node:
        self.root.mkdir(parents=True, exist_ok=True)
        self.serve = ServerProcess(
            self.root, "--host", self.host, "--upstream", hub.endpoint, env=self.env(hub)
        )
        return self

    def sliced_bytes(self) -> int:
        """What this node's mirror fetched upstream for peers since it started (its counter:
        slice files go once the node's store holds the file)."""
        with httpx.Client(timeout=10) as client:
            totals = client.get(f"{self.url}/api/mirror/totals").json()
        return int(totals["slice_upstream_bytes"])

    def snapshot_bytes(self, repo: str, commit: str, path: str) -> bytes:
        return RepoStore(self.store, repo).snapshot_file(commit, path).read_bytes()


@dataclass
class Pull:
    """One ``modelhaul pull --json`` running on a node."""

    node: Node
    proc: subprocess.Popen[bytes]
    started: float
    lines: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    code: int | None = None
    stderr: str = ""

    def wait(self, deadline: float) -> Pull:
        try:
            out, err = self.proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=15)
        self.wall_s = time.monotonic() - self.started
        self.code = self.proc.returncode
        self.stderr = err.decode(errors="replace")
        self.lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        return self

    @property
    def result(self) -> dict[str, Any]:
        results = [x for x in self.lines if x.get("event") == "result"]
        assert results, f"node {self.node.index}: no result line (exit {self.code}):\n{self.stderr}"
        return results[-1]

    @property
    def files(self) -> list[dict[str, Any]]:
        return [x for x in self.lines if x.get("event") == "file"]


def start_pull(
    node: Node, hub: FakeHub, repo: str, peers: list[str] | None, slice_bytes: int, *extra: str
) -> Pull:
    args = ["pull", repo, "--json"]
    if peers:
        args += ["--peers", ",".join(peers), "--slice-size", str(slice_bytes)]
    proc = subprocess.Popen(
        modelhaul_cmd(*args, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=node.env(hub),
    )
    return Pull(node=node, proc=proc, started=time.monotonic())


def run_pulls(pulls: list[Pull]) -> list[Pull]:
    """Wait for every pull at once: each one's output is read as it comes (a pull whose stdout
    pipe filled while another was waited for would stall) and its wall time ends at its exit."""
    deadline = time.monotonic() + PULL_TIMEOUT_S
    with ThreadPoolExecutor(max_workers=max(1, len(pulls))) as pool:
        return list(pool.map(lambda p: p.wait(deadline), pulls))


def upstream_bytes(hub: FakeHub, files: dict[str, bytes]) -> int:
    """What the CDN sent of these files (keyed by content: paths repeat across repos)."""
    return sum(hub.cdn_bytes(sha(c)) for c in files.values() if len(c) >= LFS_BYTES)


def add_model(
    hub: FakeHub, repo: str, n_files: int, file_bytes: int
) -> tuple[str, dict[str, bytes]]:
    """A model of ``n_files`` LFS files (content unique to ``repo``) and a small config."""
    seed = int(sha(repo.encode())[:8], 16)
    files = {f"model-{i}.safetensors": blob(file_bytes, seed=seed + i) for i in range(n_files)}
    files["config.json"] = b'{"model_type": "fleet"}'
    return hub.add_repo(repo, files, lfs_threshold=LFS_BYTES), files


def assert_every_node_has(
    nodes: list[Node], repo: str, commit: str, files: dict[str, bytes]
) -> None:
    for node in nodes:
        for path, content in files.items():
            got = node.snapshot_bytes(repo, commit, path)
            assert got == content, f"node {node.index}: {path} differs"


def stop_all(nodes: list[Node]) -> None:
    for node in nodes:
        if node.serve is not None and node.serve.proc.poll() is None:
            node.serve.stop()


def serve_warnings(nodes: list[Node]) -> str:
    """What the services logged above INFO (shown when a fleet test fails)."""
    lines = []
    for node in nodes:
        if node.serve is not None:
            lines += [
                f"node{node.index}: {line}"
                for line in node.serve.output().splitlines()
                if "WARNING" in line or "ERROR" in line or "rror" in line
            ]
    return "\n".join(lines[-40:])


def notices(pulls: list[Pull]) -> list[str]:
    """What the pulls noticed (peers left out, and why)."""
    return [
        f"node{p.node.index}: {x['message']}"
        for p in pulls
        for x in p.lines
        if x.get("event") == "notice"
    ]
