"""Manifests: one schema in TOML, JSON and YAML, validated field by field, then pulled.

The validation table runs every case in all three formats, so a rule cannot hold in one and
not another. The pull tests run the CLI as a user does, against tests/support/origin.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import hf_hub_download, snapshot_download

from conftest import modelhaul_cmd
from helpers import to_toml
from modelhaul.errors import InvalidInput
from modelhaul.sources.manifest import (
    MAX_FILE_SIZE,
    load_manifest_file,
    manifest_from_data,
    parse_manifest_text,
)
from origin import Fault, Origin

FORMATS = ("toml", "json", "yaml")
CONFIG = b'{"model_type": "fake"}'
WEIGHTS = hashlib.sha512(b"weights").digest() * 2048  # 128 KiB


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def base_manifest(url: str = "http://127.0.0.1:9") -> dict[str, Any]:
    return {
        "name": "org/model",
        "revision": "v1",
        "files": [
            {
                "path": "config.json",
                "size": len(CONFIG),
                "sha256": sha256(CONFIG),
                "url": f"{url}/config.json",
            },
            {
                "path": "weights/model.safetensors",
                "size": len(WEIGHTS),
                "sha256": sha256(WEIGHTS),
                "url": f"{url}/model.safetensors",
                "mirrors": [f"{url}/mirror/model.safetensors"],
            },
        ],
    }


# ---------------------------------------------------------------------------------- rendering


def render(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data)
    if fmt == "yaml":
        return yaml.safe_dump(data, allow_unicode=True)
    return to_toml(data)


def parse(data: Any, fmt: str) -> Any:
    return parse_manifest_text(render(data, fmt), fmt=fmt, source=f"m.{fmt}")


# ---------------------------------------------------------------------------------- validation

Mutation = Callable[[dict[str, Any]], None]
W = "weights/model.safetensors"


def _key(target: Any, key: str) -> Any:
    return int(key) if isinstance(target, list) else key


def _drop(*keys: str) -> Mutation:
    def mutate(m: dict[str, Any]) -> None:
        target: Any = m
        for k in keys[:-1]:
            target = target[_key(target, k)]
        del target[_key(target, keys[-1])]

    return mutate


def _set(value: Any, *keys: str) -> Mutation:
    def mutate(m: dict[str, Any]) -> None:
        target: Any = m
        for k in keys[:-1]:
            target = target[_key(target, k)]
        target[_key(target, keys[-1])] = value

    return mutate


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutation
    mentions: tuple[str, ...]  # each must appear in the error message


CASES = [
    # missing required fields
    Case("no-name", _drop("name"), ("name",)),
    Case("no-files", _drop("files"), ("files",)),
    Case("no-path", _drop("files", "1", "path"), ("files[1]", "path")),
    Case("no-size", _drop("files", "1", "size"), ("files[1]", W, "size")),
    Case("no-sha256", _drop("files", "1", "sha256"), ("files[1]", W, "sha256")),
    Case("no-url", _drop("files", "1", "url"), ("files[1]", W, "url")),
    # mistyped fields
    Case("name-int", _set(5, "name"), ("name",)),
    Case("name-list", _set(["org/model"], "name"), ("name",)),
    Case("name-bad", _set("org/../model", "name"), ("name",)),
    Case("revision-int", _set(5, "revision"), ("revision",)),
    Case("revision-escapes", _set("../../x", "revision"), ("revision",)),
    Case("files-str", _set("model.bin", "files"), ("files",)),
    Case("files-empty", _set([], "files"), ("files",)),
    Case("files-table", _set({"path": "a"}, "files"), ("files",)),
    Case("entry-str", _set("model.bin", "files", "1"), ("files[1]",)),
    Case("path-int", _set(5, "files", "1", "path"), ("files[1]", "path")),
    Case("path-empty", _set("", "files", "1", "path"), ("files[1]", "path")),
    Case("size-str", _set("131072", "files", "1", "size"), ("files[1]", W, "size")),
    Case("size-float", _set(131072.0, "files", "1", "size"), ("files[1]", W, "size")),
    Case("size-bool", _set(True, "files", "1", "size"), ("files[1]", W, "size")),
    Case("size-negative", _set(-1, "files", "1", "size"), ("files[1]", W, "size")),
    Case("sha256-int", _set(5, "files", "1", "sha256"), ("files[1]", W, "sha256")),
    Case("sha256-short", _set("abc123", "files", "1", "sha256"), ("files[1]", W, "sha256")),
    Case("sha256-not-hex", _set("z" * 64, "files", "1", "sha256"), ("files[1]", W, "sha256")),
    Case("url-int", _set(5, "files", "1", "url"), ("files[1]", W, "url")),
    Case("url-ftp", _set("ftp://example.com/m", "files", "1", "url"), ("files[1]", W, "url")),
    Case("url-relative", _set("model.bin", "files", "1", "url"), ("files[1]", W, "url")),
    Case("mirrors-str", _set("http://a/b", "files", "1", "mirrors"), ("files[1]", W, "mirrors")),
    Case("mirrors-int", _set([5], "files", "1", "mirrors"), ("files[1]", W, "mirrors")),
    Case("mirror-ftp", _set(["ftp://a/b"], "files", "1", "mirrors"), ("files[1]", W, "mirrors")),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_required_field_is_checked_in_every_format(case: Case, fmt: str) -> None:
    data = base_manifest()
    case.mutate(data)

    with pytest.raises(InvalidInput) as info:
        parse(data, fmt)

    assert info.value.category == "invalid_input"
    for word in case.mentions:
        assert word in info.value.message, f"{word!r} not in {info.value.message!r}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_null_required_fields_are_mistyped(fmt: str) -> None:
    if fmt == "toml":
        pytest.skip("TOML has no null")
    for field in ("size", "sha256", "url", "path"):
        data = base_manifest()
        data["files"][1][field] = None
        with pytest.raises(InvalidInput, match=rf"files\[1\].*{field}"):
            parse(data, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_valid_manifest_parses_the_same_in_every_format(fmt: str) -> None:
    spec = parse(base_manifest(), fmt)

    assert spec.repo_id == "org/model" and spec.revision == "v1" and spec.source == "manifest"
    assert [f.path for f in spec.files] == ["config.json", W]
    weights = spec.files[1]
    assert weights.size == len(WEIGHTS) and weights.sha256 == weights.blob_id == sha256(WEIGHTS)
    assert weights.urls == (
        "http://127.0.0.1:9/model.safetensors",
        "http://127.0.0.1:9/mirror/model.safetensors",
    )
    assert spec.commit == parse(base_manifest(), "json").commit


def test_revision_is_optional_and_defaults_to_main() -> None:
    data = base_manifest()
    del data["revision"]
    assert manifest_from_data(data).revision == "main"


def test_upper_case_digests_are_normalised() -> None:
    data = base_manifest()
    data["files"][1]["sha256"] = sha256(WEIGHTS).upper()
    assert manifest_from_data(data).files[1].blob_id == sha256(WEIGHTS)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "path",
    ["../evil", "a/../../evil", "/etc/passwd", "a\\..\\evil", "a\x00b", "C:/evil", ".", "a/./b",
     "a\nb"],
)  # fmt: skip
def test_paths_that_could_escape_the_model_folder_are_refused(path: str, fmt: str) -> None:
    data = base_manifest()
    data["files"][1]["path"] = path

    with pytest.raises(InvalidInput, match=r"files\[1\]"):
        parse(data, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("first", "second"),
    [("a.bin", "a.bin"), ("dir/a.bin", "dir//a.bin"), ("a", "a/b.bin"), ("a/b.bin", "a")],
    ids=["same", "same-after-normalising", "file-then-dir", "dir-then-file"],
)
def test_paths_that_collide_are_refused(first: str, second: str, fmt: str) -> None:
    data = base_manifest()
    data["files"][0]["path"] = first
    data["files"][1]["path"] = second

    with pytest.raises(InvalidInput) as info:
        parse(data, fmt)
    assert (
        repr(first.replace("//", "/")) in info.value.message or repr(second) in info.value.message
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size", [MAX_FILE_SIZE + 1, 2**63, 2**64, 10**30])
def test_absurd_sizes_are_refused(size: int, fmt: str) -> None:
    data = base_manifest()
    data["files"][1]["size"] = size

    with pytest.raises(InvalidInput, match=r"files\[1\]"):
        parse(data, fmt)


def test_sizes_up_to_the_limit_are_accepted() -> None:
    data = base_manifest()
    data["files"][1]["size"] = MAX_FILE_SIZE
    data["files"][0]["size"] = 0
    assert manifest_from_data(data).files[1].size == MAX_FILE_SIZE


@pytest.mark.parametrize(
    ("fmt", "text"),
    [("toml", "name = \n"), ("json", "{"), ("yaml", "files: [\n"), ("json", "[1, 2]"),
     ("yaml", "- a\n- b\n"), ("json", "null")],
)  # fmt: skip
def test_malformed_documents_are_invalid_input(fmt: str, text: str) -> None:
    with pytest.raises(InvalidInput, match=r"not valid|must be a table"):
        parse_manifest_text(text, fmt=fmt, source="m." + fmt)


# ---------------------------------------------------------------------------------- commits


def test_the_commit_depends_on_content_not_on_format_or_order() -> None:
    data = base_manifest()
    reordered = copy.deepcopy(data)
    reordered["files"].reverse()
    changed = copy.deepcopy(data)
    changed["files"][1]["sha256"] = sha256(b"other weights")

    commits = {fmt: parse(data, fmt).commit for fmt in FORMATS}

    assert len(set(commits.values())) == 1
    assert parse(reordered, "toml").commit == commits["toml"]
    assert parse(changed, "toml").commit != commits["toml"]
    assert len(commits["toml"]) == 40 and int(commits["toml"], 16) >= 0


# ---------------------------------------------------------------------------------- files


@pytest.mark.parametrize("fmt", FORMATS)
def test_extensionless_files_are_sniffed(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "manifest"
    path.write_text(render(base_manifest(), fmt))
    assert load_manifest_file(path).repo_id == "org/model"


def test_oversized_or_binary_manifest_files_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.truncate(17 * 1024 * 1024)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")

    with pytest.raises(InvalidInput, match="16 MiB"):
        load_manifest_file(big)
    with pytest.raises(InvalidInput):
        load_manifest_file(binary)


# ---------------------------------------------------------------------------------- the CLI


@dataclass
class CliRun:
    code: int
    lines: list[dict[str, Any]]
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        assert self.lines, f"no JSON output; stderr:\n{self.stderr}"
        assert self.lines[-1]["event"] == "result", self.lines[-1]
        return self.lines[-1]


def run_cli(*args: str, timeout_s: float = 60) -> CliRun:
    proc = subprocess.run(
        modelhaul_cmd(*args),
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=timeout_s,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return CliRun(proc.returncode, lines, proc.stderr)


def cache_root() -> Path:
    return Path(os.environ["HF_HUB_CACHE"])


def closed_port_url() -> str:
    """A URL nobody listens on: bind an ephemeral port, then close it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def serve_model(origin: Origin) -> dict[str, Any]:
    origin.add_file("config.json", CONFIG)
    origin.add_file("model.safetensors", WEIGHTS)
    return base_manifest(origin.base_url)


