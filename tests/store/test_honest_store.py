"""The store tells the truth (issue 13): a failed pull is partial everywhere (the CLI, the REST
API the web page reads), 'rm' asks or refuses and spares pinned models, and a model that is not
in the store is named as such, not as a web address that is gone.

CLI tests run ``modelhaul`` as a user does; the REST test runs the real service
(tests/support/server_harness.py) against the fault-injecting origin.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import modelhaul_cmd
from helpers import blob, sha
from origin import Origin
from server_harness import EventReader, KiB, ServerThread, service_config

pytestmark = pytest.mark.timeout(120)

CONFIG = b'{"model_type": "fake"}'
TOKENIZER = b'{"vocab": ["a", "b"]}'
WEIGHTS = blob(200 * KiB, 13)


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        lines = [json.loads(line) for line in self.stdout.splitlines() if line.strip()]
        assert lines, f"no JSON output (exit {self.code}); stderr:\n{self.stderr}"
        assert lines[-1]["event"] == "result", lines[-1]
        return lines[-1]


def run_cli(*args: str, stdin: str | None = "") -> CliRun:
    """The CLI with stdin a pipe (never a terminal), as in a script or CI job."""
    proc = subprocess.run(
        modelhaul_cmd(*args),
        input=stdin,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


def cache_root() -> Path:
    return Path(os.environ["HF_HUB_CACHE"])


def manifest(origin: Origin, name: str = "acme/model", *, bad_digest: bool = False) -> dict:
    """Three files; with ``bad_digest`` the weights' listed SHA-256 is not what is served."""
    files = []
    for path, data in (
        ("config.json", CONFIG),
        ("tokenizer.json", TOKENIZER),
        ("model.safetensors", WEIGHTS),
    ):
        origin.add_file(path, data)
        files.append(
            {"path": path, "size": len(data), "sha256": sha(data), "url": origin.url(path)}
        )
    if bad_digest:
        files[2]["sha256"] = sha(b"what the publisher promised")
    return {"name": name, "files": files}


def pull(tmp_path: Path, data: dict[str, Any]) -> CliRun:
    path = tmp_path / f"{data['name'].replace('/', '-')}.json"
    path.write_text(json.dumps(data))
    return run_cli("pull", str(path), "--json")


def ls() -> dict[str, dict[str, Any]]:
    run = run_cli("ls", "--json")
    assert run.code == 0, run.stderr
    return {m["name"]: m for m in json.loads(run.stdout)}


@pytest.fixture
def stored(tmp_path: Path, origin: Origin) -> str:
    """A complete model in the store."""
    run = pull(tmp_path, manifest(origin))
    assert run.code == 0, run.stderr
    assert ls()["acme/model"]["status"] == "ready"
    return "acme/model"


# ---------------------------------------------------------------------------------- failed pulls


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(service_config(tmp_path)) as s:
        yield s


def test_the_service_reports_a_failed_pull_as_partial(server: ServerThread, origin: Origin) -> None:
    events = EventReader(server.url)
    try:
        with server.client() as api:
            job = api.post("/api/pulls", json={"manifest": manifest(origin, bad_digest=True)})
            failed = events.wait_download(job.json()["id"], "failed", timeout_s=60)
            assert failed["error"]["category"] == "integrity"

            store = api.get("/api/models").json()
    finally:
        events.close()

    (model,) = [m for m in store["models"] if m["name"] == "acme/model"]
    assert model["status"] == "partial", "2 of 3 files and no ref is not ready"
    assert model["files"] == 2 and model["files_listed"] == 3
    # The CLI reads the same store the same way.
    assert ls()["acme/model"]["status"] == "partial"


# ---------------------------------------------------------------------------------- rm


def test_rm_without_a_terminal_to_ask_refuses_without_yes(stored: str) -> None:
    run = run_cli("rm", stored, "--json")

    assert run.code == 2
    assert "--yes" in run.stderr and "Traceback" not in run.stderr
    assert run.result["status"] == "failed"
    assert run.result["error"]["category"] == "invalid_input"
    assert stored in ls(), "nothing is removed without confirmation"

    done = run_cli("rm", stored, "--yes", "--json")

    assert done.code == 0, done.stderr
    assert done.result["freed"] > 0 and stored not in ls()


def test_rm_never_removes_a_pinned_model_without_force(stored: str) -> None:
    assert run_cli("pin", stored).code == 0

    run = run_cli("rm", stored, "--yes")

    assert run.code == 2
    assert "pinned" in run.stderr and "--force" in run.stderr
    assert stored in ls()

    forced = run_cli("rm", stored, "--yes", "--force")

    assert forced.code == 0, forced.stderr
    assert stored not in ls()


def test_the_service_refuses_to_remove_a_pinned_model_without_force(
    server: ServerThread, stored: str
) -> None:
    with server.client() as api:
        assert api.post("/api/models/pin", json={"name": stored}).json()["pinned"] is True

        refused = api.post("/api/models/remove", json={"name": stored})
        assert refused.status_code == 409
        assert "pinned" in refused.json()["error"]["message"]
        assert stored in ls()

        removed = api.post("/api/models/remove", json={"name": stored, "force": True})
        assert removed.status_code == 200 and removed.json()["freed"] > 0
    assert stored not in ls()


# ---------------------------------------------------------------------------------- not in the store


@pytest.mark.parametrize("command", ["pin", "unpin", "rm"])
def test_a_model_not_in_the_store_is_named_as_such(command: str) -> None:
    run = run_cli(command, "acme/none")

    assert run.code == 2
    assert "acme/none is not in the store" in run.stderr
    assert "`modelhaul ls` lists what is" in run.stderr
    assert "browser" not in run.stderr and "server" not in run.stderr

    as_json = run_cli(command, "acme/none", "--json")

    assert as_json.code == 2
    assert as_json.result["status"] == "failed"
    assert as_json.result["error"]["category"] == "not_found"
    assert "acme/none" in as_json.result["error"]["message"]


def test_rm_of_a_revision_not_in_the_store_is_named_as_such(stored: str) -> None:
    run = run_cli("rm", f"{stored}@v9", "--yes")

    assert run.code == 2
    assert "revision 'v9'" in run.stderr and "not in the store" in run.stderr
    assert "browser" not in run.stderr
    assert stored in ls()


def test_verify_of_a_model_not_in_the_store_gets_the_store_words() -> None:
    run = run_cli("verify", "acme/none")

    assert run.code == 1
    assert "acme/none is not in the store" in run.stderr
    assert "browser" not in run.stderr and "server" not in run.stderr


@pytest.mark.parametrize(("answer", "code", "kept"), [("n", 1, True), ("y", 0, False)])
def test_rm_at_a_terminal_asks_first(stored: str, answer: str, code: int, kept: bool) -> None:
    import pty

    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        modelhaul_cmd("rm", stored),
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        os.write(controller, f"{answer}\n".encode())
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(terminal)
        os.close(controller)

    assert proc.returncode == code, err
    assert (stored in ls()) is kept
