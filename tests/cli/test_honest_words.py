"""What modelhaul says is so: error messages, guidance, help text and the README's promises.

Errors are judged from the outside (a real CLI subprocess against a closed loopback port, as a
plain URL or as the Hub endpoint); guidance, help and the README's tables from the objects and
files themselves.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, modelhaul_cmd
from modelhaul.cli.main import build_parser
from modelhaul.cli.render import error_dict
from modelhaul.client.service import RemoteError, ServiceUnreachable
from modelhaul.errors import (
    CATEGORIES,
    NETWORK_KINDS,
    Cancelled,
    DiskFull,
    HTTPStatusError,
    IntegrityError,
    InvalidInput,
    ModelhaulError,
    NetworkError,
    PermissionDenied,
    RedirectRefused,
    RetriesExhausted,
    StallTimeout,
    TruncatedBody,
    plural,
)
from modelhaul.guidance import explain
from modelhaul.server.jobs import Conflict, NoSuchDownload
from modelhaul.store.inventory import Busy, NotInStore

RUN_TIMEOUT_S = 60
SRC = ROOT / "src" / "modelhaul"
README = ROOT / "README.md"
# Words of aiohttp's own exceptions, which describe its internals, not the user's problem.
LIBRARY_WORDS = ("ssl:default", "Cannot connect to host", "Connect call failed", "aiohttp")
FILLER = "could not complete the request as given"


def run_cli(*args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        modelhaul_cmd(*args), capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env
    )


def _env() -> dict[str, str]:
    return dict(os.environ)


def closed_port() -> int:
    """A loopback port nothing listens on: bound for a moment to learn a free one, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- item 11