def write(tmp_path: Path, data: Any, fmt: str) -> Path:
    path = tmp_path / f"model.{fmt}"
    path.write_text(render(data, fmt))
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_names_the_bad_field_and_exits_2(tmp_path: Path, fmt: str) -> None:
    data = base_manifest()
    del data["files"][1]["sha256"]

    run = run_cli("pull", str(write(tmp_path, data, fmt)), "--json")

    assert run.code == 2, run.stderr
    assert run.result["status"] == "failed" and run.result["path"] is None
    error = run.result["error"]
    assert error["category"] == "invalid_input"
    assert "files[1]" in error["message"] and "sha256" in error["message"]
    assert error["hint"]
    assert not (cache_root() / "models--org--model").exists()


def test_a_dead_first_url_falls_over_to_the_mirror(tmp_path: Path, origin: Origin) -> None:
    data = serve_model(origin)
    weights = data["files"][1]
    weights["url"] = closed_port_url() + "/model.safetensors"
    weights["mirrors"] = [origin.url("model.safetensors")]

    run = run_cli("pull", str(write(tmp_path, data, "toml")), "--json")

    assert run.code == 0, run.stderr
    snapshot = Path(run.result["path"])
    assert run.result["status"] == "completed"
    assert (snapshot / W).read_bytes() == WEIGHTS
    assert origin.bytes_served("model.safetensors") == len(WEIGHTS)
    assert any(line["event"] == "notice" and "mirror" in line["message"] for line in run.lines)
    folder = cache_root() / "models--org--model"
    assert snapshot.parent == folder / "snapshots"
    assert (folder / "refs" / "v1").read_text() == snapshot.name
    assert os.readlink(snapshot / W) == f"../../../blobs/{sha256(WEIGHTS)}"
    # Stock huggingface_hub finds the manifest model by name and revision, offline.
    found = hf_hub_download(
        "org/model", W, revision="v1", cache_dir=cache_root(), local_files_only=True
    )
    assert Path(found).read_bytes() == WEIGHTS
    assert snapshot_download(
        "org/model", revision="v1", cache_dir=cache_root(), local_files_only=True
    ) == str(snapshot)


