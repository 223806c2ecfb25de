"""Security: credentials stay with their host, TLS is not downgraded, names and symlinks
cannot carry a write elsewhere, and partial data is never world-writable.

Everything runs the CLI as a user does, against real servers on loopback: the fault-injecting
origin over plain HTTP (127.0.0.1 and 127.0.0.2 play two hosts) and, for TLS, an aiohttp site
with a certificate from a CA made at test time with the ``openssl`` command; the client trusts
that CA through ``SSL_CERT_FILE``, as a user behind a private CA would.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conftest import modelhaul_cmd
from helpers import sha
from origin import Fault, Origin
from test_hostile import serve

MiB = 1024 * 1024
SECRETS = {
    "Authorization": "Bearer s3cret-token",
    "Cookie": "session=s3cret-cookie",
    "Proxy-Authorization": "Basic s3cret-proxy",
}


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        lines = [json.loads(x) for x in self.stdout.splitlines() if x.startswith("{")]
        assert lines, f"no JSON line (exit {self.code}): {self.stderr}"
        return lines[-1]


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 60) -> Run:
    done = subprocess.run(
        modelhaul_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
        env=None if env is None else dict(os.environ) | env,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return Run(done.returncode, done.stdout, done.stderr)


def secret_headers() -> list[str]:
    return [a for name, value in SECRETS.items() for a in ("-H", f"{name}: {value}")]


def leaked(headers: Any) -> list[str]:
    """Which of the secrets a request carried (by name), wherever they were put."""
    text = "\n".join(f"{k}: {v}" for k, v in headers.items())
    return [name for name, value in SECRETS.items() if value.split()[-1].split("=")[-1] in text]


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    path = tmp_path / "cwd"
    path.mkdir()
    return path


# ---------------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    "chain",
    [
        ["a", "b"],  # to the other host
        ["a", "b", "a", "b"],  # out, back, out again
        ["a", "a", "b", "b"],  # a same-host hop first, then away
        ["b", "a"],  # named host B: A is the other host now
    ],
    ids=["away", "away-back-away", "same-then-away", "reverse"],
)
def test_credentials_never_reach_another_host_on_any_redirect_chain(
    origin: Origin, cwd: Path, chain: list[str]
) -> None:
    data = blob(3 * MiB, seed=1)
    origin.add_file("file.bin", data)
    names = [f"hop{i}" for i in range(len(chain))]
    hosts = [*chain[1:], chain[-1]]
    for i, name in enumerate(names):
        target = names[i + 1] if i + 1 < len(names) else "file.bin"
        origin.add_redirect(name, origin.url(target, alt=hosts[i] == "b"))
    named = "127.0.0.2" if chain[0] == "b" else "127.0.0.1"
    out = cwd / "file.bin"

    run = cli(
        "get",
        origin.url(names[0], alt=chain[0] == "b"),
        "-o",
        str(out),
        "--sha256",
        sha(data),
        "--json",
        "-x",
        "2",
        *secret_headers(),
        cwd=cwd,
    )

    assert run.code == 0, run.stderr
    assert out.read_bytes() == data
    first, *_ = origin.requests_for(names[0])
    assert leaked(first.headers) == list(SECRETS), "the named host gets what the user gave"
    for r in origin.requests:
        if r.local_addr != named:
            assert leaked(r.headers) == [], f"{r.path} on {r.local_addr} got {leaked(r.headers)}"


@pytest.fixture
def netrc_file(tmp_path: Path) -> Path:
    """A netrc with an entry for 127.0.0.1 only (the origin's first host)."""
    path = tmp_path / "netrc"
    path.write_text("machine 127.0.0.1 login alice password netrc-pass\n")
    path.chmod(0o600)
    return path


NETRC_BASIC = "Basic YWxpY2U6bmV0cmMtcGFzcw=="  # alice:netrc-pass


def test_a_netrc_entry_authenticates_its_host_only(
    origin: Origin, cwd: Path, netrc_file: Path
) -> None:
    data = blob(1000, seed=9)
    origin.add_file("file.bin", data)
    origin.add_redirect("start", origin.url("file.bin", alt=True))
    out = cwd / "file.bin"
    run = cli("get", origin.url("start"), "-o", str(out), cwd=cwd, env={"NETRC": str(netrc_file)})
    assert run.code == 0, run.stderr
    assert out.read_bytes() == data
    [start] = origin.requests_for("start")
    assert start.headers.get("Authorization") == NETRC_BASIC
    # The redirect target is another host, which the netrc says nothing about.
    for r in origin.requests_for("file.bin"):
        assert "Authorization" not in r.headers


def test_a_token_given_by_the_user_wins_over_a_netrc_entry(
    origin: Origin, cwd: Path, netrc_file: Path
) -> None:
    """A netrc entry for the host plus -H Authorization (or HF_TOKEN) used to fail with
    aiohttp's "Cannot combine AUTHORIZATION header with AUTH argument"."""
    data = blob(3 * MiB, seed=10)
    origin.add_file("file.bin", data)
    out = cwd / "file.bin"
    run = cli(
        "get",
        origin.url("file.bin"),
        "-o",
        str(out),
        "-x",
        "2",
        "-H",
        "Authorization: Bearer user-token",
        cwd=cwd,
        env={"NETRC": str(netrc_file)},
    )
    assert run.code == 0, run.stderr
    assert out.read_bytes() == data
    requests = origin.requests_for("file.bin")
    assert requests
    assert all(r.headers.get("Authorization") == "Bearer user-token" for r in requests)


def test_a_cookie_set_by_one_host_is_not_sent_to_another(origin: Origin, cwd: Path) -> None:
    data = blob(1000, seed=2)
    origin.add_file("file.bin", data)
    origin.add_redirect("start", origin.url("file.bin", alt=True))
    origin.plan(
        "start",
        [
            Fault(
                status=302,
                headers={
                    "Set-Cookie": "sid=s3cret-cookie; Path=/",
                    "Location": origin.url("file.bin", alt=True),
                },
            )
        ],
    )
    out = cwd / "file.bin"

    run = cli("get", origin.url("start"), "-o", str(out), "--json", cwd=cwd)

    assert run.code == 0, run.stderr
    for r in origin.requests_for("file.bin"):
        assert "s3cret" not in r.headers.get("Cookie", "")


# ---------------------------------------------------------------------------------- TLS


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA and a certificate for 127.0.0.1 and localhost, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    (d / "ca.ext").write_text(
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\n"
    )
    (d / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    openssl("req", "-new", *ec, "-keyout", "ca.key", "-out", "ca.csr", "-subj", "/CN=mh test CA")
    openssl(
        "x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-out", "ca.pem", "-days", "2",
        "-extfile", "ca.ext",
    )  # fmt: skip
    openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=t")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
    )  # fmt: skip
    return TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key")


@dataclass
class TlsOrigin:
    """An HTTPS site: /file.bin, and /to?url=... answering 302 to that URL."""

    data: bytes
    url: str = ""
    requests: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"path": request.path, "host": request.host, **request.headers})
        if request.path == "/to":
            raise web.HTTPFound(request.query["url"])
        if request.path == "/file.bin":
            return web.Response(body=self.data)
        return web.Response(status=404)


