"""``modelhaul pull hf://...`` and ``modelhaul verify`` against the fake Hub and CDN.

Subprocess tests hold the CLI contract (exit statuses, the ``--json`` result line, what lands
in the cache); in-process tests drive ModelPuller with a DownloadManager for what a subprocess
cannot show. Stock huggingface_hub reads the results with ``local_files_only=True``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import (
    constants,
    get_cached_repo_tree,
    hf_hub_download,
    scan_cache_dir,
    snapshot_download,
)
from huggingface_hub.errors import IncompleteSnapshotError

from conftest import modelhaul_cmd
from fakehub import FakeHub, RequestRecord
from modelhaul.disk.journal import Journal
from modelhaul.errors import HTTPStatusError, InvalidInput, human_bytes
from modelhaul.manager.downloads import DownloadManager
from modelhaul.sources.hf import HubRef, HubSource, explain_download_error, parse_hf_uri
from modelhaul.store.chunks import CHUNK_BYTES
from modelhaul.store.pull import ModelPuller, PullResult
from origin import Fault, Origin

TOKEN = "hf_test_token_123"
CONFIG = b'{"model_type": "fake"}'
VOCAB = b"a\nb\nc\n"
W1 = random.Random(1).randbytes(3 * 1024 * 1024)  # LFS, through the CDN
W2 = random.Random(2).randbytes(600 * 1024)  # LFS
FILES = {
    "config.json": CONFIG,
    "tokenizer/vocab.txt": VOCAB,
    "tokenizer/empty.txt": b"",
    "weights/model-00001.safetensors": W1,
    "weights/model-00002.safetensors": W2,
}
LFS = {"weights/model-00001.safetensors", "weights/model-00002.safetensors"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def blob_name(path: str, data: bytes) -> str:
    return sha256(data) if path in LFS else git_oid(data)


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture
def cache(hub: FakeHub, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_ENDPOINT at the fake for subprocesses, and huggingface_hub's import-time constants for
    this process; the agent registry is pre-cached so the Hub sees only modelhaul's calls."""
    hf_home = Path(os.environ["HF_HOME"])
    hf_home.mkdir(parents=True, exist_ok=True)
    registry = hf_home / ".agent_harnesses.json"
    registry.write_text(json.dumps({"standardEnvVars": [], "harnesses": {}}))
    root = Path(os.environ["HF_HUB_CACHE"])
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "ENDPOINT": hub.endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_CACHE": str(root),
        "HF_HUB_OFFLINE": False,
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(registry),
    }.items():
        monkeypatch.setattr(constants, name, value)
    return root


@dataclass
class CliRun:
    code: int
    lines: list[dict[str, Any]]
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        assert self.lines, f"no JSON output (exit {self.code}); stderr:\n{self.stderr}"
        last = self.lines[-1]
        assert last["event"] == "result", last
        return last


def run_cli(*args: str, timeout_s: float = 60, **env: str) -> CliRun:
    proc = subprocess.run(
        modelhaul_cmd(*args),
        capture_output=True,
        text=True,
        env=dict(os.environ) | env,
        timeout=timeout_s,
    )
    return CliRun(proc.returncode, _json_lines(proc.stdout), proc.stderr)


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def pull_now(
    hub: FakeHub, cache: Path, uri: str, *, token: str | None = None, include: str = "*"
) -> PullResult:
    """Set-up pulls run in this process: the CLI around them is what other tests are about."""

    async def pull() -> PullResult:
        ref = parse_hf_uri(uri)
        spec = await HubSource(endpoint=hub.endpoint, token=token).resolve(ref)
        async with DownloadManager() as mgr:
            return await ModelPuller(cache, mgr).pull(spec.select([include]))

    return asyncio.run(pull())


def hub_calls(hub: FakeHub) -> list[RequestRecord]:
    return [r for r in hub.requests if r.site == "hub" and r.path != "/api/agent-harnesses"]


def resolved_paths(hub: FakeHub) -> list[str]:
    """The file paths the client asked ``/resolve/`` for, in order."""
    return [
        r.path.split("/resolve/", 1)[1].split("/", 1)[1]
        for r in hub_calls(hub)
        if "/resolve/" in r.path
    ]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def repo_folder(cache: Path, name: str = "models--org--model") -> Path:
    return cache / name