def test_a_manifest_can_be_fetched_from_a_url(origin: Origin) -> None:
    data = serve_model(origin)
    origin.add_file("models/m.yaml", render(data, "yaml").encode())

    run = run_cli("pull", origin.url("models/m.yaml"), "--json", "--include", "*.json")

    assert run.code == 0, run.stderr
    assert (Path(run.result["path"]) / "config.json").read_bytes() == CONFIG
    assert not (Path(run.result["path"]) / W).exists()
    assert origin.bytes_served("model.safetensors") == 0


def test_a_wrong_digest_is_an_integrity_failure_that_publishes_nothing(
    tmp_path: Path, origin: Origin
) -> None:
    data = serve_model(origin)
    data["files"][1]["sha256"] = sha256(b"what the publisher promised")

    run = run_cli("pull", str(write(tmp_path, data, "json")), "--json")

    assert run.code == 1
    assert run.result["status"] == "failed"
    assert run.result["error"]["category"] == "integrity"
    blobs = cache_root() / "models--org--model" / "blobs"
    assert sorted(p.name for p in blobs.iterdir()) == [sha256(CONFIG)]


def test_a_model_larger_than_the_free_space_fails_before_any_download(
    tmp_path: Path, origin: Origin
) -> None:
    data = serve_model(origin)
    data["files"][1]["size"] = 2**50  # 1 PiB

    run = run_cli("pull", str(write(tmp_path, data, "yaml")), "--json")

    assert run.code == 1
    error = run.result["error"]
    assert error["category"] == "disk_full"
    assert "1024.0 TiB" in error["message"] and "free" in error["message"]
    assert "Free at least" in error["hint"]
    assert origin.requests == []


