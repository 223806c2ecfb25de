"""Start-up: what the real CLI imports before it does anything.

``modelhaul --version`` used to take 0.7-1.0 s because building the parser imported every
command, and with them huggingface_hub, aiohttp and rich. Each test runs the CLI as a user does,
in a subprocess, and reads the list of the modules it had loaded when it exited: the contract is
which modules a command line never loads, not a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from modelhaul.cli.commands import COMMANDS, SUMMARIES
from modelhaul.cli.main import build_parser
from origin import Origin

RUN_TIMEOUT_S = 60
# What a command line that only parses must never pay for.
HEAVY = ("aiohttp", "rich", "huggingface_hub", "fastapi", "uvicorn", "yaml")
ENGINE = ("modelhaul.engine", "modelhaul.http", "modelhaul.manager")


# ``python -m modelhaul.cli.main``, plus a list of every module loaded, written at exit (after
# the command's own sys.exit). -X importtime would not do: it does not see a module loaded with
# importlib.import_module, which is how the command modules are loaded.
TRACER = """
import atexit, json, os, runpy, sys

def dump():
    with open(os.environ["MODELHAUL_TEST_MODULES"], "w") as f:
        json.dump(sorted(sys.modules), f)

atexit.register(dump)
runpy.run_module("modelhaul.cli.main", run_name="__main__", alter_sys=True)
"""


def run_traced(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the CLI with ``args`` as a user does: its result, and every module it imported."""
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "modules.json"
        proc = subprocess.run(
            [sys.executable, "-c", TRACER, *args],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            env={**os.environ, "MODELHAUL_TEST_MODULES": str(listing)},
        )
        return proc, set(json.loads(listing.read_text()))


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """The listed packages (or any module inside them) that were imported."""
    return sorted(p for p in packages if any(m == p or m.startswith(p + ".") for m in modules))


def test_version_imports_no_command_and_nothing_heavy() -> None:
    proc, modules = run_traced("--version")

    assert (proc.returncode, proc.stdout) == (0, "modelhaul 0.1.0\n"), proc.stderr
    assert "modelhaul.cli" in modules  # the report is read
    assert loaded(modules, HEAVY + ENGINE + ("asyncio",)) == []
    assert not {f"modelhaul.cli.{m}" for m in COMMANDS.values()} & modules


def test_version_costs_a_fraction_of_what_it_did() -> None:
    """CPU seconds of the child, not wall time: a busy machine stretches the one far less.
    Loading every command cost 0.6-1.1 CPU-s; without them it is under 0.1."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-m", "modelhaul.cli.main", "--version"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)

    assert proc.returncode == 0, proc.stderr
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu_s < 0.5


def test_help_and_a_mistyped_command_list_every_command_without_loading_one() -> None:
    helped, help_modules = run_traced("--help")
    typo, typo_modules = run_traced("gte", "http://127.0.0.1:9/x")

    assert helped.returncode == 0, helped.stderr
    for name in SUMMARIES:
        assert f"\n    {name} " in helped.stdout
    assert typo.returncode == 2
    assert "invalid choice: 'gte'" in typo.stderr and "'get'" in typo.stderr
    for modules in (help_modules, typo_modules):
        assert loaded(modules, HEAVY + ENGINE) == []
        assert not {f"modelhaul.cli.{m}" for m in COMMANDS.values()} & modules


def test_get_help_loads_neither_the_transport_nor_the_hub_client() -> None:
    proc, modules = run_traced("get", "--help")

    assert proc.returncode == 0, proc.stderr
    assert "--sha256" in proc.stdout and "--connections" in proc.stdout
    assert "modelhaul.cli.get" in modules
    assert loaded(modules, HEAVY + ENGINE) == []


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "get"])
def test_every_commands_help_parses_without_anything_heavy(command: str) -> None:
    proc, modules = run_traced(command, "--help")

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: modelhaul {command} ")
    assert f"modelhaul.cli.{COMMANDS[command]}" in modules
    assert loaded(modules, HEAVY + ENGINE) == []


def test_get_of_a_file_never_imports_huggingface_hub(origin: Origin, tmp_path: Path) -> None:
    data = hashlib.sha256(b"startup").digest() * 1024
    origin.add_file("tiny.bin", data)

    proc, modules = run_traced("get", origin.url("tiny.bin"), "-d", str(tmp_path), "--json")

    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["status"] == "completed"
    assert (tmp_path / "tiny.bin").read_bytes() == data
    assert "aiohttp" in modules  # it did download: the report sees what the transport loads
    assert loaded(modules, ("huggingface_hub", "fastapi", "uvicorn", "yaml")) == []


def test_pull_of_a_manifest_never_imports_huggingface_hub(origin: Origin, tmp_path: Path) -> None:
    files = {"config.json": b'{"model": "tiny"}', "weights.bin": bytes(range(256)) * 64}
    for name, data in files.items():
        origin.add_file(name, data)
    manifest = tmp_path / "model.toml"
    manifest.write_text(
        'name = "acme/tiny"\n'
        + "".join(
            f'[[files]]\npath = "{name}"\nsize = {len(data)}\n'
            f'sha256 = "{hashlib.sha256(data).hexdigest()}"\nurl = "{origin.url(name)}"\n'
            for name, data in files.items()
        )
    )

    proc, modules = run_traced("pull", str(manifest), "--json")

    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["status"] == "completed", result
    snapshot = Path(result["path"])
    for name, data in files.items():
        assert (snapshot / name).read_bytes() == data
    assert "modelhaul.store.pull" in modules
    assert loaded(modules, ("huggingface_hub", "rich", "fastapi", "uvicorn", "yaml")) == []


def _listed(parser: argparse.ArgumentParser) -> list[tuple[str, str | None]]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [(a.dest, a.help) for a in sub._choices_actions]


def test_the_summaries_help_lists_are_what_the_command_modules_register() -> None:
    """``--help`` lists commands from SUMMARIES without importing them: they must not drift."""
    assert list(SUMMARIES) == list(COMMANDS)
    assert _listed(build_parser(["--help"])) == _listed(build_parser())