def tree_of(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---------------------------------------------------------------------------------- full pulls


def test_full_pull_lands_in_the_huggingface_layout(hub: FakeHub, cache: Path) -> None:
    commit = hub.add_repo("org/model", FILES)

    run = run_cli("pull", "hf://org/model", "--json")

    assert run.code == 0, run.stderr
    result = run.result
    folder = repo_folder(cache)
    snapshot = folder / "snapshots" / commit
    assert result["status"] == "completed" and result["path"] == str(snapshot)
    assert result["error"] is None and sorted(result["fetched"]) == sorted(FILES)
    assert (folder / "refs" / "main").read_text() == commit
    assert sorted(p.name for p in (folder / "blobs").iterdir()) == sorted(
        blob_name(p, d) for p, d in FILES.items()
    )
    for path, data in FILES.items():
        link = snapshot / path
        depth = path.count("/") + 2
        assert os.readlink(link) == "../" * depth + f"blobs/{blob_name(path, data)}"
        assert link.read_bytes() == data
    assert not list(cache.rglob("*.modelhaul.*")), "no partial file or journal may remain"
    # The CDN serves LFS files, the Hub small ones; each once, and an empty file needs no request.
    assert sorted(resolved_paths(hub)) == sorted(p for p, d in FILES.items() if d)
    assert hub.cdn_bytes(sha256(W1)) == len(W1) and hub.cdn_bytes(sha256(W2)) == len(W2)
    # Stock huggingface_hub finds and reads all of it without the network.
    hub.stop()
    folder = snapshot_download("org/model", cache_dir=cache, local_files_only=True)
    assert folder == str(snapshot)
    for path, data in FILES.items():
        got = hf_hub_download("org/model", path, cache_dir=cache, local_files_only=True)
        assert Path(got).read_bytes() == data
    info = scan_cache_dir(cache)
    assert [r.repo_id for r in info.repos] == ["org/model"] and not info.warnings
    (repo,) = info.repos
    assert repo.nb_files == len(FILES) and repo.size_on_disk == sum(map(len, FILES.values()))


def test_huggingface_hub_in_another_process_reads_the_pull_offline(
    hub: FakeHub, cache: Path
) -> None:
    hub.add_repo("org/model", FILES)
    pull_now(hub, cache, "hf://org/model")
    script = (
        "import sys; from huggingface_hub import hf_hub_download as d;"
        "sys.stdout.write(open(d('org/model', 'weights/model-00002.safetensors'), 'rb')"
        ".read().hex())"
    )

    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ) | {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": closed_port_url()},
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert bytes.fromhex(done.stdout) == W2


def test_a_second_pull_fetches_nothing_and_a_deleted_blob_only_that(
    hub: FakeHub, cache: Path
) -> None:
    hub.add_repo("org/model", FILES)
    pull_now(hub, cache, "hf://org/model")
    hub.reset_stats()

    again = run_cli("pull", "hf://org/model", "--json")

    assert again.code == 0 and again.result["fetched"] == []
    assert resolved_paths(hub) == []

    (repo_folder(cache) / "blobs" / sha256(W2)).unlink()
    hub.reset_stats()
    third = run_cli("pull", "hf://org/model", "--json")

    assert third.code == 0, third.stderr
    assert third.result["fetched"] == ["weights/model-00002.safetensors"]
    assert resolved_paths(hub) == ["weights/model-00002.safetensors"]
    assert hub.cdn_bytes(sha256(W1)) == 0 and hub.cdn_bytes(sha256(W2)) == len(W2)
    assert (Path(third.result["path"]) / "weights/model-00002.safetensors").read_bytes() == W2


def test_a_pinned_revision_shares_blobs_with_main(hub: FakeHub, cache: Path) -> None:
    main = hub.add_repo("org/model", FILES)
    v2_files = dict(FILES) | {"config.json": b'{"model_type": "v2"}'}
    v2 = hub.add_revision("org/model", "v2", v2_files)
    pull_now(hub, cache, "hf://org/model")
    hub.reset_stats()

    run = run_cli("pull", "hf://org/model@v2")  # plain output: stderr is not a terminal

    assert run.code == 0, run.stderr
    assert run.lines == [] and "1 fetched" in run.stderr
    assert resolved_paths(hub) == ["config.json"]
    assert hub.cdn_bytes(sha256(W1)) == 0, "a blob already stored is not fetched again"
    folder = repo_folder(cache)
    assert (folder / "refs" / "v2").read_text() == v2
    assert (folder / "refs" / "main").read_text() == main
    assert len(list((folder / "blobs").iterdir())) == len(FILES) + 1
    got = hf_hub_download(
        "org/model", "config.json", revision="v2", cache_dir=cache, local_files_only=True
    )
    assert Path(got).read_bytes() == b'{"model_type": "v2"}'


def test_a_commit_hash_pulls_that_snapshot_without_moving_main(hub: FakeHub, cache: Path) -> None:
    old = hub.add_repo("org/model", {"config.json": b"old"})
    new = hub.add_revision("org/model", "main", {"config.json": b"new"})

    run = run_cli("pull", f"hf://org/model@{old}", "--json")

    assert run.code == 0, run.stderr
    assert run.result["path"].endswith(old)
    assert not (repo_folder(cache) / "refs" / "main").exists()
    pull_now(hub, cache, "hf://org/model")
    assert (repo_folder(cache) / "refs" / "main").read_text() == new
    got = hf_hub_download(
        "org/model", "config.json", revision=old, cache_dir=cache, local_files_only=True
    )
    assert Path(got).read_bytes() == b"old"


def test_datasets_live_under_their_own_prefix(hub: FakeHub, cache: Path) -> None:
    commit = hub.add_repo("org/data", {"train.csv": b"a,b\n1,2\n"}, repo_type="dataset")

    run = run_cli("pull", "hf://datasets/org/data", "--json")

    assert run.code == 0, run.stderr
    assert run.result["path"] == str(cache / "datasets--org--data" / "snapshots" / commit)
    got = hf_hub_download(
        "org/data", "train.csv", repo_type="dataset", cache_dir=cache, local_files_only=True
    )
    assert Path(got).read_bytes() == b"a,b\n1,2\n"


def test_local_dir_gets_plain_files_linked_to_the_blobs(
    hub: FakeHub, cache: Path, tmp_path: Path
) -> None:
    hub.add_repo("org/model", FILES)
    target = tmp_path / "out"

    run = run_cli("pull", "hf://org/model", "--local-dir", str(target), "--json")

    assert run.code == 0, run.stderr
    assert run.result["local_dir"] == str(target)
    for path, data in FILES.items():
        placed = target / path
        assert not placed.is_symlink() and placed.read_bytes() == data
        blob = repo_folder(cache) / "blobs" / blob_name(path, data)
        assert placed.stat().st_ino == blob.stat().st_ino
    assert (Path(run.result["path"]) / "config.json").read_bytes() == CONFIG


def test_without_symlinks_the_snapshot_holds_files_huggingface_hub_reads(
    hub: FakeHub, cache: Path
) -> None:
    commit = hub.add_repo("org/model", FILES)

    run = run_cli("pull", "hf://org/model", "-q", HF_HUB_DISABLE_SYMLINKS="1")

    assert run.code == 0, run.stderr
    snapshot = repo_folder(cache) / "snapshots" / commit
    for path, data in FILES.items():
        assert not (snapshot / path).is_symlink() and (snapshot / path).read_bytes() == data
        got = hf_hub_download("org/model", path, cache_dir=cache, local_files_only=True)
        assert Path(got).read_bytes() == data
    assert run_cli("verify", "org/model", "-q").code == 0


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("hf://org/model", HubRef("org/model", None)),
        ("org/model@v1.0", HubRef("org/model", "v1.0")),
        ("hf://org/model@refs/pr/1", HubRef("org/model", "refs/pr/1")),
        ("hf://datasets/org/data@main", HubRef("org/data", "main", "dataset")),
        ("hf://gpt2", HubRef("gpt2", None)),
    ],
)
def test_hf_uris(uri: str, expected: HubRef) -> None:
    assert parse_hf_uri(uri) == expected


