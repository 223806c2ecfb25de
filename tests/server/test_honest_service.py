"""The service and its CLI client say what is so (issue 13): a pull through the service ends
with its real result, files land where the user asked (the service's own user on loopback) or
in the download directory (anyone else), a cancel answers once it has taken effect and says
what it did, and every REST error has the API's one shape."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import ipaddress
import json
import os
import pty
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import cli_env, modelhaul_cmd
from modelhaul.events import State
from modelhaul.server.security import AccessPolicy
from modelhaul.server.service import Service
from origin import Fault, Origin
from server_harness import KiB, MiB, ServerThread, service_config, wait_state, wait_until

pytestmark = pytest.mark.timeout(90)

TOKEN = "honest-" * 8
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\r\x07]")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        modelhaul_cmd(*args), capture_output=True, text=True, env=cli_env(), timeout=60, cwd=cwd
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(service_config(tmp_path)) as s:
        yield s


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[ServerThread]:
    """A service whose bind address is not loopback (it listens on 127.0.0.1 all the same, as
    tests must): the rules of a service reachable from other machines."""
    policy = AccessPolicy(bind_host="10.0.0.1", token=TOKEN)
    with ServerThread(service_config(tmp_path), policy) as s:
        yield s


def write_manifest(path: Path, origin: Origin, name: str, data: bytes) -> Path:
    origin.add_file(name, data)
    path.write_text(
        f'name = "acme/{name.split(".")[0]}"\n[[files]]\npath = "{name}"\n'
        f'size = {len(data)}\nsha256 = "{hashlib.sha256(data).hexdigest()}"\n'
        f'url = "{origin.url(name)}"\n'
    )
    return path


# ---------------------------------------------------------------------- item 5: pull results


def test_pull_manifest_via_server_without_a_terminal(
    server: ServerThread, origin: Origin, tmp_path: Path
) -> None:
    data = random.Random(5).randbytes(200 * KiB)
    manifest = write_manifest(tmp_path / "model.toml", origin, "m.bin", data)
    r = run_cli("pull", str(manifest), "--via-server", "--server", server.url)
    assert r.returncode == 0, r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    summary = r.stderr.strip().splitlines()[-1]
    match = re.fullmatch(
        r"modelhaul: acme/m@[0-9a-f]{12}: 1 fetched, 0 already present -> (.+)", summary
    )
    assert match, r.stderr
    assert (Path(match[1]) / "m.bin").read_bytes() == data


def run_on_terminal(args: list[str], timeout_s: float = 60) -> tuple[int, str]:
    """The CLI with its stderr on a pseudo-terminal, as a person runs it; (status, screen text)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
    proc = subprocess.Popen(
        modelhaul_cmd(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=cli_env(COLUMNS="150", TERM="xterm"),
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    return code, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_pull_via_server_on_a_terminal_ends_at_the_real_size(
    server: ServerThread, origin: Origin, tmp_path: Path
) -> None:
    data = random.Random(6).randbytes(300 * KiB)
    manifest = write_manifest(tmp_path / "bar.toml", origin, "bar.bin", data)
    code, screen = run_on_terminal(["pull", str(manifest), "--via-server", "--server", server.url])
    assert code == 0, screen
    # The bar's last frame: all 300 KiB of 300 KiB, never the "0/0 bytes" of a lost total.
    assert "300.0/300.0 KiB" in screen, screen
    assert "0/0 bytes" not in screen, screen
    assert re.search(r"acme/bar@[0-9a-f]{12}: 1 fetched, 0 already present -> ", screen), screen


# ---------------------------------------------------------------------- item 10: where files go


def test_get_via_server_lands_where_get_would(
    server: ServerThread, origin: Origin, tmp_path: Path
) -> None:
    data = random.Random(10).randbytes(150 * KiB)
    origin.add_file("w.bin", data)
    work = tmp_path / "work"
    work.mkdir()
    url = origin.url("w.bin")

    r = run_cli("get", url, "-o", "sub/named.bin", "--via-server", "--server", server.url, cwd=work)
    assert r.returncode == 0, r.stderr
    assert (work / "sub" / "named.bin").read_bytes() == data
    assert f"saved as {work / 'sub' / 'named.bin'}" in r.stderr

    r = run_cli("get", url, "-d", "folder", "--via-server", "--server", server.url, cwd=work)
    assert r.returncode == 0, r.stderr
    assert (work / "folder" / "w.bin").read_bytes() == data  # named by the server, in -d

    elsewhere = tmp_path / "elsewhere" / "new"
    r = run_cli(
        "get", url, "-o", str(elsewhere / "abs.bin"), "--via-server", "--server", server.url
    )
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "abs.bin").read_bytes() == data
    assert not list(server.config.download_dir.rglob("*.bin"))  # nothing went there

    r = run_cli("get", url, "-o", "/proc/self/x.bin", "--via-server", "--server", server.url)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[0] == (
        "modelhaul: error: out: the service's user may not write to /proc/self"
    )


def test_a_service_bound_elsewhere_keeps_files_in_its_download_directory(
    elsewhere: ServerThread, origin: Origin, tmp_path: Path
) -> None:
    origin.add_file("e.bin", b"e" * 5000)
    url = origin.url("e.bin")
    folder = elsewhere.config.download_dir
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with elsewhere.client(headers=auth) as api:
        assert api.get("/api/health").json()["local_paths"] is False
        target = tmp_path / "abs.bin"
        for body, field in [
            ({"url": url, "out": str(target)}, "out"),
            ({"url": url, "dir": str(tmp_path)}, "dir"),
            ({"url": url, "out": "/etc/passwd"}, "out"),
        ]:
            r = api.post("/api/downloads", json=body)
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["category"] == "invalid_input"
            assert (
                error["message"].startswith(f"{field}: ")
                and "download directory" in error["message"]
            ), error
        assert not target.exists()

    work = tmp_path / "work"
    work.mkdir()
    r = run_cli(
        "get",
        url,
        "-o",
        "sub/e.bin",
        "--via-server",
        "--server",
        elsewhere.url,
        "--token",
        TOKEN,
        cwd=work,
    )
    assert r.returncode == 0, r.stderr
    assert (folder / "sub" / "e.bin").read_bytes() == b"e" * 5000
    assert not (work / "sub").exists()
    assert f"the service writes into its directory {folder}" in r.stderr
    assert f"saved as {folder / 'sub' / 'e.bin'}" in r.stderr
    r = run_cli(
        "get", url, "-o", "../e.bin", "--via-server", "--server", elsewhere.url, "--token", TOKEN
    )
    assert r.returncode == 2 and "download directory" in r.stderr, r.stderr


def _http_as_user(uid: int, port: int, requests: list[bytes], timeout_s: float = 20) -> list[bytes]:
    """Send each raw request on its own connection from a child running as ``uid``; the raw
    answers. A forked child, not a new interpreter: another user may not read this one."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: raw sockets only, then _exit (no cleanup of the parent's state)
        status = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            answers = []
            for raw in requests:
                with socket.socket() as s:
                    s.settimeout(timeout_s)
                    s.connect(("127.0.0.1", port))
                    s.sendall(raw)
                    answer = b""
                    while chunk := s.recv(65536):
                        answer += chunk
                answers.append(answer.hex())
            os.write(write_fd, json.dumps(answers).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    out = b""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if select.select([read_fd], [], [], 0.5)[0]:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                out += chunk
    finally:
        os.close(read_fd)
        if os.waitpid(pid, os.WNOHANG)[0] == 0:  # still there after the deadline
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return [bytes.fromhex(a) for a in json.loads(out or b"[]")]


def _raw(method: str, path: str, port: int, body: dict[str, object] | None = None) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_a_loopback_service_refuses_another_users_absolute_paths(
    server: ServerThread, origin: Origin, tmp_path: Path
) -> None:
    origin.add_file("o.bin", b"o" * 100)
    port = urlsplit(server.url).port
    assert port is not None
    target = tmp_path / "theirs.bin"
    health, refused = _http_as_user(
        65534,
        port,
        [
            _raw("GET", "/api/health", port),
            _raw("POST", "/api/downloads", port, {"url": origin.url("o.bin"), "out": str(target)}),
        ],
    )
    assert b'"local_paths":false' in health.replace(b" ", b""), health
    assert refused.startswith(b"HTTP/1.1 400"), refused
    assert b"download directory" in refused, refused
    assert not target.exists()


def test_peer_uid_of_a_real_loopback_connection() -> None:
    from modelhaul.server.peer import parse_endpoint, peer_uid

    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as client,
    ):
        conn, _ = listener.accept()
        with conn:
            assert peer_uid(client.getsockname(), conn.getsockname()) == os.geteuid()
            # A connection that does not exist has no user.
            assert peer_uid(("127.0.0.1", 1), conn.getsockname()) is None
    little = sys.byteorder == "little"  # the kernel prints address words in host order
    loopback = ipaddress.ip_address("127.0.0.1")
    assert parse_endpoint("0100007F:1F90" if little else "7F000001:1F90") == (loopback, 8080)
    mapped = "0000000000000000FFFF00000100007F" if little else "00000000000000000000FFFF7F000001"
    assert parse_endpoint(f"{mapped}:0050") == (loopback, 80)
    assert parse_endpoint("junk") is None


def test_paths_are_trusted_only_on_loopback() -> None:
    me = ("127.0.0.1", 1)
    assert not AccessPolicy(bind_host="0.0.0.0").trusts_paths_of(me, ("127.0.0.1", 2))
    assert not AccessPolicy(bind_host="127.0.0.1", local_paths=False).trusts_paths_of(
        me, ("127.0.0.1", 2)
    )
    assert not AccessPolicy(bind_host="127.0.0.1").trusts_paths_of(None, ("127.0.0.1", 2))
    assert not AccessPolicy(bind_host="127.0.0.1").trusts_paths_of(("10.1.1.1", 1), me)


# ---------------------------------------------------------------------- item 10: cancel


def test_cancel_answers_cancelled_and_the_client_says_what_happened(
    server: ServerThread, origin: Origin, tmp_path: Path
) -> None:
    origin.add_file("c.bin", random.Random(11).randbytes(4 * MiB))
    origin.set_default("c.bin", Fault(rate_bytes_per_s=128 * KiB))
    work = tmp_path / "work"
    work.mkdir()
    follower = subprocess.Popen(
        modelhaul_cmd(
            "get", origin.url("c.bin"), "-o", "c.bin", "--via-server", "--server", server.url
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=work,
    )
    try:
        with server.client() as api:
            job = wait_until(
                lambda: next(iter(api.get("/api/downloads").json()["downloads"]), None),
                what="the download queued",
            )
            origin.wait_bytes("c.bin", 64 * KiB)
            wait_until(lambda: list(work.glob("*.modelhaul.part")), what="partial data")
            r = run_cli("cancel", job["id"], "--server", server.url)
            assert r.returncode == 0, r.stderr
            assert r.stdout == f"cancelled {job['id']}: c.bin (cancelled)\n"
            assert not list(work.iterdir())  # the partial data and journal are gone
        _, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(10)
    assert follower.returncode == 130, err  # cancelled, as for get without --via-server
    assert f"download {job['id']} was cancelled; its partial data was deleted" in err
    assert "kept" not in err, err


def test_cancel_answers_with_the_state_after_it(server: ServerThread, origin: Origin) -> None:
    data = b"s" * (2 * MiB)
    for name in ("slow.bin", "slow-model.bin"):
        origin.add_file(name, data)
        origin.set_default(name, Fault(rate_bytes_per_s=128 * KiB))
    manifest = {
        "name": "acme/slow",
        "files": [
            {
                "path": "slow-model.bin",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "url": origin.url("slow-model.bin"),
            }
        ],
    }
    with server.client() as api:
        url_job = api.post("/api/downloads", json={"url": origin.url("slow.bin"), "out": "s.bin"})
        model_job = api.post("/api/pulls", json={"manifest": manifest})
        assert url_job.status_code == model_job.status_code == 201
        origin.wait_bytes("slow.bin", 32 * KiB)
        origin.wait_bytes("slow-model.bin", 32 * KiB)
        for job, gone in [(url_job, "its partial data"), (model_job, "files in flight")]:
            view = api.post(f"/api/downloads/{job.json()['id']}/cancel").json()
            assert view["state"] == "cancelled", view
            error = view["error"]
            assert error["category"] == "cancelled"
            assert f"{gone} was deleted" in error["message"] and "kept" not in error["hint"]
    assert not list(server.config.download_dir.iterdir())


# ---------------------------------------------------------------------- item 22: REST errors


def test_rest_errors_have_one_shape(server: ServerThread) -> None:
    with server.client() as api:
        cases = [
            (api.post("/api/pulls", json={"sourc": "x"}), 422, "invalid_input", "sourc"),
            (api.post("/api/downloads", json={"url": "ftp://x/y"}), 422, "invalid_input", "url"),
            (api.put("/api/limit", json={"rate": -1}), 422, "invalid_input", "rate"),
            (api.get("/api/downloads/not-an-id"), 422, "invalid_input", "download_id"),
            (api.post("/api/downloads", content=b"{no"), 422, "invalid_input", "body"),
            (api.get("/api/nope"), 404, "not_found", "/api/nope"),
            (api.delete("/api/limit"), 405, "client_error", "DELETE"),
            (api.get("/api/downloads/42"), 404, "not_found", "42"),
        ]
        for r, status, category, named in cases:
            assert r.status_code == status, (r.request.url, r.text)
            body = r.json()
            assert list(body) == ["error"], body
            assert body["error"]["category"] == category, body
            assert named in body["error"]["message"], body
            assert body["error"]["hint"], body
        schema = api.get("/openapi.json").text
    assert "HTTPValidationError" not in schema  # 422 is documented as the API's error


def test_pull_from_a_manifest_path(server: ServerThread, origin: Origin, tmp_path: Path) -> None:
    data = random.Random(22).randbytes(64 * KiB)
    manifest = write_manifest(tmp_path / "path.toml", origin, "path.bin", data)
    with server.client() as api:
        r = api.post("/api/pulls", json={"source": str(manifest)})
        assert r.status_code == 201, r.text
        assert r.json()["source"] == str(manifest)
        done = wait_state(api, r.json()["id"], ("completed", "failed"))
        assert done["state"] == "completed", done
        assert done["name"] == "acme/path"
        assert (Path(done["result"]["path"]) / "path.bin").read_bytes() == data
        for source, words in [
            ("path.toml", "not absolute"),
            (str(tmp_path / "missing.toml"), "no readable manifest"),
        ]:
            r = api.post("/api/pulls", json={"source": source})
            assert r.status_code == 400, r.text
            assert words in r.json()["error"]["message"]


def test_a_service_bound_elsewhere_reads_no_manifest_path(
    elsewhere: ServerThread, origin: Origin, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path / "far.toml", origin, "far.bin", b"f" * 100)
    with elsewhere.client(headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        r = api.post("/api/pulls", json={"source": str(manifest)})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["category"] == "invalid_input" and "manifest path" in error["message"]
        assert "inline" in error["hint"]
        assert api.get("/api/downloads").json() == {"downloads": []}


def test_client_reads_the_new_error_shape(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url) as api:
        assert "detail" not in api.post("/api/pulls", json={}).json()
    r = run_cli("priority", "x1", "3", "--server", server.url)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[0].startswith("modelhaul: error: download_id: ")


# ---------------------------------------------------------------------- a resume is never lost


async def _wait_async(condition: Any, timeout_s: float, what: str) -> None:
    """Poll ``condition`` on the running loop (the service's own) until it holds; bounded."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("kind", ["url", "model"])
async def test_a_resume_sent_while_a_pause_winds_down_is_not_lost(
    kind: str, origin: Origin, tmp_path: Path
) -> None:
    data = random.Random(61).randbytes(4 * MiB)
    origin.add_file("race.bin", data)
    service = Service(service_config(tmp_path))
    await service.start()
    try:
        # Slow while the loop runs, so the download is mid-transfer at every pause.
        service.set_limit(256 * KiB)
        if kind == "url":
            view, _ = service.add_url(origin.url("race.bin"), out="race.bin")
        else:
            entry = {"path": "race.bin", "size": len(data), "url": origin.url("race.bin")}
            entry["sha256"] = hashlib.sha256(data).hexdigest()
            view, _ = service.add_model(manifest={"name": "acme/race", "files": [entry]})
        download_id = view["id"]

        def received() -> int:
            return sum(i.bytes_done for i in service.manager.tasks())

        def transferring_past(before: int) -> bool:
            tasks = service.manager.tasks()
            return (
                bool(tasks) and all(i.state is State.RUNNING for i in tasks) and received() > before
            )

        for turn in range(12):
            before = received()
            # Paused mid-transfer: running again, with bytes since the last pause.
            await _wait_async(
                partial(transferring_past, before), 20, f"turn {turn}: running after the resume"
            )
            service.pause(download_id)
            # Resumed at once, or a few steps of the loop later: somewhere in the pause's
            # winding down (its transfer cancelled, not yet stopped).
            for _ in range(turn % 3):
                await asyncio.sleep(0)
            service.resume(download_id)
        service.set_limit(None)
        await _wait_async(
            lambda: service.download(download_id)["state"] in ("completed", "failed"),
            30,
            "the download to finish",
        )
        assert service.download(download_id)["state"] == "completed"
        assert received() == len(data)
    finally:
        await service.close()
