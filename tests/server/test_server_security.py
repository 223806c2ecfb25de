"""The service's access rules as plain functions: token policy by bind host, Host and Origin
checks, the token file, and where a client-named output may go."""

from __future__ import annotations

import ast
import stat
from pathlib import Path

import pytest

from modelhaul.errors import InvalidInput, PermissionDenied
from modelhaul.server.persist import JobRow, QueueDB
from modelhaul.server.security import (
    AccessPolicy,
    bearer_token,
    cookie_value,
    is_loopback_host,
    load_or_create_token,
    read_token,
    requires_token,
    resolve_folder,
    resolve_local_path,
    resolve_output,
    split_host_port,
    token_path,
)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("127.255.255.254", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("10.0.0.1", False),
        ("example.org", False),
        ("localhost.example.org", False),
        ("127.0.0.1.nip.io", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("bind", "force", "required"),
    [
        ("127.0.0.1", False, False),
        ("127.0.0.5", False, False),
        ("::1", False, False),
        ("localhost", False, False),
        ("127.0.0.1", True, True),
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("192.168.1.10", False, True),
        # A name is "elsewhere" even if it resolves to loopback today: no DNS in the decision.
        ("myhost.local", False, True),
    ],
)
def test_token_required_off_loopback(bind: str, force: bool, required: bool) -> None:
    assert requires_token(bind, force=force) is required


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("127.0.0.1:8765", ("127.0.0.1", 8765)),
        ("localhost", ("localhost", None)),
        ("[::1]:80", ("[::1]", 80)),
        ("[::1]", ("[::1]", None)),
        ("::1", ("::1", None)),
        ("host:0", None),
        ("host:99999", None),
        ("host:abc", None),
        ("evil.com/x", None),
        ("user@host", None),
        ("", None),
        ("[::1", None),
    ],
)
def test_split_host_port(value: str, parsed: tuple[str, int | None] | None) -> None:
    assert split_host_port(value) == parsed


LOOP = AccessPolicy(bind_host="127.0.0.1")


@pytest.mark.parametrize(
    ("host_header", "ok"),
    [
        ("127.0.0.1:8765", True),
        ("localhost:8765", True),
        ("[::1]:8765", True),
        ("127.0.0.1", True),
        ("evil.example:8765", False),  # a DNS-rebinding page sends its own name
        ("evil.example", False),
        ("127.0.0.1.evil.example", False),
        (None, False),
        ("", False),
    ],
)
def test_host_header_on_loopback(host_header: str | None, ok: bool) -> None:
    assert LOOP.host_ok(host_header) is ok


def test_host_header_extra_names_and_off_loopback() -> None:
    proxied = AccessPolicy(bind_host="127.0.0.1", allowed_hosts=frozenset({"models.lan"}))
    assert proxied.host_ok("models.lan:443")
    assert not proxied.host_ok("other.lan")
    # Off loopback the token guards every call; any Host is fine.
    assert AccessPolicy(bind_host="0.0.0.0", token="t" * 40).host_ok("box.lan:8765")


@pytest.mark.parametrize(
    ("origin", "host", "fetch_site", "ok"),
    [
        (None, "127.0.0.1:8765", None, True),  # curl, the CLI
        ("http://127.0.0.1:8765", "127.0.0.1:8765", "same-origin", True),
        ("http://localhost:8765", "localhost:8765", None, True),
        ("http://127.0.0.1", "127.0.0.1:80", None, True),
        ("http://127.0.0.1:8765", "localhost:8765", None, False),  # another origin
        ("http://127.0.0.1:9999", "127.0.0.1:8765", None, False),
        ("http://evil.example", "127.0.0.1:8765", "cross-site", False),
        ("https://127.0.0.1:8765", "127.0.0.1:8765", None, True),  # TLS-terminating proxy
        ("null", "127.0.0.1:8765", None, False),
        ("file://", "127.0.0.1:8765", None, False),
        ("http://127.0.0.1:8765/path", "127.0.0.1:8765", None, False),
        ("http://127.0.0.1:99999", "127.0.0.1:8765", None, False),
        (None, "127.0.0.1:8765", "cross-site", False),
    ],
)
def test_origin_check(origin: str | None, host: str, fetch_site: str | None, ok: bool) -> None:
    assert LOOP.origin_ok(origin, host, fetch_site) is ok


def test_allowed_origin() -> None:
    policy = AccessPolicy(bind_host="127.0.0.1", allowed_origins=frozenset({"https://ui.lan"}))
    assert policy.origin_ok("https://ui.lan", "127.0.0.1:8765", "cross-site")
    assert not policy.origin_ok("https://other.lan", "127.0.0.1:8765", "cross-site")


def test_token_check() -> None:
    token = "s3cret-" * 6
    policy = AccessPolicy(bind_host="0.0.0.0", token=token)
    assert policy.token_required
    assert policy.token_ok(f"Bearer {token}", None)
    assert policy.token_ok(f"bearer  {token} ", None)
    assert policy.token_ok(None, f"a=1; modelhaul_token={token}")
    assert not policy.token_ok(None, None)
    assert not policy.token_ok("Bearer wrong", None)
    assert not policy.token_ok(f"Basic {token}", None)
    assert not policy.token_ok(None, "modelhaul_token=wrong")
    assert LOOP.token_ok(None, None)  # no token configured, none needed
    assert bearer_token("Bearer") is None
    assert cookie_value('x=1; modelhaul_token="abc"', "modelhaul_token") == "abc"


def test_token_file_is_private_and_stable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    token = load_or_create_token(state)
    path = token_path(state)
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(state) == token  # generated once, on first start
    path.chmod(0o644)
    assert load_or_create_token(state) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # tightened back