def test_a_plain_url_that_refuses_says_so_without_hub_advice_or_aiohttp_words(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/model.bin"
    r = run_cli("get", url, "--retries", "0", "-d", str(tmp_path))
    assert r.returncode == 1, r.stderr
    host = url.split("/")[2]
    assert r.stderr.startswith(f"modelhaul: error: cannot connect to {host} (connection refused)")
    for word in (*LIBRARY_WORDS, "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN"):
        assert word not in r.stderr, f"{word!r} in:\n{r.stderr}"
    assert "Traceback" not in r.stderr

    r = run_cli("get", url, "--retries", "0", "-d", str(tmp_path), "--json")
    assert r.returncode == 1
    error = json.loads(r.stdout.splitlines()[-1])["error"]
    assert error["category"] == "network"
    assert error["message"].startswith(f"cannot connect to {host} (connection refused)")
    text = json.dumps(error)
    for word in (*LIBRARY_WORDS, "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        assert word not in text, f"{word!r} in {text}"
    assert any(url in step for step in error["steps"])  # 'modelhaul doctor URL' checks it


def test_a_hub_that_refuses_still_gets_hub_advice_naming_the_endpoint_in_use(
    tmp_path: Path,
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {**_env(), "HF_ENDPOINT": endpoint}
    r = run_cli("pull", "hf://org/model", "--retries", "0", env=env)
    assert r.returncode == 1, r.stderr
    assert f"HF_ENDPOINT (now {endpoint})" in r.stderr, r.stderr
    assert f"for {endpoint}" in r.stderr  # doctor checks the Hub endpoint
    for word in LIBRARY_WORDS:
        assert word not in r.stderr


def test_transport_errors_read_as_plain_words_in_guidance() -> None:
    """Each kind of connection failure gets its own reason; only the Hub gets HF advice."""
    plain = "http://127.0.0.1:9/model.bin"
    hub = "https://huggingface.co/org/model/resolve/main/model.bin"
    whys = set()
    for kind in NETWORK_KINDS:
        off_hub = explain(NetworkError("x", url=plain, kind=kind))
        on_hub = explain(NetworkError("x", url=hub, kind=kind))
        assert not any("HF_" in line for line in (off_hub.why or "", *off_hub.steps)), kind
        if kind in ("dns", "refused", "unreachable", "tls_handshake", "tls_name"):
            assert "HF_ENDPOINT (now https://huggingface.co)" in " ".join(on_hub.steps), kind
        if kind in ("reset", "closed"):
            assert "HF_HUB_OFFLINE=1" in " ".join(on_hub.steps), kind
        whys.add(off_hub.why)
    assert len(whys) == len(NETWORK_KINDS) - 1  # a reset and a close share their reason


# ---------------------------------------------------------------------------- item 13


RESOLVE = "https://huggingface.co/org/model/resolve/main/model.bin"
EVERY_KIND: list[ModelhaulError] = [
    *(NetworkError("x", url="http://127.0.0.1:9/m.bin", kind=k) for k in NETWORK_KINDS),
    NetworkError("the connection failed"),
    StallTimeout("no data"),
    TruncatedBody("the connection ended early"),
    *(HTTPStatusError(s, RESOLVE) for s in (400, 401, 403, 404, 407, 410, 418, 429, 500, 503)),
    *(HTTPStatusError(s, "https://example.org/m.bin") for s in (400, 401, 403, 404, 429, 503)),
    HTTPStatusError(404, RESOLVE, error_code="EntryNotFound"),
    RedirectRefused("refusing an https -> http downgrade redirect"),
    RedirectRefused("redirect loop"),
    IntegrityError("sha256 mismatch"),
    DiskFull("the disk is full"),
    PermissionDenied("cannot write"),
    InvalidInput("bad URL"),
    Cancelled("cancelled"),
    ModelhaulError("org/x is not in the cache"),  # the root's own category, client_error
    NotInStore("org/x is not in the store"),
    Busy("org/x is downloading"),
    Conflict("download 3 is completed"),
    NoSuchDownload("no download 7"),
    ServiceUnreachable("no modelhaul service is running at http://127.0.0.1:8765"),
    *(RemoteError("the service said no", category=c) for c in CATEGORIES),
]


def test_every_kind_of_error_is_covered() -> None:
    seen = {e.category for e in EVERY_KIND} | {
        RetriesExhausted(e, [e]).category for e in EVERY_KIND
    }
    assert seen == set(CATEGORIES)


@pytest.mark.parametrize("err", EVERY_KIND, ids=lambda e: f"{type(e).__name__}-{e.category}")
def test_why_says_something_specific_or_is_absent(err: ModelhaulError) -> None:
    for e in (err, RetriesExhausted(err, [err])):
        g = explain(e)
        assert g.why is None or (g.why.strip() and FILLER not in g.why), g.why
        d = error_dict(e)
        assert "why" not in d or d["why"].strip(), d
        assert "why" not in g.to_dict() or g.to_dict()["why"].strip()


@pytest.mark.parametrize(
    "err",
    [
        ModelhaulError("org/x is not in the cache"),
        NotInStore("org/x is not in the store"),
        NoSuchDownload("no download 7"),
        Conflict("download 3 is completed"),
        RemoteError("no download 7", category="not_found"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_that_came_from_no_request_get_no_reason_about_servers_or_urls(
    err: ModelhaulError,
) -> None:
    g = explain(err)
    assert g.why is None
    assert not any("URL" in s or "server" in s for s in g.steps)


def test_the_cli_prints_no_filler_reason(tmp_path: Path) -> None:
    r = run_cli("verify", "org/absent")
    assert r.returncode == 1
    assert r.stderr.startswith("modelhaul: error: ")
    assert FILLER not in r.stderr and "why:" not in r.stderr, r.stderr
    r = run_cli("rm", "org/absent", "--yes")
    assert r.returncode == 2  # not in the store: invalid input (issue 13 item 12)
    assert "Check the URL" not in r.stderr and "why:" not in r.stderr, r.stderr


# ---------------------------------------------------------------------------- item 16


def test_the_readme_describes_errors_as_they_are_printed(tmp_path: Path) -> None:
    readme = README.read_text()
    assert "one line on stderr plus a hint" not in readme
    for label in ("hint:", "why:", "try:"):
        assert f"`{label}`" in readme, label
    r = run_cli("get", f"http://127.0.0.1:{closed_port()}/m.bin", "--retries", "0")
    first, *rest = r.stderr.splitlines()
    assert first.startswith("modelhaul: error: ")
    assert rest, "guidance follows the first line"
    labelled = re.compile(r"^  (hint|why|try): |^       \d+\. ")
    assert all(labelled.match(line) for line in rest), rest


# ---------------------------------------------------------------------------- item 19


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    out: dict[str, tuple[argparse.ArgumentParser, str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out[name] = (sub, helps.get(name, ""))
    return out


def test_every_command_positional_and_json_option_is_described() -> None:
    commands = _subparsers(build_parser())
    assert {"get", "pull", "rm", "priority", "demo"} <= set(commands)
    missing = []
    for name, (sub, summary) in commands.items():
        if not summary.strip():
            missing.append(f"{name}: no help line")
        if not (sub.description or "").strip():
            missing.append(f"{name}: no description")
        for action in sub._actions:
            if action.option_strings and "--json" not in action.option_strings:
                continue
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name}: {action.metavar or action.dest} has no help")
    assert not missing, missing


def _env_names_read() -> set[str]:
    """Every MODELHAUL_*/HF_* name the source spells out as a whole string: how an environment
    variable is read (os.environ.get("X"), env.get("X"), a loop over names)."""
    names: set[str] = set()
    pattern = re.compile(r"^(MODELHAUL|HF)_[A-Z0-9_]+$")
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and pattern.match(node.value)
            ):
                names.add(node.value)
    return names


def _readme_environment_table() -> set[str]:
    section = README.read_text().split("## Environment", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def test_the_readme_environment_table_lists_every_variable_read() -> None:
    read = _env_names_read()
    assert {"MODELHAUL_TOKEN", "MODELHAUL_DOWNLOAD_DIR", "HF_ENDPOINT"} <= read  # not vacuous
    missing = read - _readme_environment_table()
    assert not missing, f"read but not in README's environment table: {sorted(missing)}"


def test_the_readme_availability_example_defines_what_it_uses() -> None:
    readme = README.read_text()
    block = readme.split("ModelAvailability(", 1)[0].rsplit("```python", 1)[1]
    call = readme.split("ModelAvailability(", 1)[1].split(")", 1)[0]
    first_arg = call.split(",", 1)[0].strip()
    if first_arg.isidentifier():
        assert re.search(rf"^{first_arg}\s*=", block, re.MULTILINE), first_arg


def test_counts_agree_with_their_nouns(tmp_path: Path) -> None:
    assert [plural(n, "model") for n in (0, 1, 2)] == ["0 models", "1 model", "2 models"]
    cache = tmp_path / "hub"
    repo = cache / "models--org--name"
    commit = "0123456789abcdef0123456789abcdef01234567"
    digest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"  # sha256 b"hello"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / digest).write_bytes(b"hello")
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "f.txt").symlink_to(f"../../blobs/{digest}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    r = run_cli("ls", env={**_env(), "HF_HUB_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr
    assert "1 model, " in r.stdout and "1 models" not in r.stdout, r.stdout