def test_a_hostile_path_writes_nothing_anywhere(tmp_path: Path, origin: Origin) -> None:
    data = serve_model(origin)
    data["files"][1]["path"] = "../../../../evil.bin"

    run = run_cli("pull", str(write(tmp_path, data, "toml")), "--json")

    assert run.code == 2
    assert run.result["error"]["category"] == "invalid_input"
    assert "evil.bin" in run.result["error"]["message"]
    assert not [p for p in tmp_path.rglob("*evil*")]
    assert origin.requests == []


# ---------------------------------------------------------------------------------- failed pulls


TOKENIZER = b'{"vocab": ["a", "b"]}'


def three_files(origin: Origin) -> dict[str, Any]:
    """config.json, tokenizer.json and the weights, served by the origin."""
    data = serve_model(origin)
    origin.add_file("tokenizer.json", TOKENIZER)
    data["files"].insert(
        1,
        {
            "path": "tokenizer.json",
            "size": len(TOKENIZER),
            "sha256": sha256(TOKENIZER),
            "url": origin.url("tokenizer.json"),
        },
    )
    del data["files"][2]["mirrors"]
    return data


def ls_model(name: str = "org/model") -> dict[str, Any]:
    run = subprocess.run(
        modelhaul_cmd("ls", "--json"), capture_output=True, text=True, env=dict(os.environ)
    )
    assert run.returncode == 0, run.stderr
    (model,) = [m for m in json.loads(run.stdout) if m["name"] == name]
    return model