@pytest.fixture
def tls_origin(tls_files: TlsFiles) -> Iterator[TlsOrigin]:
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_files.cert, tls_files.key)
    site = TlsOrigin(blob(2 * MiB, seed=3))
    app = web.Application()

    async def route(request: web.Request) -> web.StreamResponse:
        return await site.handle(request)

    app.router.add_route("GET", "/{tail:.*}", route)
    with serve(app, ssl_context=ctx) as url:
        site.url = url
        yield site


def trusting(tls_files: TlsFiles) -> dict[str, str]:
    return {"SSL_CERT_FILE": str(tls_files.ca)}


def test_https_with_the_private_ca_works_and_without_it_fails_cleanly(
    tls_origin: TlsOrigin, tls_files: TlsFiles, cwd: Path
) -> None:
    out = cwd / "file.bin"
    url = f"{tls_origin.url}/file.bin"

    untrusted = cli("get", url, "-o", str(out), "--json", "--retries", "0", cwd=cwd)
    assert untrusted.code == 1
    assert untrusted.result["error"]["category"] == "network"
    assert "TLS" in untrusted.result["error"]["message"]
    assert not out.exists()

    trusted = cli("get", url, "-o", str(out), "--json", cwd=cwd, env=trusting(tls_files))
    assert trusted.code == 0, trusted.stderr
    assert out.read_bytes() == tls_origin.data


