"""``get``/``pull --via-server`` say what is so (issue 13): Ctrl-C stops only the client, so it
says the download goes on in the service and how to stop it; a download cancelled from
elsewhere ends the client as a cancel does; the progress shows the open connections."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import cli_env, modelhaul_cmd
from origin import Fault, Origin
from server_harness import KiB, MiB, ServerThread, service_config, wait_until

pytestmark = pytest.mark.timeout(90)

RUN_TIMEOUT_S = 60


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(service_config(tmp_path)) as s:
        yield s


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def start_cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        modelhaul_cmd(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=cwd,
    )


def slow_request(kind: str, origin: Origin, tmp_path: Path, name: str) -> list[str]:
    """The command line of a ``get`` or a ``pull`` (of a one-file manifest) of a slow file."""
    data = random.Random(name).randbytes(4 * MiB)
    origin.add_file(name, data)
    origin.set_default(name, Fault(rate_bytes_per_s=128 * KiB))
    if kind == "get":
        return ["get", origin.url(name), "-o", name]
    manifest = tmp_path / f"{name}.toml"
    manifest.write_text(
        f'name = "acme/{name.split(".")[0]}"\n[[files]]\npath = "{name}"\n'
        f'size = {len(data)}\nsha256 = "{hashlib.sha256(data).hexdigest()}"\n'
        f'url = "{origin.url(name)}"\n'
    )
    return ["pull", str(manifest)]


def the_download(server: ServerThread) -> dict[str, Any]:
    with server.client() as api:
        return wait_until(
            lambda: next(iter(api.get("/api/downloads").json()["downloads"]), None),
            what="the download queued",
        )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("kind", ["get", "pull"])
def test_ctrl_c_says_the_download_goes_on_in_the_service(
    kind: str, server: ServerThread, origin: Origin, tmp_path: Path
) -> None:
    name = f"on-{kind}.bin"
    args = slow_request(kind, origin, tmp_path, name)
    proc = start_cli(*args, "--via-server", "--server", server.url, "--json", cwd=tmp_path)
    try:
        job = the_download(server)
        origin.wait_bytes(name, 64 * KiB)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        stop(proc)

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "partial data was kept" not in stderr and "resume" not in stderr, stderr
    said = stderr.strip().splitlines()[-1]
    assert said.startswith(f"modelhaul: interrupted; download {job['id']} goes on in the service")
    assert f"'modelhaul cancel {job['id']} --server {server.url}' stops it" in said, said
    result = json_lines(stdout)[-1]
    assert result["event"] == "result" and result["error"]["category"] == "cancelled"
    assert "goes on in the service" in result["error"]["message"]
    assert "resume" not in result["error"]["hint"] and "kept" not in result["error"]["hint"]

    # It does go on: the origin keeps serving it, and the service still holds it.
    served = origin.bytes_served(name)
    origin.wait_bytes(name, served + 64 * KiB)
    with server.client() as api:
        assert api.get(f"/api/downloads/{job['id']}").json()["state"] == "running"
        api.post(f"/api/downloads/{job['id']}/cancel")


@pytest.mark.parametrize("kind", ["get", "pull"])
def test_a_download_cancelled_elsewhere_ends_the_client_as_cancelled(
    kind: str, server: ServerThread, origin: Origin, tmp_path: Path
) -> None:
    name = f"cancel-{kind}.bin"
    args = slow_request(kind, origin, tmp_path, name)
    proc = start_cli(*args, "--via-server", "--server", server.url, "--json", cwd=tmp_path)
    try:
        job = the_download(server)
        origin.wait_bytes(name, 64 * KiB)
        with server.client() as api:
            assert api.post(f"/api/downloads/{job['id']}/cancel").json()["state"] == "cancelled"
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        stop(proc)

    # As 'get' without --via-server ends for a cancelled download: 130, not a failure.
    assert proc.returncode == 130, stderr
    assert f"download {job['id']} was cancelled" in stderr
    result = json_lines(stdout)[-1]
    assert result["status"] == "cancelled" and result["error"]["category"] == "cancelled"


def test_progress_shows_open_connections_not_files(
    server: ServerThread, origin: Origin, tmp_path: Path
) -> None:
    data = random.Random(4).randbytes(2 * MiB)
    origin.add_file("conns.bin", data)
    # No byte for a while, then slowly: the service has the download and no connection yet.
    origin.set_default("conns.bin", Fault(delay_s=1.0, rate_bytes_per_s=512 * KiB))
    proc = start_cli(
        "get",
        origin.url("conns.bin"),
        "-o",
        "conns.bin",
        "--via-server",
        "--server",
        server.url,
        "--json",
        cwd=tmp_path,
    )
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        stop(proc)
    assert proc.returncode == 0, stderr
    progress = [e for e in json_lines(stdout) if e["event"] == "progress"]
    assert progress, stdout
    # Before the origin answered, none was open (the view's one file is not a connection).
    assert progress[0]["bytes_done"] == 0 and progress[0]["connections"] == 0, progress[0]
    assert any(p["connections"] >= 1 for p in progress), progress
    assert (tmp_path / "conns.bin").read_bytes() == data