def test_a_pull_that_fails_one_file_leaves_a_partial_model_that_verify_names(
    tmp_path: Path, origin: Origin
) -> None:
    data = three_files(origin)
    data["files"][2]["sha256"] = sha256(b"what the publisher promised")

    pull = run_cli("pull", str(write(tmp_path, data, "toml")), "--json")

    assert pull.code == 1 and pull.result["error"]["category"] == "integrity"
    model = ls_model()
    assert model["status"] == "partial", "2 of 3 files and no ref is not ready"
    assert model["files"] == 2 and model["files_listed"] == 3
    text = subprocess.run(
        modelhaul_cmd("ls"), capture_output=True, text=True, env=dict(os.environ)
    ).stdout
    assert "partial" in text and "2/3" in text and "ready" not in text

    verify = run_cli("verify", "org/model", "--json")

    assert verify.code == 1, "a model missing a file is not all good"
    assert verify.result["status"] == "failed" and verify.result["checked"] == 3
    bad = {b["path"]: b["problem"] for b in verify.result["bad"]}
    assert bad == {W: "missing", "refs/v1": "ref"}
    plain = run_cli("verify", "org/model")
    assert plain.code == 1
    assert f"missing: {W}" in plain.stderr and "1 missing" in plain.stderr
    assert "all good" not in plain.stderr

    # The file's listed digest is wrong: a repair cannot fix that, and says so.
    repair = run_cli("verify", "org/model", "--repair", "--json")
    assert repair.code == 1
    (problem,) = [b for b in repair.result["bad"] if b["path"] == W]
    assert "repair failed" in problem["detail"]
    assert ls_model()["status"] == "partial"


def test_verify_repair_fetches_what_a_failed_pull_left_missing_and_writes_its_ref(
    tmp_path: Path, origin: Origin
) -> None:
    data = three_files(origin)
    origin.plan("model.safetensors", [Fault(status=404)])  # gone for one request only
    manifest = write(tmp_path, data, "json")

    pull = run_cli("pull", str(manifest), "--json")

    assert pull.code == 1 and pull.result["error"]["category"] == "not_found"
    folder = cache_root() / "models--org--model"
    assert not (folder / "refs" / "v1").exists()
    assert ls_model()["status"] == "partial"

    repair = run_cli("verify", "org/model", "--repair", "--json")

    assert repair.code == 0, repair.stderr
    assert repair.result["repaired"] == [W, "refs/v1"]
    assert repair.result["bad"] == []
    snapshot = folder / "snapshots" / (folder / "refs" / "v1").read_text()
    assert (snapshot / W).read_bytes() == WEIGHTS
    model = ls_model()
    assert model["status"] == "ready" and model["files"] == model["files_listed"] == 3
    assert run_cli("verify", "org/model@v1", "--json").code == 0