@pytest.mark.parametrize(
    "uri", ["hf://org/model@", "hf://../x", "hf://org/../x", "hf://org/model/extra", "hf://",
            "hf://org/model@../../etc", "hf://org/model@a b"],
)  # fmt: skip
def test_bad_hf_uris_are_invalid_input(uri: str) -> None:
    with pytest.raises(InvalidInput):
        parse_hf_uri(uri)


def test_a_bad_hf_uri_exits_2_with_a_result_line(cache: Path) -> None:
    run = run_cli("pull", "hf://org/../../x", "--json")

    assert run.code == 2
    assert run.result["error"]["category"] == "invalid_input"
    assert not list(cache.parent.rglob("x"))


def test_a_folder_in_the_way_in_local_dir_is_an_error_not_a_traceback(
    hub: FakeHub, cache: Path, tmp_path: Path
) -> None:
    hub.add_repo("org/model", FILES)
    target = tmp_path / "out"
    (target / "config.json" / "inner").mkdir(parents=True)

    run = run_cli("pull", "hf://org/model", "--local-dir", str(target), "--json")

    assert run.code == 1
    assert "Traceback" not in run.stderr
    assert run.result["error"]["category"] == "permission"
    assert "config.json" in run.result["error"]["message"]
    assert not [p for p in target.rglob("*") if "tmp" in p.name]


# ---------------------------------------------------------------------------------- selection


def test_include_and_exclude_select_files_and_later_pulls_add_to_the_snapshot(
    hub: FakeHub, cache: Path
) -> None:
    commit = hub.add_repo("org/model", FILES)

    run = run_cli(
        "pull", "hf://org/model", "--json",
        "--include", "*.json", "--include", "tokenizer/*", "--exclude", "*/empty.txt",
    )  # fmt: skip

    assert run.code == 0, run.stderr
    snapshot = repo_folder(cache) / "snapshots" / commit
    assert tree_of(snapshot) == ["config.json", "tokenizer", "tokenizer/vocab.txt"]
    assert sorted(resolved_paths(hub)) == ["config.json", "tokenizer/vocab.txt"]
    assert hub.cdn_bytes(sha256(W1)) == hub.cdn_bytes(sha256(W2)) == 0

    pull_now(hub, cache, "hf://org/model", include="weights/*")
    verify = run_cli("verify", "org/model", "--json")

    assert verify.code == 0, verify.stderr
    assert verify.result["checked"] == 4, "verify covers every file pulled so far"