def test_token_file_symlink_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("x" * 40)
    token_path(state).symlink_to(target)
    with pytest.raises(PermissionDenied):
        load_or_create_token(state)
    with pytest.raises(PermissionDenied):
        read_token(token_path(state))


def test_short_token_file_is_replaced(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    token_path(state).write_text("short\n")
    token = load_or_create_token(state)
    assert len(token) >= 32 and read_token(token_path(state)) == token


@pytest.mark.parametrize(
    "out",
    [
        "/etc/passwd",
        "../escape.bin",
        "a/../../escape.bin",
        "..",
        ".",
        "a/./b",
        "nul\x00byte",
        "line\nbreak",
        "back\\slash",
        "C:evil",
        "",
        "x" * 300,
        "\udcff",
    ],
)
def test_output_paths_refused(tmp_path: Path, out: str) -> None:
    with pytest.raises(InvalidInput):
        resolve_output(tmp_path, out)


def test_output_symlink_escapes_refused(tmp_path: Path) -> None:
    root = tmp_path / "downloads"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "file.bin").symlink_to(outside / "victim")
    (root / "dir").mkdir()
    with pytest.raises(InvalidInput, match="symbolic link"):
        resolve_output(root, "link/x.bin")
    with pytest.raises(InvalidInput, match="symbolic link"):
        resolve_output(root, "link/deeper/x.bin")
    with pytest.raises(InvalidInput, match="symbolic link"):
        resolve_output(root, "file.bin")
    with pytest.raises(InvalidInput, match="directory"):
        resolve_output(root, "dir")
    assert resolve_output(root, "sub/dir/x.bin") == root.resolve() / "sub/dir/x.bin"
    assert resolve_output(root, "plain.bin") == root.resolve() / "plain.bin"


def test_output_inside_a_symlinked_download_dir(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(real, target_is_directory=True)
    assert resolve_output(alias, "a.bin") == real / "a.bin"


def test_folders_inside_the_download_directory(tmp_path: Path) -> None:
    root = tmp_path / "downloads"
    root.mkdir()
    (root / "out").symlink_to(tmp_path, target_is_directory=True)
    (root / "file").write_text("x")
    assert resolve_folder(root, "a/b") == root / "a" / "b"
    for folder, words in [
        (str(tmp_path), "absolute"),
        ("../up", "escapes"),
        ("out", "symbolic link"),
        ("file", "not a directory"),
    ]:
        with pytest.raises(InvalidInput, match=words):
            resolve_folder(root, folder)


def test_local_paths_of_the_services_own_user(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    new = tmp_path / "new" / "deeper" / "f.bin"
    assert resolve_local_path(str(new), where="out") == new  # folders are made later
    assert resolve_local_path(f"{tmp_path}/dir/../f.bin", where="out") == tmp_path / "f.bin"
    assert resolve_local_path(str(tmp_path / "dir"), where="dir", folder=True) == tmp_path / "dir"
    for path, folder, words in [
        ("rel.bin", False, "not an absolute path"),
        (str(tmp_path / "dir"), False, "is a directory"),
        (str(tmp_path / "file"), True, "not a directory"),
        (str(tmp_path / "file" / "x.bin"), False, "may not write"),
        ("/proc/self/x.bin", False, "may not write to /proc/self"),
        (f"{tmp_path}/nul\x00.bin", False, "control characters"),
        ("/\udcff.bin", False, "Unicode"),
    ]:
        with pytest.raises(InvalidInput, match=words):
            resolve_local_path(path, where="out", folder=folder)


def test_queue_db_round_trip_and_prune(tmp_path: Path) -> None:
    db = QueueDB(tmp_path / "q.sqlite")
    a = db.insert(JobRow(kind="url", request={"url": "http://h/a"}, label="a", priority=3))
    b = db.insert(JobRow(kind="model", request={"source": "hf://o/m"}, label="o/m", paused=True))
    db.update(a, outcome="completed", result={"size": 1}, bytes_done=1, total=1)
    c = db.insert(JobRow(kind="url", request={"url": "http://h/c"}, label="c"))
    db.update(c, outcome="failed", error={"category": "network", "message": "x", "hint": ""})
    db.set_setting("rate_bytes_per_s", "1024")
    db.close()
    db = QueueDB(tmp_path / "q.sqlite")
    rows = {r.id: r for r in db.load()}
    assert rows[a].outcome == "completed" and rows[a].result == {"size": 1}
    assert rows[a].priority == 3
    assert rows[b].paused is True and rows[b].outcome is None
    assert db.get_setting("rate_bytes_per_s") == "1024"
    assert db.prune_finished(1) == [a]  # the newest finished one stays
    assert sorted(r.id for r in db.load()) == [b, c]
    with pytest.raises(ValueError):
        db.update(b, nope=1)
    db.close()


def test_queue_db_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    db = QueueDB(path)
    assert db.load() == []
    assert any(p.name.startswith("q.sqlite.corrupt-") for p in tmp_path.iterdir())
    db.close()


def test_no_web_framework_needed_for_the_rules() -> None:
    # The CLI client imports security.py; the service and the queue are plain asyncio. Only
    # app.py and runner.py may import the server extra (the core CLI works without it).
    src = Path(__file__).resolve().parents[2] / "src" / "modelhaul" / "server"
    for name in ("security.py", "persist.py", "jobs.py", "stream.py", "resolve.py", "service.py"):
        tree = ast.parse((src / name).read_text())
        imported = {
            (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        heavy = {m for m in imported if m.split(".")[0] in ("fastapi", "uvicorn", "starlette")}
        assert not heavy, (name, heavy)