def test_an_https_to_http_redirect_is_refused_unless_allowed(
    tls_origin: TlsOrigin, tls_files: TlsFiles, origin: Origin, cwd: Path
) -> None:
    origin.add_file("plain.bin", tls_origin.data)
    url = f"{tls_origin.url}/to?url={origin.url('plain.bin')}"
    out = cwd / "plain.bin"
    args = ["get", url, "-o", str(out), "--json", "--retries", "3", *secret_headers()]

    refused = cli(*args, cwd=cwd, env=trusting(tls_files))

    assert refused.code == 1
    assert refused.result["error"]["category"] == "client_error"
    assert "downgrade" in refused.result["error"]["message"]
    assert origin.requests == [], "nothing may go over plain HTTP"
    assert len(tls_origin.requests) == 1, "a refused redirect is not retried"
    assert not out.exists()

    allowed = cli(*args, "--allow-insecure-redirects", cwd=cwd, env=trusting(tls_files))

    assert allowed.code == 0, allowed.stderr
    assert out.read_bytes() == tls_origin.data
    assert leaked(tls_origin.requests[-1]) == list(SECRETS)
    for r in origin.requests:
        assert leaked(r.headers) == [], "credentials went over plain HTTP"


def test_https_to_another_https_host_drops_credentials(
    tls_origin: TlsOrigin, tls_files: TlsFiles, cwd: Path
) -> None:
    # Same address and port, another name: another host as far as credentials go.
    other = tls_origin.url.replace("127.0.0.1", "localhost") + "/file.bin"
    out = cwd / "file.bin"

    run = cli(
        "get",
        f"{tls_origin.url}/to?url={other}",
        "-o",
        str(out),
        "--json",
        *secret_headers(),
        cwd=cwd,
        env=trusting(tls_files) | {"NO_PROXY": "127.0.0.1,localhost"},
    )

    assert run.code == 0, run.stderr
    assert out.read_bytes() == tls_origin.data
    first, *rest = tls_origin.requests
    assert leaked(first) == list(SECRETS)
    assert rest and all(r["host"].startswith("localhost") and leaked(r) == [] for r in rest)


# ---------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "disposition",
    [
        'attachment; filename="../../evil.bin"',
        "attachment; filename*=UTF-8''..%2F..%2Fevil.bin",
        'attachment; filename="/tmp/evil.bin"',
        'attachment; filename="..\\\\..\\\\evil.bin"',
        "attachment; filename*=UTF-8''%2E%2E",
    ],
)
def test_a_hostile_content_disposition_lands_inside_the_directory(
    origin: Origin, tmp_path: Path, disposition: str
) -> None:
    data = blob(1000, seed=4)
    origin.add_file("d.bin", data, content_disposition=disposition)
    target = tmp_path / "a" / "b" / "dir"
    target.mkdir(parents=True)
    before = set(tmp_path.rglob("*"))

    run = cli("get", origin.url("d.bin"), "-d", str(target), "--json", cwd=target)

    assert run.code == 0, run.stderr
    path = Path(run.result["path"])
    assert path.parent == target and path.read_bytes() == data
    created = {p for p in set(tmp_path.rglob("*")) - before if p.is_file()}
    assert {p for p in created if "home" not in p.relative_to(tmp_path).parts} == {path}


@pytest.mark.parametrize(
    "path", ["..%2F..%2Fevil.bin", "%2e%2e%2f%2e%2e%2fevil.bin", "a/..%5C..%5Cevil.bin"]
)
def test_a_hostile_url_path_lands_inside_the_directory(
    origin: Origin, tmp_path: Path, path: str
) -> None:
    data = blob(1000, seed=5)
    name = path.replace("%2F", "/").replace("%2f", "/").replace("%2e", ".").replace("%5C", "\\")
    origin.add_file(name, data)
    target = tmp_path / "a" / "dir"
    target.mkdir(parents=True)

    run = cli("get", f"{origin.base_url}/{path}", "-d", str(target), "--json", cwd=target)

    assert run.code in (0, 1), run.stderr
    strays = [p for p in tmp_path.rglob("*evil*") if p.parent != target]
    assert strays == [], f"written outside {target}: {strays}"
    if run.code == 0:
        assert Path(run.result["path"]).parent == target


@pytest.mark.parametrize(
    "line", ["out=../evil.bin", "out=/tmp/evil.bin", "out=a/../../evil.bin", "out=..\\evil.bin"]
)
def test_an_input_list_cannot_name_a_file_outside_the_directory(
    origin: Origin, tmp_path: Path, line: str
) -> None:
    origin.add_file("x.bin", b"x")
    target = tmp_path / "dir"
    target.mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text(f"{origin.url('x.bin')}\n  {line}\n")

    run = cli("get", "-i", str(listing), "-d", str(target), "--json", cwd=target)

    assert run.code == 2
    assert run.result["error"]["category"] == "invalid_input"
    assert not list(tmp_path.rglob("evil*"))
    assert origin.requests == []


