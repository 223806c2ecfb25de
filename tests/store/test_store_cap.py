"""pull records last use, and a store size cap evicts least recently used unpinned models first."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import modelhaul_cmd
from fakehub import FakeHub


def _run(hub: FakeHub, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_ENDPOINT=hub.endpoint)
    return subprocess.run(
        modelhaul_cmd(*args), env=env, capture_output=True, text=True, timeout=120
    )


def _ls(hub: FakeHub) -> dict[str, dict[str, object]]:
    out = _run(hub, "ls", "--json")
    assert out.returncode == 0, out.stderr
    return {m["name"]: m for m in json.loads(out.stdout)}


def test_pull_records_last_use_and_cap_evicts_lru_unpinned(hub: FakeHub, tmp_path: Path) -> None:
    for name in ("org/old", "org/pinned", "org/new"):
        hub.add_repo(name, {"w.bin": os.urandom(3_000_000), "config.json": b"{}"})
    assert _run(hub, "pull", "hf://org/old", "-q").returncode == 0
    assert _run(hub, "pull", "hf://org/pinned", "-q").returncode == 0
    assert _run(hub, "pin", "org/pinned").returncode == 0
    before = _ls(hub)
    assert before["org/old"]["last_used"] is not None
    assert before["org/old"]["last_used_ts"] <= before["org/pinned"]["last_used_ts"]
    # Room for two models only: org/old (least recent, unpinned) must go, org/pinned stays.
    r = _run(hub, "pull", "hf://org/new", "-q", "--max-store-size", "6500000")
    assert r.returncode == 0, r.stderr
    after = _ls(hub)
    assert set(after) == {"org/pinned", "org/new"}
    assert sum(int(m["size"]) for m in after.values()) <= 6_500_000
