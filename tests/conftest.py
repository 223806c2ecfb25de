"""Shared fixtures: a fault-injecting origin, a fake Hub, and an isolated home for state.

Every test gets its own HOME, state directory and Hugging Face cache under tmp_path, so nothing
touches the developer's ~/.cache and tests cannot see each other's completion records or locks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakehub import FakeHub, fakehub_fixture
from origin import Origin, origin_fixture

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MODELHAUL_STATE_DIR", str(home / ".cache" / "modelhaul"))
    monkeypatch.setenv("HF_HOME", str(home / ".cache" / "huggingface"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / ".cache" / "huggingface" / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HF_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,127.0.0.2,localhost")
    return home


@pytest.fixture
def state_dir(isolated_home: Path) -> Path:
    return isolated_home / ".cache" / "modelhaul"


@pytest.fixture
def origin() -> Iterator[Origin]:
    yield from origin_fixture()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    yield from fakehub_fixture()


def modelhaul_cmd(*args: str) -> list[str]:
    """The CLI as a user runs it, from this interpreter's environment."""
    return [sys.executable, "-m", "modelhaul.cli.main", *args]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