@pytest.mark.parametrize(
    "source",
    [
        "hf://../../etc",
        "hf://org/model@../../refs",
        "hf://org/..",
        "hf://org/model@/etc/passwd",
        "hf://org/mo\\del",
        "hf://datasets/../x",
    ],
)
def test_a_hostile_repository_or_revision_is_refused_before_any_request(
    tmp_path: Path, source: str
) -> None:
    cache = Path(os.environ["HF_HUB_CACHE"])
    run = cli("pull", source, "--json", cwd=tmp_path, env={"HF_ENDPOINT": "http://127.0.0.1:9"})

    assert run.code == 2, run.stderr
    assert run.result["error"]["category"] == "invalid_input"
    assert not cache.exists() or not list(cache.iterdir())


# ---------------------------------------------------------------------------------- symlinks


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim" / "precious.txt"
    path.parent.mkdir()
    path.write_bytes(b"precious")
    return path


def assert_untouched(victim: Path) -> None:
    assert victim.read_bytes() == b"precious", "a write went through a planted symlink"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["precious.txt"]


@pytest.mark.parametrize(
    "planted", ["out.bin", "out.bin.modelhaul.journal", "out.bin.modelhaul.journal.tmp"]
)
def test_symlinks_planted_beside_the_target_are_not_followed(
    origin: Origin, cwd: Path, victim: Path, planted: str
) -> None:
    data = blob(3 * MiB, seed=6)  # big enough to be journaled
    origin.add_file("out.bin", data)
    (cwd / planted).symlink_to(victim)
    out = cwd / "out.bin"

    run = cli(
        "get", origin.url("out.bin"), "-o", str(out), "--sha256", sha(data), "--json", cwd=cwd
    )

    assert_untouched(victim)
    if run.code == 0:
        assert not out.is_symlink() and out.read_bytes() == data
    else:
        assert run.result["error"]["category"] == "permission", run.result


def test_a_symlink_planted_at_a_second_name_for_the_same_url_is_not_followed(
    origin: Origin, cwd: Path, victim: Path
) -> None:
    data = blob(1000, seed=7)
    origin.add_file("same.bin", data)
    listing = cwd / "list.txt"
    # One checksum is one download, placed at both names (the second as a link or a copy).
    entry = f"{origin.url('same.bin')}\n  sha256={sha(data)}\n"
    listing.write_text(f"{entry}  out=a.bin\n{entry}  out=b.bin\n")
    (cwd / "b.bin.modelhaul.tmp").symlink_to(victim)

    run = cli("get", "-i", str(listing), "-d", str(cwd), "--json", cwd=cwd)

    assert_untouched(victim)
    assert run.code == 0, run.stderr
    assert (cwd / "a.bin").read_bytes() == data
    assert (cwd / "b.bin").read_bytes() == data and not (cwd / "b.bin").is_symlink()


def test_a_symlink_planted_in_the_state_directory_is_not_followed(
    origin: Origin, cwd: Path, victim: Path, state_dir: Path
) -> None:
    data = blob(1000, seed=8)
    origin.add_file("r.bin", data)
    out = cwd / "r.bin"
    run = cli("get", origin.url("r.bin"), "-o", str(out), "--json", cwd=cwd)
    assert run.code == 0
    # Plant a link at every name a record of this download could be written through.
    records = list((state_dir / "done").iterdir())
    assert records
    for record in records:
        record.unlink()
        record.symlink_to(victim)
        record.with_suffix(".tmp").symlink_to(victim)
    out.unlink()

    again = cli("get", origin.url("r.bin"), "-o", str(out), "--json", cwd=cwd)

    assert again.code == 0, again.stderr
    assert out.read_bytes() == data
    assert_untouched(victim)


MODEL_DATA = blob(3 * MiB, seed=9)


@pytest.fixture
def manifest(origin: Origin, tmp_path: Path) -> Path:
    origin.add_file("w.bin", MODEL_DATA)
    path = tmp_path / "m.json"
    entry = {"path": "sub/w.bin", "size": len(MODEL_DATA), "sha256": sha(MODEL_DATA)}
    entry["url"] = origin.url("w.bin")
    empty = {"path": "empty.txt", "size": 0, "sha256": sha(b""), "url": origin.url("e")}
    path.write_text(json.dumps({"name": "org/sec", "files": [entry, empty]}))
    return path


