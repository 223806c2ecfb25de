"""``modelhaul doctor``: real checks against the fake Hub, a TLS server and real directories.

In-process tests assert on each check's details; subprocess tests on exit statuses, the plain
lines and the --json result, as a user sees them. Tests run as root, where chmod does not stop
writes, so an unwritable cache is a path under a regular file (or under /proc).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import filelock
import pytest
from aiohttp import web

from conftest import modelhaul_cmd
from fakehub import FakeHub
from modelhaul.disk.partials import lock_file_for
from modelhaul.doctor.checks import Check, DoctorConfig
from modelhaul.doctor.hub import parse_source
from modelhaul.doctor.network import check_clock, check_proxy
from modelhaul.doctor.run import run_doctor
from modelhaul.errors import InvalidInput
from modelhaul.sources.hf import HubRef

TOKEN = "hf_doctor_token"
FILES = {"config.json": b'{"model_type": "fake"}', "model.safetensors": bytes(4096)}


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def cache(isolated_home: Path) -> Path:
    return Path(os.environ["HF_HUB_CACHE"])


@pytest.fixture
def model_hub(hub: FakeHub) -> FakeHub:
    hub.add_repo("org/model", FILES)
    hub.set_token(TOKEN)
    return hub


def config_for(hub: FakeHub, cache: Path, **kw: Any) -> DoctorConfig:
    base = DoctorConfig(
        cache_root=cache, endpoint=hub.endpoint, token=TOKEN, timeout_s=5.0, cwd=None
    )
    return replace(base, **kw)


def by_name(checks: list[Check]) -> dict[str, Check]:
    names = [c.name for c in checks]
    assert len(names) == len(set(names)), names
    return {c.name: c for c in checks}


def not_a_dir_cache(tmp_path: Path) -> Path:
    """A cache path nothing can create, even as root: its parent is a regular file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    return blocker / "hub"


# ---------------------------------------------------------------------------------- in-process


async def test_all_good_against_the_fake_hub(model_hub: FakeHub, cache: Path) -> None:
    checks = by_name(await run_doctor(config_for(model_hub, cache), parse_source("hf://org/model")))
    assert list(checks) == [
        "proxy",
        "endpoint",
        "clock",
        "token",
        "source",
        "cache_writable",
        "free_space",
        "symlinks",
        "file_locks",
        "partials",
    ]
    assert all(c.ok is True for c in checks.values()), [c for c in checks.values() if not c.ok]
    endpoint = checks["endpoint"].detail
    assert "address 127.0.0.1" in endpoint and "TCP 127.0.0.1:" in endpoint and "HTTP " in endpoint
    assert checks["clock"].detail == "in step with the server (within 2 s)"
    assert "accepted" in checks["token"].detail
    assert "resolves to commit" in checks["source"].detail
    assert "2 files" in checks["source"].detail
    assert "does not exist yet" in checks["cache_writable"].detail
    # The token went to the Hub, and the doctor left nothing behind in the cache's parent.
    auth = [r for r in model_hub.requests if r.headers.get("authorization")]
    assert auth and all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in auth)
    assert not list(cache.parent.glob(".modelhaul-doctor-*"))


async def test_a_bad_token_fails_the_token_check(model_hub: FakeHub, cache: Path) -> None:
    checks = by_name(await run_doctor(config_for(model_hub, cache, token="hf_wrong")))
    token = checks["token"]
    assert token.ok is False
    assert "rejected" in token.detail and "401" in token.detail
    assert "https://huggingface.co/settings/tokens" in token.fix and "HF_TOKEN" in token.fix
    assert checks["endpoint"].ok is True


async def test_no_token_is_skipped_with_how_to_get_one(model_hub: FakeHub, cache: Path) -> None:
    token = by_name(await run_doctor(config_for(model_hub, cache, token=None)))["token"]
    assert token.ok is None
    assert "no token" in token.detail and "HF_TOKEN" in token.fix