def test_a_selection_matching_nothing_is_invalid_input(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("org/model", FILES)

    run = run_cli("pull", "hf://org/model", "--include", "*.gguf", "--json")

    assert run.code == 2
    assert run.result["error"]["category"] == "invalid_input"


# ---------------------------------------------------------------------------------- auth


@pytest.mark.parametrize("where", ["env", "token-file"])
def test_the_token_goes_to_the_hub_and_never_to_the_cdn(
    hub: FakeHub, cache: Path, where: str
) -> None:
    hub.add_repo("org/private", FILES, private=True)
    hub.set_token(TOKEN)
    env: dict[str, str] = {}
    if where == "env":
        env["HF_TOKEN"] = TOKEN
    else:
        (Path(os.environ["HF_HOME"]) / "token").write_text(TOKEN)

    run = run_cli("pull", "hf://org/private", "--json", **env)

    assert run.code == 0, run.stderr
    calls = hub_calls(hub)
    cdn = [r for r in hub.requests if r.site == "cdn"]
    assert calls and all(r.authorization == f"Bearer {TOKEN}" for r in calls)
    assert cdn and all(r.authorization is None for r in cdn)
    assert all(TOKEN not in json.dumps(r.headers) for r in cdn)


def test_a_gated_repository_says_to_accept_the_licence(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("org/gated", FILES, gated=True)

    run = run_cli("pull", "hf://org/gated", "--json")

    assert run.code == 1
    error = run.result["error"]
    assert error["category"] == "auth"
    assert "gated" in error["message"]
    assert "licence" in error["hint"] and "HF_TOKEN" in error["hint"]
    assert "org/gated" in error["hint"]
    blobs = repo_folder(cache, "models--org--gated") / "blobs"
    assert [p.stat().st_size for p in blobs.iterdir()] in ([], [0]), "only the empty file"
    assert not [r for r in hub.requests if r.site == "cdn"]

    hub.set_token(TOKEN)
    assert run_cli("pull", "hf://org/gated", "-q", HF_TOKEN=TOKEN).code == 0


@pytest.mark.parametrize(
    ("uri", "words", "hint_words"),
    [
        ("hf://org/absent", ("org/absent", "not found"), ("Check the name", "HF_TOKEN")),
        ("hf://org/model@nope", ("nope", "not found"), ("branch",)),
    ],
    ids=["repository", "revision"],
)
def test_not_found_errors_say_what_is_missing(
    hub: FakeHub, cache: Path, uri: str, words: tuple[str, ...], hint_words: tuple[str, ...]
) -> None:
    hub.add_repo("org/model", FILES)

    run = run_cli("pull", uri, "--json")

    assert run.code == 1
    error = run.result["error"]
    assert error["category"] == "not_found"
    assert all(w in error["message"] for w in words), error
    assert all(w in error["hint"] for w in hint_words), error
    assert all(w in run.stderr for w in words)


def test_a_private_repository_with_a_wrong_token_is_an_auth_error(
    hub: FakeHub, cache: Path
) -> None:
    hub.add_repo("org/private", FILES, private=True)
    hub.set_token(TOKEN)

    run = run_cli("pull", "hf://org/private", "--json", HF_TOKEN="hf_wrong")

    assert run.code == 1
    assert run.result["error"]["category"] in ("auth", "not_found")
    assert "HF_TOKEN" in run.result["error"]["hint"]


@pytest.mark.parametrize(
    ("code", "category", "hint_word"),
    [
        ("GatedRepo", "auth", "licence"),
        ("EntryNotFound", "not_found", "file"),
        ("RepoNotFound", "not_found", "name"),
        ("RevisionNotFound", "not_found", "revision"),
    ],
)
def test_hub_error_codes_met_while_downloading_get_the_hub_hints(
    code: str, category: str, hint_word: str
) -> None:
    ref = HubRef("org/model", "main")
    status = {"GatedRepo": 401, "RepoNotFound": 401}.get(code, 404)
    raw = HTTPStatusError(status, "http://hub/org/model/resolve/main/a%20b.bin", error_code=code)

    err = explain_download_error(raw, ref, "http://hub")

    assert err.category == category
    assert hint_word in (err.hint + err.message).lower()
    if code == "EntryNotFound":
        assert "'a b.bin'" in err.message


def test_a_rate_limited_download_from_the_hub_gets_the_hub_hint() -> None:
    ref = HubRef("org/model", None)
    raw = HTTPStatusError(429, "http://hub/org/model/resolve/main/x", retry_after_s=30)

    err = explain_download_error(raw, ref, "http://hub")

    assert err.category == "rate_limited" and "30 s" in err.hint and "HF_TOKEN" in err.hint


def test_errors_from_other_hosts_are_left_alone() -> None:
    ref = HubRef("org/model", None)
    raw = HTTPStatusError(403, "http://cdn/x", error_code="GatedRepo")

    assert explain_download_error(raw, ref, "http://hub") is raw


# ---------------------------------------------------------------------------------- hostile names


HOSTILE = ["../evil.bin", "a/../../evil.bin", "/tmp/evil.bin", "a\\..\\evil.bin", "evil\x00.bin"]


def _hostile_entry(path: str) -> dict[str, Any]:
    return {"type": "file", "oid": git_oid(b"evil"), "size": 4, "path": path}


@pytest.mark.parametrize("path", HOSTILE)
async def test_hostile_names_from_the_api_are_refused(hub: FakeHub, cache: Path, path: str) -> None:
    hub.add_repo("org/model", FILES)
    hub.add_raw_tree_entry("org/model", _hostile_entry(path))

    with pytest.raises(InvalidInput) as info:
        await HubSource(endpoint=hub.endpoint).resolve(parse_hf_uri("hf://org/model"))

    assert repr(path) in info.value.message


async def test_a_hostile_lfs_digest_is_refused(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("org/model", FILES)
    entry = _hostile_entry("model.bin") | {"lfs": {"oid": "../../x", "size": 4, "pointerSize": 1}}
    hub.add_raw_tree_entry("org/model", entry)

    with pytest.raises(InvalidInput, match=r"model\.bin"):
        await HubSource(endpoint=hub.endpoint).resolve(parse_hf_uri("hf://org/model"))


def test_a_hostile_name_fails_the_pull_before_anything_is_written(
    hub: FakeHub, cache: Path, tmp_path: Path
) -> None:
    hub.add_repo("org/model", FILES)
    hub.add_raw_tree_entry("org/model", _hostile_entry("../../../../evil.bin"))

    run = run_cli("pull", "hf://org/model", "--json", "--local-dir", str(tmp_path / "out"))

    assert run.code == 2
    assert run.result["error"]["category"] == "invalid_input"
    assert "evil.bin" in run.result["error"]["message"]
    assert not list(tmp_path.rglob("*evil*"))
    assert not repo_folder(cache).exists()
    assert resolved_paths(hub) == []


# ---------------------------------------------------------------------------------- rate limits


def test_rate_limited_metadata_calls_are_retried(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("org/model", FILES)
    hub.rate_limit(2, retry_after_s=0)

    run = run_cli("pull", "hf://org/model", "--json")

    assert run.code == 0, run.stderr
    statuses = [r.status for r in hub_calls(hub)]
    assert statuses[:2] == [429, 429] and 429 not in statuses[2:]


def test_a_rate_limit_that_does_not_lift_fails_with_its_category(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("org/model", FILES)
    hub.rate_limit(100, retry_after_s=0)

    run = run_cli("pull", "hf://org/model", "--json", "--retries", "1")

    assert run.code == 1
    error = run.result["error"]
    assert error["category"] == "rate_limited"
    assert "HF_TOKEN" in error["hint"]
    assert len(hub_calls(hub)) == 2, "--retries bounds the metadata retries too"


# ---------------------------------------------------------------------------------- offline


def test_offline_mode_uses_a_complete_cached_model(hub: FakeHub, cache: Path) -> None:
    commit = hub.add_repo("org/model", FILES)
    pull_now(hub, cache, "hf://org/model")
    hub.reset_stats()

    run = run_cli("pull", "hf://org/model", "--json", HF_HUB_OFFLINE="1")

    assert run.code == 0, run.stderr
    assert run.result["offline"] is True
    assert run.result["path"] == str(repo_folder(cache) / "snapshots" / commit)
    assert any(line["event"] == "notice" and "cache" in line["message"] for line in run.lines), (
        run.lines
    )
    assert hub.requests == []


def test_an_unreachable_hub_falls_back_to_a_complete_cached_model(
    hub: FakeHub, cache: Path
) -> None:
    commit = hub.add_repo("org/model", FILES)
    pull_now(hub, cache, "hf://org/model@main")
    started = time.monotonic()

    run = run_cli("pull", "hf://org/model", "--json", HF_ENDPOINT=closed_port_url())

    assert run.code == 0, run.stderr
    assert run.result["offline"] is True and run.result["path"].endswith(commit)
    assert "cache" in run.stderr or any(line["event"] == "notice" for line in run.lines)
    assert time.monotonic() - started < 15, "a known-good cache should not wait out retries"


def test_a_hub_api_that_answers_nothing_times_out_with_its_category(
    hub: FakeHub, cache: Path
) -> None:
    hub.add_repo("org/model", FILES)
    hub.stall_api(times=100)
    started = time.monotonic()

    run = run_cli("pull", "hf://org/model", "--json", "--timeout", "1", "--retries", "1")

    hub.release_stalls()
    assert run.code == 1, run.stderr
    error = run.result["error"]
    assert error["category"] == "timeout"
    assert "--timeout" in error["hint"]
    # Two tries of the model info, each cut after --timeout: not huggingface_hub's five more
    # per call, nor no end at all (the calls had no timeout before).
    assert len(hub_calls(hub)) == 2
    assert time.monotonic() - started < 30


def test_a_stalled_hub_falls_back_to_a_complete_cached_model(hub: FakeHub, cache: Path) -> None:
    commit = hub.add_repo("org/model", FILES)
    pull_now(hub, cache, "hf://org/model@main")
    hub.stall_api(times=100)

    run = run_cli("pull", "hf://org/model", "--json", "--timeout", "1")

    hub.release_stalls()
    assert run.code == 0, run.stderr
    assert run.result["offline"] is True and run.result["path"].endswith(commit)


def test_offline_without_the_model_fails_with_a_hint(hub: FakeHub, cache: Path) -> None:
    run = run_cli("pull", "hf://org/model", "--json", HF_HUB_OFFLINE="1")

    assert run.code == 1
    assert "HF_HUB_OFFLINE" in run.result["error"]["hint"]


def test_offline_with_a_partial_model_fails(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("org/model", FILES)
    pull_now(hub, cache, "hf://org/model")
    (repo_folder(cache) / "blobs" / sha256(W1)).unlink()

    run = run_cli("pull", "hf://org/model", "--json", HF_HUB_OFFLINE="1")

    assert run.code == 1
    assert "weights/model-00001.safetensors" in run.result["error"]["message"]


# ---------------------------------------------------------------------------------- verify


BIG = random.Random(3).randbytes(40_000_000)  # 20 repair chunks of 2 MiB (the last one short)


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_verify_reports_bad_files_and_repair_refetches_only_the_bad_chunk(
    hub: FakeHub, cache: Path
) -> None:
    files = {"config.json": CONFIG, "big.safetensors": BIG, "small.safetensors": W2}
    hub.add_repo("org/model", files)
    pull_now(hub, cache, "hf://org/model")
    blobs = repo_folder(cache) / "blobs"
    _flip(blobs / sha256(BIG), CHUNK_BYTES + 12345)  # inside the second chunk
    _flip(blobs / git_oid(CONFIG), 0)
    (blobs / sha256(W2)).unlink()
    hub.reset_stats()

    check = run_cli("verify", "org/model", "--json")

    assert check.code == 1
    bad = {b["path"]: b["problem"] for b in check.result["bad"]}
    assert bad == {"big.safetensors": "hash", "config.json": "hash", "small.safetensors": "missing"}
    for path in bad:
        assert path in check.stderr
    assert hub.requests == [], "verify without --repair reads no network"

    repair = run_cli("verify", "org/model", "--repair", "--json")

    assert repair.code == 0, repair.stderr
    assert sorted(repair.result["repaired"]) == sorted(bad)
    assert repair.result["bad"] == []
    assert hub.cdn_bytes(sha256(BIG)) == CHUNK_BYTES, "only the corrupt chunk is fetched"
    for r in hub.requests:
        if r.site == "cdn" and sha256(BIG) in r.path:
            first, last = map(int, r.headers["range"].removeprefix("bytes=").split("-"))
            assert CHUNK_BYTES <= first <= last < 2 * CHUNK_BYTES, r.headers["range"]
    assert hub.cdn_bytes(sha256(W2)) == len(W2)
    assert (blobs / sha256(BIG)).read_bytes() == BIG
    assert (blobs / git_oid(CONFIG)).read_bytes() == CONFIG
    assert run_cli("verify", "org/model", "-q").code == 0


def test_verify_checks_a_cache_written_by_huggingface_hub(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("org/model", FILES)
    snapshot_download("org/model", cache_dir=cache)
    assert not (repo_folder(cache) / ".modelhaul").exists()

    good = run_cli("verify", "org/model", "--json")

    assert good.code == 0, good.stderr
    assert good.result["checked"] == len(FILES)

    _flip(repo_folder(cache) / "blobs" / git_oid(VOCAB), 1)
    bad = run_cli("verify", "hf://org/model", "--json")
    assert bad.code == 1 and [b["path"] for b in bad.result["bad"]] == ["tokenizer/vocab.txt"]

    fixed = run_cli("verify", "org/model", "--repair", "--json")
    assert fixed.code == 0, fixed.stderr
    assert fixed.result["repaired"] == ["tokenizer/vocab.txt"]
    assert (repo_folder(cache) / "blobs" / git_oid(VOCAB)).read_bytes() == VOCAB


@pytest.mark.parametrize("writer", ["modelhaul", "huggingface_hub"])
def test_ls_says_corrupt_once_verify_found_a_bad_file_and_ready_after_repair(
    hub: FakeHub, cache: Path, writer: str
) -> None:
    hub.add_repo("org/model", FILES)
    if writer == "modelhaul":
        pull_now(hub, cache, "hf://org/model")
    else:
        snapshot_download("org/model", cache_dir=cache)
    _flip(repo_folder(cache) / "blobs" / sha256(W2), 7)
    assert run_cli("verify", "org/model", "-q").code == 1

    (model,) = ls_json()

    assert model["status"] == "corrupt", "a file verify found bad is not ready"
    assert run_cli("verify", "org/model", "--repair", "-q").code == 0
    (model,) = ls_json()
    assert model["status"] == "ready"


def test_verify_of_a_model_not_in_the_cache_fails_with_a_result_line(cache: Path) -> None:
    run = run_cli("verify", "org/absent", "--json")

    assert run.code == 1
    assert run.result["status"] == "failed"
    assert "org/absent" in run.result["error"]["message"]


def test_repair_of_a_gated_model_sends_the_token(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("org/gated", FILES, gated=True)
    hub.set_token(TOKEN)
    pull_now(hub, cache, "hf://org/gated", token=TOKEN)
    (repo_folder(cache, "models--org--gated") / "blobs" / git_oid(CONFIG)).unlink()

    run = run_cli("verify", "org/gated", "--repair", "--json", HF_TOKEN=TOKEN)

    assert run.code == 0, run.stderr
    assert run.result["repaired"] == ["config.json"]


# ---------------------------------------------------------------------------------- concurrency


def _popen(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        modelhaul_cmd(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ) | env,
    )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize("state", ["shared", "separate"])
def test_two_concurrent_pulls_fetch_each_blob_once(
    hub: FakeHub,
    cache: Path,
    tmp_path: Path,
    procs: list[subprocess.Popen[str]],
    state: str,
) -> None:
    hub.add_repo("org/model", FILES)
    hub.stall_after(sha256(W1), 1024 * 1024)
    first = _popen("pull", "hf://org/model", "--json")
    procs.append(first)
    hub.wait_bytes(sha256(W1), 1024 * 1024, timeout_s=30)  # first holds W1, mid-transfer
    env = {"MODELHAUL_STATE_DIR": str(tmp_path / "state-2")} if state == "separate" else {}
    second = _popen("pull", "hf://org/model", "--json", **env)
    procs.append(second)
    # The second has listed the model and is about to fetch: let the first carry on.
    hub.wait_request(lambda r: "/tree/" in r.path, count=2, timeout_s=30)
    hub.release_stalls()

    outs = [p.communicate(timeout=60) for p in (first, second)]

    for p, (out, err) in zip((first, second), outs, strict=True):
        assert p.returncode == 0, err
        assert _json_lines(out)[-1]["status"] == "completed"
    for data in (W1, W2):
        assert hub.cdn_bytes(sha256(data)) <= len(data) * 1.05, "each blob served about once"
    blobs = repo_folder(cache) / "blobs"
    for path, data in FILES.items():
        assert (blobs / blob_name(path, data)).read_bytes() == data
    assert not list(cache.rglob("*.modelhaul.*"))
    snapshot = Path(_json_lines(outs[0][0])[-1]["path"])
    assert all((snapshot / path).read_bytes() == data for path, data in FILES.items())


def test_an_interrupted_pull_keeps_its_partial_beside_the_blob_and_resumes(
    hub: FakeHub, cache: Path, procs: list[subprocess.Popen[str]]
) -> None:
    hub.add_repo("org/model", {"w.safetensors": W1})
    hub.stall_after(sha256(W1), 1024 * 1024)
    proc = _popen("pull", "hf://org/model", "--json")
    procs.append(proc)
    assert proc.stdout is not None
    # The client has written bytes once it reports them (the server's count runs ahead).
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "progress" and event["bytes_done"] > 0:
            break

    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    assert _json_lines(out)[-1]["status"] == "cancelled"
    blobs = repo_folder(cache) / "blobs"
    assert (blobs / f"{sha256(W1)}.modelhaul.part").exists()
    assert not (blobs / sha256(W1)).exists(), "nothing is published before verification"
    hub.release_stalls()
    hub.reset_stats()

    again = run_cli("pull", "hf://org/model", "--json")

    assert again.code == 0, again.stderr
    assert hub.cdn_bytes(sha256(W1)) < len(W1)
    assert (blobs / sha256(W1)).read_bytes() == W1


def test_ls_counts_what_an_interrupted_pull_received_not_its_preallocated_size(
    hub: FakeHub, cache: Path, procs: list[subprocess.Popen[str]]
) -> None:
    hub.add_repo("org/model", {"w.safetensors": W1})
    hub.stall_after(sha256(W1), 1024 * 1024)
    proc = _popen("pull", "hf://org/model", "--json", "-j", "1")
    procs.append(proc)
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "progress" and event["bytes_done"] > 0:
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    blobs = repo_folder(cache) / "blobs"
    journal = Journal(blobs / f"{sha256(W1)}.modelhaul.journal").load()
    assert journal is not None
    received = journal.done.total()
    assert 0 < received < len(W1)

    (model,) = ls_json()

    assert model["status"] == "partial"
    assert model["partial_bytes"] == received, "received bytes, not the preallocated size"
    text = run_plain("ls")
    assert f"partial (+{human_bytes(received)} received)" in text


def ls_json() -> list[dict[str, Any]]:
    run = subprocess.run(
        modelhaul_cmd("ls", "--json"), capture_output=True, text=True, env=dict(os.environ)
    )
    assert run.returncode == 0, run.stderr
    return list(json.loads(run.stdout))


def run_plain(*args: str) -> str:
    run = subprocess.run(
        modelhaul_cmd(*args), capture_output=True, text=True, env=dict(os.environ), timeout=60
    )
    return run.stdout + run.stderr


# ---------------------------------------------------------------------------------- listings


def test_a_hub_pull_records_the_revision_listing_where_huggingface_hub_reads_it(
    hub: FakeHub, cache: Path
) -> None:
    commit = hub.add_repo("org/model", FILES)

    run = run_cli("pull", "hf://org/model", "--include", "*.json", "--json")

    assert run.code == 0, run.stderr
    tree = json.loads((repo_folder(cache) / "trees" / f"{commit}.json").read_text())
    assert tree["format_version"] == 1 and sorted(tree["files"]) == sorted(FILES)
    weights = tree["files"]["weights/model-00001.safetensors"]
    assert weights["lfs_sha256"] == sha256(W1) and weights["size"] == len(W1)
    assert tree["files"]["config.json"] == {"size": len(CONFIG), "blob_id": git_oid(CONFIG)}
    listed = get_cached_repo_tree("org/model", cache_dir=cache)
    assert sorted(f.path for f in listed) == sorted(FILES)
    # Stock huggingface_hub now knows the snapshot holds only what was asked for.
    with pytest.raises(IncompleteSnapshotError):
        snapshot_download("org/model", cache_dir=cache, local_files_only=True)
    assert snapshot_download(
        "org/model", cache_dir=cache, local_files_only=True, allow_patterns="*.json"
    ) == str(repo_folder(cache) / "snapshots" / commit)
    # What the pull asked for is all there: ready, for ls and verify alike.
    (model,) = ls_json()
    assert model["status"] == "ready" and model["files"] == 1
    assert run_cli("verify", "org/model", "--json").code == 0


def test_a_snapshot_huggingface_hub_left_unfinished_is_partial_and_repair_completes_it(
    hub: FakeHub, cache: Path
) -> None:
    commit = hub.add_repo("org/model", FILES)
    snapshot = Path(snapshot_download("org/model", cache_dir=cache))
    assert not (repo_folder(cache) / ".modelhaul").exists()
    (model,) = ls_json()
    assert model["status"] == "ready" and model["files"] == model["files_listed"] == len(FILES)
    # As stock huggingface_hub leaves an interrupted download: listing written, one file never
    # linked (its blob never published).
    (snapshot / "weights/model-00002.safetensors").unlink()
    (repo_folder(cache) / "blobs" / sha256(W2)).unlink()

    (model,) = ls_json()
    assert model["status"] == "partial"
    assert model["files"] == len(FILES) - 1 and model["files_listed"] == len(FILES)
    verify = run_cli("verify", "org/model", "--json")
    assert verify.code == 1
    assert verify.result["bad"][0]["path"] == "weights/model-00002.safetensors"
    assert verify.result["bad"][0]["problem"] == "missing"

    repair = run_cli("verify", "org/model", "--repair", "--json")

    assert repair.code == 0, repair.stderr
    assert repair.result["repaired"] == ["weights/model-00002.safetensors"]
    assert (
        repo_folder(cache) / "snapshots" / commit / "weights/model-00002.safetensors"
    ).read_bytes() == W2
    (model,) = ls_json()
    assert model["status"] == "ready"


def test_without_any_listing_a_snapshot_is_judged_by_its_links(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("org/model", FILES)
    snapshot = Path(snapshot_download("org/model", cache_dir=cache))
    shutil.rmtree(repo_folder(cache) / "trees")
    (snapshot / "config.json").unlink()  # nothing says it should be there

    (model,) = ls_json()

    assert model["status"] == "ready" and model["files_listed"] is None
    assert model["files"] == len(FILES) - 1


def test_a_resumed_pull_reports_the_bytes_it_received_not_the_file_size(
    hub: FakeHub, cache: Path, procs: list[subprocess.Popen[str]]
) -> None:
    hub.add_repo("org/model", {"w.safetensors": W1})
    hub.stall_after(sha256(W1), 1024 * 1024)
    proc = _popen("pull", "hf://org/model", "--json")
    procs.append(proc)
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "progress" and event["bytes_done"] > 0:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    journal = repo_folder(cache) / "blobs" / f"{sha256(W1)}.modelhaul.journal"
    held = sum(end - start for start, end in json.loads(journal.read_text())["done"])
    assert held > 0
    hub.release_stalls()
    hub.reset_stats()

    again = run_cli("pull", "hf://org/model", "--json")

    assert again.code == 0, again.stderr
    fetched = again.result["bytes_fetched"]
    assert len(W1) - held <= fetched <= hub.cdn_bytes(sha256(W1)) < len(W1)
    assert run_cli("pull", "hf://org/model", "--json").result["bytes_fetched"] == 0


# ---------------------------------------------------------------------------------- in-process


async def _pull(hub: FakeHub, cache: Path, uri: str, mgr: DownloadManager) -> Any:
    spec = await HubSource(endpoint=hub.endpoint).resolve(parse_hf_uri(uri))
    return await ModelPuller(cache, mgr).pull(spec)


async def test_files_sharing_a_blob_fetch_it_once(hub: FakeHub, cache: Path) -> None:
    hub.add_repo(
        "org/model",
        {"a/config.json": CONFIG, "b/config.json": CONFIG, "a/w.bin": W2, "b/w.bin": W2},
    )

    async with DownloadManager() as mgr:
        result = await _pull(hub, cache, "hf://org/model", mgr)

    assert sorted(resolved_paths(hub))[0] in ("a/config.json", "b/config.json")
    assert len([p for p in resolved_paths(hub) if p.endswith("config.json")]) == 1
    assert hub.cdn_bytes(sha256(W2)) == len(W2)
    for path in ("a/config.json", "b/config.json"):
        assert (result.snapshot / path).read_bytes() == CONFIG


async def test_a_long_lived_manager_refetches_a_blob_deleted_between_pulls(
    hub: FakeHub, cache: Path
) -> None:
    hub.add_repo("org/model", {"w.safetensors": W2, "config.json": CONFIG})

    async with DownloadManager() as mgr:
        await _pull(hub, cache, "hf://org/model", mgr)
        for blob in (repo_folder(cache) / "blobs").iterdir():
            blob.unlink()
        result = await _pull(hub, cache, "hf://org/model", mgr)

    assert (result.snapshot / "w.safetensors").read_bytes() == W2
    assert (result.snapshot / "config.json").read_bytes() == CONFIG


# ---------------------------------------------------------------------------------- honest ends


def write_manifest(path: Path, origin: Origin, files: dict[str, bytes]) -> Path:
    entries = "".join(
        f'[[files]]\npath = "{name}"\nsize = {len(data)}\nsha256 = "{sha256(data)}"\n'
        f'url = "{origin.url(name)}"\n'
        for name, data in files.items()
    )
    path.write_text(f'name = "acme/model"\n{entries}')
    return path


def test_ctrl_c_on_a_pull_says_which_files_the_next_run_starts_over(
    origin: Origin, cache: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    files = {"norange.bin": random.Random(71).randbytes(6 * 1024 * 1024)}
    files["ranged.bin"] = random.Random(72).randbytes(6 * 1024 * 1024)
    origin.add_file("norange.bin", files["norange.bin"], accept_ranges=False)
    origin.add_file("ranged.bin", files["ranged.bin"])
    for name in files:
        origin.set_default(name, Fault(rate_bytes_per_s=512 * 1024))
    manifest = write_manifest(tmp_path / "model.toml", origin, files)
    proc = _popen("pull", str(manifest), "--json")
    procs.append(proc)
    assert proc.stdout is not None
    moving: set[str] = set()
    for line in proc.stdout:  # both files have bytes on disk
        event = json.loads(line)
        if event["event"] == "progress" and event["bytes_done"] > 0:
            moving.add(event["url"].rsplit("/", 1)[-1])
            if moving == set(files):
                break

    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    said = (
        "interrupted; the server cannot resume norange.bin (it ignores Range requests), so "
        "the next run starts it over; partial data of the others was kept"
    )
    assert err.strip().splitlines()[-1] == f"modelhaul: {said}", err
    error = _json_lines(out)[-1]["error"]
    assert error["category"] == "cancelled" and error["message"] == said
    assert "resume" not in error["hint"]
    # What the message says is on disk: the partial of the ranged file only.
    parts = sorted(p.name for p in cache.rglob("*.modelhaul.part"))
    assert parts == [f"{sha256(files['ranged.bin'])}.modelhaul.part"]


def test_pull_and_verify_failures_carry_why_and_steps_as_get_does(
    cache: Path, tmp_path: Path
) -> None:
    url = f"{closed_port_url()}/w.bin"
    manifest = tmp_path / "refused.toml"
    manifest.write_text(
        f'name = "acme/refused"\n[[files]]\npath = "w.bin"\nsize = 10\nsha256 = "{"0" * 64}"\n'
        f'url = "{url}"\n'
    )

    run = run_cli("pull", str(manifest), "--retries", "0", "--json")

    assert run.code == 1, run.stderr
    error = run.result["error"]
    assert error["category"] == "network"
    assert error["why"] and error["steps"], error
    # The same guidance as on the terminal.
    assert f"why: {error['why']}" in run.stderr and f"1. {error['steps'][0]}" in run.stderr

    verify = run_cli("verify", "acme/absent", "--json")

    assert verify.code == 1, verify.stderr
    error = verify.result["error"]
    assert error["category"] == "not_found"
    # The store's own words: nothing about web addresses, and nothing made up.
    assert "why" not in error and error["steps"] == [], error
