"""The CLI as a client of a running service: queue, pause, resume, cancel, priority, limit,
get/pull --via-server, the token, and the one-line error when no service runs."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import cli_env, modelhaul_cmd
from modelhaul.cli import via_server
from modelhaul.cli.main import build_parser, main
from modelhaul.errors import InvalidInput
from origin import Fault, Origin
from server_harness import FINAL, KiB, MiB, ServerProcess, ServerThread, service_config, wait_state

pytestmark = pytest.mark.timeout(90)


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        modelhaul_cmd(*args),
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=60,
        cwd=cwd,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(service_config(tmp_path)) as s:
        yield s


def test_clear_error_when_no_service_runs(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args, env in [
        (("queue", "--server", url), None),
        (("pause", "1"), cli_env(MODELHAUL_SERVER=url)),
        (("limit", "1M", "--server", url), None),
    ]:
        r = run_cli(*args, env=env)
        assert r.returncode == 1, r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 2, r.stderr
        assert lines[0].startswith(f"modelhaul: error: no modelhaul service is running at {url}")
        assert lines[1] == (
            "  hint: Start one with 'modelhaul serve', or point --server (or MODELHAUL_SERVER) "
            "at a running one."
        )
        assert "Traceback" not in r.stderr and r.stdout == ""


def cli(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in this process (the same main() as the subprocess runs, minus the interpreter
    start-up, which costs more than a second a call)."""
    capfd.readouterr()
    code = main(list(args))
    out, err = capfd.readouterr()
    return code, out, err


def test_queue_and_steering(
    server: ServerThread, origin: Origin, capfd: pytest.CaptureFixture[str]
) -> None:
    origin.add_file("c.bin", random.Random(1).randbytes(4 * MiB))
    origin.set_default("c.bin", Fault(rate_bytes_per_s=256 * KiB))
    url = server.url
    with server.client() as api:
        job = api.post(
            "/api/downloads", json={"url": origin.url("c.bin"), "out": "c.bin", "paused": True}
        ).json()
        jid = job["id"]

        r = run_cli("queue", "--json", "--server", url)  # once as a real process
        assert r.returncode == 0, r.stderr
        assert [(d["id"], d["state"]) for d in json.loads(r.stdout)] == [(jid, "paused")]
        code, out, _ = cli(capfd, "queue", "--server", url)
        assert code == 0 and "c.bin" in out and "paused" in out

        code, out, _ = cli(capfd, "resume", jid, "--server", url)
        assert code == 0 and out.startswith(f"resumed {jid}: c.bin"), out
        origin.wait_bytes("c.bin", 64 * KiB)
        code, out, _ = cli(capfd, "pause", jid, "--json", "--server", url)
        assert code == 0 and json.loads(out)["state"] == "paused", out
        code, out, _ = cli(capfd, "priority", jid, "7", "--server", url)
        assert code == 0 and out.startswith(f"priority 7 for {jid}"), out
        assert api.get(f"/api/downloads/{jid}").json()["priority"] == 7

        assert cli(capfd, "limit", "3M", "--server", url)[:2] == (0, "limit: 3.0 MiB/s\n")
        assert api.get("/api/limit").json() == {"rate_bytes_per_s": 3 * MiB}
        code, out, _ = cli(capfd, "limit", "--json", "--server", url)
        assert json.loads(out) == {"rate_bytes_per_s": 3 * MiB}
        assert cli(capfd, "limit", "none", "--server", url)[1] == "limit: unlimited\n"
        code, _, err = cli(capfd, "limit", "fast", "--server", url)
        assert code == 2 and "bad rate" in err

        code, out, _ = cli(capfd, "cancel", jid, "--server", url)
        assert code == 0 and "cancelled" in out, out
        assert wait_state(api, jid, FINAL)["state"] == "cancelled"
        code, _, err = cli(capfd, "resume", jid, "--server", url)
        assert code == 1
        assert err.startswith(f"modelhaul: error: download {jid} is cancelled")
        assert "hint: Add it again" in err

    code, _, err = cli(capfd, "pause", "999", "--server", url)
    assert code == 1
    assert err.splitlines()[0] == "modelhaul: error: no download with id '999'"
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as usage:
        cli(capfd, "priority", "1", "high", "--server", url)
    assert usage.value.code == 2


def test_token_from_the_state_dir_and_refused_without(tmp_path: Path, state_dir: Path) -> None:
    server = ServerProcess(tmp_path, "--require-token")
    try:
        assert server.listening["token_required"] is True
        token_file = state_dir / "server-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        with server.client() as api:
            assert api.get("/api/downloads").status_code == 401
            auth = {"Authorization": f"Bearer {token}"}
            assert api.get("/api/downloads", headers=auth).json() == {"downloads": []}
        # On this machine's loopback the CLI finds the token file by itself.
        r = run_cli("queue", "--server", server.url)
        assert r.returncode == 0, r.stderr
        r = run_cli("queue", "--server", server.url, env=cli_env(MODELHAUL_TOKEN="wrong"))
        assert r.returncode == 1
        assert r.stderr.startswith(
            f"modelhaul: error: the service at {server.url} needs its access token"
        )
        assert "MODELHAUL_TOKEN" in r.stderr and "Traceback" not in r.stderr
    finally:
        server.stop()