@pytest.mark.parametrize("where", ["under_a_file", "under_proc", "is_a_file"])
async def test_an_unwritable_cache_fails_the_writable_check(
    model_hub: FakeHub, tmp_path: Path, where: str
) -> None:
    if where == "under_a_file":
        root = not_a_dir_cache(tmp_path)
    elif where == "under_proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("needs Linux /proc")
        root = Path(f"/proc/modelhaul-doctor-{os.getpid()}/hub")
    else:
        root = tmp_path / "hub"
        root.write_text("")
    checks = by_name(await run_doctor(config_for(model_hub, root)))
    writable = checks["cache_writable"]
    assert writable.ok is False, writable
    assert str(root) in writable.detail
    assert "HF_HUB_CACHE" in writable.fix
    # Nothing to test symlinks and locks in: skipped, not failed twice over.
    if where == "under_a_file":
        assert "is a file, not a directory" in writable.detail
        assert checks["symlinks"].ok is None and checks["file_locks"].ok is None


async def test_a_missing_endpoint_fails_at_tcp(model_hub: FakeHub, cache: Path) -> None:
    url = closed_port_url()
    checks = by_name(await run_doctor(config_for(model_hub, cache, endpoint=url)))
    endpoint = checks["endpoint"]
    assert endpoint.ok is False
    assert f"TCP connect to {url.removeprefix('http://')} failed" in endpoint.detail
    assert "refused" in endpoint.detail.lower()
    assert "HF_ENDPOINT" in endpoint.fix
    assert checks["clock"].ok is None
    assert checks["token"].ok is None and "could not ask" in checks["token"].detail
    assert checks["cache_writable"].ok is True  # the rest still ran


async def test_an_unresolvable_endpoint_fails_at_dns(model_hub: FakeHub, cache: Path) -> None:
    checks = by_name(
        await run_doctor(config_for(model_hub, cache, endpoint="http://nohub.invalid"))
    )
    assert checks["endpoint"].ok is False
    assert "DNS lookup of nohub.invalid failed" in checks["endpoint"].detail


async def test_an_unreachable_proxy_is_named_as_the_problem(
    model_hub: FakeHub, cache: Path
) -> None:
    proxy = closed_port_url()
    cfg = config_for(model_hub, cache, proxies={"http": proxy})
    checks = by_name(await run_doctor(cfg))
    assert checks["proxy"].ok is True and proxy in checks["proxy"].detail
    endpoint = checks["endpoint"]
    assert endpoint.ok is False
    assert f"via proxy {proxy}" in endpoint.detail and "TCP connect" in endpoint.detail
    assert endpoint.fix.startswith("The proxy is not reachable") and "HTTPS_PROXY" in endpoint.fix