def repo(cache: Path) -> Path:
    return cache / "models--org--sec"


def commit_of(manifest: Path) -> str:
    from modelhaul.sources.manifest import load_manifest_file

    return load_manifest_file(manifest).commit


@pytest.mark.parametrize(
    "planted",
    [
        "blobs/{blob}",
        "blobs/{blob}.modelhaul.part",
        "blobs/{blob}.modelhaul.journal",
        "snapshots/{commit}",
        "snapshots/{commit}/sub",
        "snapshots/{commit}/sub/w.bin",
        "refs/main",
    ],
)
def test_symlinks_planted_in_the_store_are_not_followed(
    manifest: Path, cwd: Path, victim: Path, planted: str
) -> None:
    cache = Path(os.environ["HF_HUB_CACHE"])
    where = repo(cache) / planted.format(blob=sha(MODEL_DATA), commit=commit_of(manifest))
    where.parent.mkdir(parents=True, exist_ok=True)
    target = victim.parent if "." not in where.name and "blobs" not in planted else victim
    where.symlink_to(target)

    run = cli("pull", str(manifest), "--json", cwd=cwd)

    assert_untouched(victim)
    if run.code != 0:
        assert run.result["error"]["category"] == "permission", run.result
        return
    snap = repo(cache) / "snapshots" / commit_of(manifest)
    assert (snap / "sub" / "w.bin").read_bytes() == MODEL_DATA
    assert (snap / "sub" / "w.bin").resolve().is_relative_to(repo(cache).resolve())


def test_a_symlink_planted_in_the_local_dir_is_not_followed(
    manifest: Path, cwd: Path, victim: Path
) -> None:
    local = cwd / "local"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "w.bin").symlink_to(victim)
    (local / "empty.txt").symlink_to(victim)

    run = cli("pull", str(manifest), "--json", "--local-dir", str(local), cwd=cwd)

    assert_untouched(victim)
    assert run.code == 0, run.stderr
    assert (local / "sub" / "w.bin").read_bytes() == MODEL_DATA
    assert not (local / "sub" / "w.bin").is_symlink()


# ---------------------------------------------------------------------------------- umask


def world_writable(path: Path) -> bool:
    return bool(path.lstat().st_mode & stat.S_IWOTH)


def test_partial_data_is_never_world_writable_even_with_umask_000(
    origin: Origin, cwd: Path
) -> None:
    data = blob(6 * MiB, seed=10)
    origin.add_file("u.bin", data)
    origin.plan("u.bin", [Fault(stall_after=3 * MiB, stall_s=60)])
    out = cwd / "u.bin"
    part, journal = cwd / "u.bin.modelhaul.part", cwd / "u.bin.modelhaul.journal"
    shell = f'umask 000 && exec {" ".join(modelhaul_cmd())} "$@"'
    args = ["get", origin.url("u.bin"), "-o", str(out), "--json", "-x", "1"]
    proc = subprocess.Popen(["sh", "-c", shell, "sh", *args], cwd=cwd)
    try:
        origin.wait_bytes("u.bin", 3 * MiB)
        deadline = time.monotonic() + 30  # the journal is written within a second or so
        while not (part.exists() and journal.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        modes = {p.name: oct(p.lstat().st_mode & 0o777) for p in (part, journal)}
        assert not world_writable(part) and not world_writable(journal), modes
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 130

    done = subprocess.run(["sh", "-c", shell, "sh", *args], cwd=cwd, timeout=60, check=False)

    assert done.returncode == 0
    assert out.read_bytes() == data
    assert not world_writable(out), oct(out.stat().st_mode)


def test_store_blobs_are_never_world_writable_even_with_umask_000(
    manifest: Path, cwd: Path
) -> None:
    cache = Path(os.environ["HF_HUB_CACHE"])
    shell = f'umask 000 && exec {" ".join(modelhaul_cmd())} "$@"'

    done = subprocess.run(
        ["sh", "-c", shell, "sh", "pull", str(manifest), "--json"], cwd=cwd, timeout=60
    )

    assert done.returncode == 0
    blobs = list((repo(cache) / "blobs").iterdir())
    assert len(blobs) == 2
    assert [b.name for b in blobs if world_writable(b)] == []