def _parser_with_via_server() -> argparse.ArgumentParser:
    """The real parser; --via-server added to get/pull if cli/get.py and cli/models.py do not
    wire it yet (see via_server.add_via_server_option)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("get", "pull"):
        p = sub.choices[name]
        if not any("--via-server" in a.option_strings for a in p._actions):
            via_server.add_via_server_option(p)
    return parser


async def test_get_via_server(
    server: ServerThread,
    origin: Origin,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    data = random.Random(2).randbytes(700 * KiB)
    origin.add_file("v.bin", data)
    parser = _parser_with_via_server()
    local = parser.parse_args(["get", origin.url("v.bin")])
    assert await via_server.maybe_via_server(local) is None  # without the flag: runs locally

    args = parser.parse_args(
        [
            "get",
            "--via-server",
            "--server",
            server.url,
            "--json",
            origin.url("v.bin"),
            "-o",
            "sub/v.bin",
        ]
    )
    assert await via_server.maybe_via_server(args) == 0
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    result = lines[-1]
    assert result["status"] == "completed" and result["size"] == len(data)
    # The service runs as this user on loopback: -o is this process's path, as without
    # --via-server (a confined service: test_honest_service).
    assert (tmp_path / "sub" / "v.bin").read_bytes() == data
    assert result["path"] == str(tmp_path / "sub" / "v.bin")

    missing = parser.parse_args(
        ["get", "--via-server", "--server", server.url, "--json", origin.url("nope.bin")]
    )
    assert await via_server.maybe_via_server(missing) == 1
    result = json.loads(capfd.readouterr().out.splitlines()[-1])
    assert result["status"] == "failed" and result["error"]["category"] == "not_found"

    two = [origin.url("v.bin"), origin.url("n.bin")]
    several = parser.parse_args(["get", "--via-server", "--server", server.url, *two, "-o", "x"])
    with pytest.raises(InvalidInput, match="-o takes one URL"):
        await via_server.maybe_via_server(several)

    nobody = f"http://127.0.0.1:{free_port()}"
    capfd.readouterr()
    unreachable = parser.parse_args(
        ["get", "--via-server", "--server", nobody, "--json", origin.url("v.bin")]
    )
    assert await via_server.maybe_via_server(unreachable) == 1
    out, err = capfd.readouterr()
    assert json.loads(out.splitlines()[-1])["error"]["category"] == "network"
    assert err.splitlines() == [
        f"modelhaul: error: no modelhaul service is running at {nobody} (Connection refused)",
        "  hint: Start one with 'modelhaul serve', or point --server (or MODELHAUL_SERVER) "
        "at a running one.",
    ]


async def test_pull_via_server_sends_a_local_manifest_inline(
    server: ServerThread, origin: Origin, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data = random.Random(3).randbytes(200 * KiB)
    origin.add_file("m.bin", data)
    manifest = tmp_path / "model.toml"
    manifest.write_text(
        'name = "acme/cli"\n[[files]]\npath = "m.bin"\n'
        f'size = {len(data)}\nsha256 = "{hashlib.sha256(data).hexdigest()}"\n'
        f'url = "{origin.url("m.bin")}"\n'
    )
    parser = _parser_with_via_server()
    args = parser.parse_args(
        ["pull", "--via-server", "--server", server.url, "--json", str(manifest)]
    )
    assert await via_server.maybe_via_server(args) == 0
    result = json.loads(capfd.readouterr().out.splitlines()[-1])
    assert result["model"] == "acme/cli" and result["status"] == "completed"
    assert (Path(result["path"]) / "m.bin").read_bytes() == data
    with_local = parser.parse_args(
        ["pull", "--via-server", "--server", server.url, "--local-dir", "x", str(manifest)]
    )
    with pytest.raises(InvalidInput, match="--local-dir"):
        await via_server.maybe_via_server(with_local)


def test_get_via_server_from_the_command_line(
    server: ServerThread, origin: Origin, tmp_path: Path
) -> None:
    r = run_cli("get", "--help")
    assert "--via-server" in r.stdout
    data = random.Random(4).randbytes(300 * KiB)
    origin.add_file("w.bin", data)
    r = run_cli(
        "get",
        "--via-server",
        "--server",
        server.url,
        "--json",
        origin.url("w.bin"),
        "-o",
        "w.bin",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["status"] == "completed"
    assert (tmp_path / "w.bin").read_bytes() == data  # where 'get' would put it
    with httpx.Client(base_url=server.url) as api:
        assert [d["name"] for d in api.get("/api/downloads").json()["downloads"]] == ["w.bin"]


def test_one_service_per_state_directory(server: ServerThread) -> None:
    r = run_cli("serve", "--port", "0")
    assert r.returncode == 1
    assert r.stderr.splitlines()[0].startswith(
        "modelhaul: error: another modelhaul service already runs with the state directory"
    )
    assert "Traceback" not in r.stderr