@pytest.fixture
async def hangup_endpoint() -> AsyncIterator[str]:
    """A server that takes each connection, reads the request and hangs up without answering."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_server_that_hangs_up_fails_at_http(hangup_endpoint: str, cache: Path) -> None:
    cfg = DoctorConfig(cache_root=cache, endpoint=hangup_endpoint, token=TOKEN)
    checks = by_name(await run_doctor(cfg, parse_source(f"{hangup_endpoint}/model.bin")))
    endpoint = checks["endpoint"]
    assert endpoint.ok is False
    assert "TCP 127.0.0.1:" in endpoint.detail  # TCP worked; the HTTP exchange is what failed
    assert "closed the connection unexpectedly" in endpoint.detail
    assert endpoint.fix.startswith("The server answers but not well")
    assert checks["token"].ok is None and "could not ask" in checks["token"].detail
    assert checks["source"].ok is False and "network" in checks["source"].detail


async def test_a_server_error_fails_the_endpoint_but_not_the_token(
    model_hub: FakeHub, cache: Path
) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        checks = by_name(
            await run_doctor(DoctorConfig(cache_root=cache, endpoint=url, token=TOKEN))
        )
    finally:
        await runner.cleanup()
    assert checks["endpoint"].ok is False
    assert "HTTP 503 (server error)" in checks["endpoint"].detail
    assert checks["token"].ok is None and "answered HTTP 503" in checks["token"].detail


async def test_a_skewed_clock_fails_the_clock_check(model_hub: FakeHub, cache: Path) -> None:
    cfg = config_for(model_hub, cache, clock=lambda: time.time() + 3600)
    clock = by_name(await run_doctor(cfg))["clock"]
    assert clock.ok is False
    assert clock.detail == "60 min ahead of the server"
    assert "NTP" in clock.fix


@pytest.mark.parametrize(
    ("server", "local", "ok", "detail"),
    [
        (None, 100.0, None, "no Date header"),
        (1000.0, 1001.0, True, "within 2 s"),
        (1000.0, 1200.0, True, "3 min ahead of the server"),
        (1000.0, 600.0, False, "7 min behind the server"),
    ],
)
def test_clock_skew_thresholds(
    server: float | None, local: float, ok: bool | None, detail: str
) -> None:
    check = check_clock(server, local, tolerance_s=300)
    assert check.ok is ok and detail in check.detail


async def test_partial_downloads_are_listed_and_stale_ones_fail(
    model_hub: FakeHub, cache: Path, tmp_path: Path
) -> None:
    blobs = cache / "models--org--model" / "blobs"
    blobs.mkdir(parents=True)
    fresh = blobs / f"{'a' * 64}.modelhaul.part"
    fresh.write_bytes(b"x" * 5000)
    hf_partial = blobs / f"{'b' * 64}.0123abcd.incomplete"
    hf_partial.write_bytes(b"y")
    work = tmp_path / "work"
    work.mkdir()
    loose = work / "model.bin.modelhaul.part"
    loose.write_bytes(b"z" * 100)
    cfg = config_for(model_hub, cache, cwd=work)

    partials = by_name(await run_doctor(cfg))["partials"]
    assert partials.ok is True
    assert set(partials.items) == {str(fresh), str(hf_partial), str(loose)}
    assert partials.detail.startswith("3 partial downloads")
    assert "modelhaul pull hf://org/model" in partials.fix and "modelhaul gc" in partials.fix

    week_ago = time.time() - 8 * 86400
    os.utime(fresh, (week_ago, week_ago))
    partials = by_name(await run_doctor(cfg))["partials"]
    assert partials.ok is False
    assert "1 untouched for over 7.0 days" in partials.detail


async def test_a_running_download_is_not_lying_around(
    model_hub: FakeHub, cache: Path, tmp_path: Path
) -> None:
    blobs = cache / "models--org--model" / "blobs"
    blobs.mkdir(parents=True)
    part = blobs / f"{'c' * 64}.modelhaul.part"
    part.write_bytes(b"x")
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    with filelock.FileLock(str(lock_file_for(lock_dir, part)), thread_local=False):
        cfg = config_for(model_hub, cache, lock_dir=lock_dir)
        partials = by_name(await run_doctor(cfg))["partials"]
    assert partials.ok is True and not partials.items
    assert "1 downloading now" in partials.detail


async def test_a_source_that_does_not_resolve_says_why(model_hub: FakeHub, cache: Path) -> None:
    cfg = config_for(model_hub, cache)
    source = by_name(await run_doctor(cfg, parse_source("hf://org/missing")))["source"]
    assert source.ok is False
    assert "not_found" in source.detail and "org/missing" in source.detail
    assert "ORG/NAME" in source.fix


async def test_a_source_needing_more_than_the_free_space_fails_it(
    model_hub: FakeHub, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(
        shutil, "disk_usage", lambda _path: usage._replace(free=1000)
    )  # the one way to fake a full disk without filling one
    checks = by_name(await run_doctor(config_for(model_hub, cache), parse_source("org/model")))
    free = checks["free_space"]
    assert free.ok is False
    assert "the source needs 4.0 KiB" in free.detail
    assert "modelhaul gc" in free.fix and "HF_HUB_CACHE" in free.fix


async def test_url_sources_report_status_size_and_ranges(model_hub: FakeHub, cache: Path) -> None:
    cfg = config_for(model_hub, cache)
    good = f"{model_hub.endpoint}/org/model/resolve/main/config.json"
    source = by_name(await run_doctor(cfg, parse_source(good)))["source"]
    assert source.ok is True and "HTTP 206" in source.detail and "ranges supported" in source.detail
    missing = f"{model_hub.endpoint}/org/model/resolve/main/nope.bin"
    source = by_name(await run_doctor(cfg, parse_source(missing)))["source"]
    assert source.ok is False and "not_found: HTTP 404" in source.detail


def test_proxy_settings_are_reported_without_credentials() -> None:
    proxies = {"https": "http://user:secret@proxy.corp:3128", "no": "internal.corp"}
    check = check_proxy("https://huggingface.co", proxies)
    assert check.ok is True
    assert "***@proxy.corp:3128" in check.detail and "secret" not in check.detail
    assert "HTTPS_PROXY" in check.detail
    bypassed = check_proxy("https://hub.internal.corp", proxies)
    assert "bypassed by NO_PROXY" in bypassed.detail
    assert check_proxy("https://huggingface.co", {}).detail.endswith("(none set)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf://org/model@v1", HubRef("org/model", "v1")),
        ("org/model", HubRef("org/model", None)),
        ("hf://datasets/org/data", HubRef("org/data", None, "dataset")),
        ("https://example.org/a.bin", "https://example.org/a.bin"),
    ],
)
def test_parse_source(text: str, expected: HubRef | str) -> None:
    assert parse_source(text) == expected


@pytest.mark.parametrize("text", ["ftp://x/y", "a/b/c/d", "hf://../x", "https://"])
def test_parse_source_refuses_what_it_cannot_check(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_source(text)


# ---------------------------------------------------------------------------------- TLS


def _certificate(folder: Path, name: str, alt_names: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` (and ``alt_names``) and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
         "-addext", f"subjectAltName={alt_names}"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@contextlib.asynccontextmanager
async def _serve_tls(cert: Path, key: Path) -> AsyncIterator[str]:
    """An HTTPS server on 127.0.0.1 that answers "hub" to everything; its URL by localhost."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    app = web.Application()

    async def answer(_request: web.Request) -> web.Response:
        return web.Response(text="hub")

    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    try:
        yield f"https://localhost:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    return _certificate(tmp_path, "localhost", "DNS:localhost,IP:127.0.0.1")


@pytest.fixture
async def tls_endpoint(self_signed: tuple[Path, Path]) -> AsyncIterator[str]:
    async with _serve_tls(*self_signed) as url:
        yield url


async def test_an_untrusted_certificate_fails_at_tls_and_names_ssl_cert_file(
    tls_endpoint: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    cfg = DoctorConfig(cache_root=cache, endpoint=tls_endpoint)
    endpoint = by_name(await run_doctor(cfg))["endpoint"]
    assert endpoint.ok is False
    assert "TLS handshake with localhost failed: certificate not trusted" in endpoint.detail
    assert "TCP 127.0.0.1:" in endpoint.detail  # TCP worked; TLS is what failed
    assert "SSL_CERT_FILE" in endpoint.fix


async def test_ssl_cert_file_makes_the_certificate_trusted(
    tls_endpoint: str, self_signed: tuple[Path, Path], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(self_signed[0]))
    cfg = DoctorConfig(cache_root=cache, endpoint=tls_endpoint, ca_file=str(self_signed[0]))
    checks = by_name(await run_doctor(cfg))
    assert checks["endpoint"].ok is True, checks["endpoint"]
    assert "certificate localhost" in checks["endpoint"].detail
    assert "HTTP 200" in checks["endpoint"].detail
    assert checks["clock"].ok is True


@pytest.fixture
async def misnamed_endpoint(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """An HTTPS server whose (trusted) certificate is for other.test only, reached as localhost:
    the URL and the CA file to trust."""
    cert, key = _certificate(tmp_path, "other.test", "DNS:other.test")
    async with _serve_tls(cert, key) as url:
        yield url, cert


async def test_a_certificate_for_another_name_is_told_as_such_not_as_an_untrusted_ca(
    misnamed_endpoint: tuple[str, Path], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca = misnamed_endpoint
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    cfg = DoctorConfig(cache_root=cache, endpoint=url, ca_file=str(ca))
    endpoint = by_name(await run_doctor(cfg))["endpoint"]
    assert endpoint.ok is False
    assert "the certificate is for another host name" in endpoint.detail, endpoint.detail
    assert "another host name" in endpoint.fix and "SSL_CERT_FILE" not in endpoint.fix


async def test_get_from_a_misnamed_host_fails_at_once_and_points_at_the_host(
    misnamed_endpoint: tuple[str, Path], tmp_path: Path
) -> None:
    url, ca = misnamed_endpoint
    started = time.monotonic()
    proc = await asyncio.to_thread(  # the server answers on this test's loop meanwhile
        subprocess.run,
        modelhaul_cmd("get", f"{url}/model.bin", "-o", str(tmp_path / "model.bin"), "--json"),
        capture_output=True,
        text=True,
        env=dict(os.environ) | {"SSL_CERT_FILE": str(ca)},
        timeout=60,
        check=False,
    )
    took = time.monotonic() - started
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 1, proc.stderr
    assert result["error"]["category"] == "network"
    assert "the certificate is for another host name" in result["error"]["message"]
    assert "SSL_CERT_FILE" not in proc.stderr and "Check the host" in proc.stderr, proc.stderr
    assert "gave up after" not in result["error"]["message"]  # not retried: it cannot change
    assert took < 20, took  # (four attempts with back-off took 5-6 s, here and on a quiet VM)
    assert not (tmp_path / "model.bin").exists()


# ---------------------------------------------------------------------------------- the CLI


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        modelhaul_cmd("doctor", *args),
        capture_output=True,
        text=True,
        env=dict(os.environ) | env,
        timeout=60,
    )


def json_result(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no output (exit {proc.returncode}); stderr:\n{proc.stderr}"
    result = json.loads(lines[-1])
    assert result["event"] == "result"
    return result


def statuses(result: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in result["checks"]}


def test_cli_all_good_exits_0(model_hub: FakeHub) -> None:
    proc = doctor("hf://org/model", "--json", HF_ENDPOINT=model_hub.endpoint, HF_TOKEN=TOKEN)
    result = json_result(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["status"] == "completed"
    assert set(statuses(result).values()) == {"ok"}, statuses(result)


def test_cli_bad_token_exits_1(model_hub: FakeHub) -> None:
    proc = doctor("--json", HF_ENDPOINT=model_hub.endpoint, HF_TOKEN="hf_wrong")
    result = json_result(proc)
    assert proc.returncode == 1
    assert result["status"] == "failed"
    assert statuses(result)["token"] == "fail"


def test_cli_read_only_cache_exits_1_with_plain_lines(model_hub: FakeHub, tmp_path: Path) -> None:
    root = not_a_dir_cache(tmp_path)
    proc = doctor(HF_ENDPOINT=model_hub.endpoint, HF_TOKEN=TOKEN, HF_HUB_CACHE=str(root))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    failed = [i for i, line in enumerate(lines) if line.startswith("FAIL  cache_writable: ")]
    assert failed, proc.stdout
    assert lines[failed[0] + 1].startswith("  fix: ")
    assert any(line.startswith("ok    endpoint: ") for line in lines)
    assert any(line.startswith("skip  symlinks: ") for line in lines)


def test_cli_missing_endpoint_exits_1(model_hub: FakeHub) -> None:
    proc = doctor("--json", HF_ENDPOINT=closed_port_url(), HF_TOKEN=TOKEN)
    result = json_result(proc)
    assert proc.returncode == 1
    endpoint = next(c for c in result["checks"] if c["name"] == "endpoint")
    assert endpoint["status"] == "fail" and "TCP connect" in endpoint["detail"]


def test_cli_bad_input_exits_2() -> None:
    proc = doctor("ftp://example.org/x")
    assert proc.returncode == 2
    assert "cannot check" in proc.stderr
    assert doctor("--timeout", "0").returncode == 2
