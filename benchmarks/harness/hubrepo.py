"""Case F's model and the static Hub that serves it through nginx.

The Hub's API answers for one model are generated once as JSON files, and nginx serves them
together with ``/resolve/`` answers shaped like the real Hub's (see
/work/shared/HF_HUB_PROTOCOL.md and tests/support/fakehub.py, whose response shapes are copied
here): every resolve answer carries ``X-Repo-Commit``; a regular file is served with its git
blob sha1 as ``ETag``; an LFS file answers 302 to a presigned-looking URL on a separate CDN
server, with ``X-Linked-Etag`` (its sha256) and ``X-Linked-Size``. nginx rather than the fake Hub
itself because the fake serves bodies from Python: 1 GiB per run through it would load the
2-core VM that the tools run on, and its cap is per response in 64 KiB steps, where nginx's
``limit_rate`` matches case B's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from .common import DATA, MiB, log
from .data import Blob

ORG = "bench-org"
# The small files of a typical LLM repo, path -> size in bytes (20 files).
SMALL_FILES = {
    ".gitattributes": 1_519,
    "README.md": 5_832,
    "LICENSE": 7_712,
    "USE_POLICY.md": 4_691,
    "config.json": 855,
    "generation_config.json": 184,
    "model.safetensors.index.json": 23_950,
    "tokenizer.json": 9_085_657,
    "tokenizer_config.json": 50_977,
    "special_tokens_map.json": 449,
    "added_tokens.json": 94,
    "chat_template.jinja": 4_220,
    "tokenizer.model": 2_183_982,
    "vocab.json": 1_776_484,
    "merges.txt": 456_318,
    "preprocessor_config.json": 612,
    "original/params.json": 220,
    "original/tokenizer.model": 2_183_982,
    "figures/benchmark.png": 152_733,
    "onnx/config.json": 855,
}
LFS_SUFFIXES = (".safetensors", ".model", ".png", ".bin")
LFS_MIN_BYTES = 1 * MiB
_DATE_ISO = "2024-01-01T00:00:00.000Z"


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    sha256: str
    git_oid: str  # of the content for a regular file, of the pointer file for an LFS file
    lfs: bool
    pointer_size: int
    source: Path  # the bytes on disk that nginx serves


@dataclass(frozen=True)
class HubModel:
    repo_id: str
    commit: str
    files: tuple[HubFile, ...]
    root: Path  # info.json, tree.json, files/, cdn/

    @property
    def payload(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def cache_dir_name(self) -> str:
        return "models--" + self.repo_id.replace("/", "--")


def _git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _pointer(sha256: str, size: int) -> bytes:
    return b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n" % (
        sha256.encode(),
        size,
    )


def _hub_file(path: str, size: int, sha256: str, git_oid: str | None, src: Path) -> HubFile:
    lfs = path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_BYTES
    if lfs:
        pointer = _pointer(sha256, size)
        return HubFile(path, size, sha256, _git_oid(pointer), True, len(pointer), src)
    assert git_oid is not None
    return HubFile(path, size, sha256, git_oid, False, 0, src)


def ensure_hub_model(name: str, shards: list[Blob]) -> HubModel:
    """``bench-org/NAME``: the shards (existing blobs) plus the 20 small files, and its API."""
    root = DATA / "hub" / name
    files_dir = root / "files"
    r = random.Random(f"hub-{name}")
    files: list[HubFile] = []
    for path, size in SMALL_FILES.items():
        dest = files_dir / path
        if not (dest.is_file() and dest.stat().st_size == size):
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(r.randbytes(size))
        else:
            r.randbytes(size)  # keep the generator in step with a fresh build
        data = dest.read_bytes()
        files.append(_hub_file(path, size, hashlib.sha256(data).hexdigest(), _git_oid(data), dest))
    n = len(shards)
    for i, blob in enumerate(shards):
        path = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        files.append(_hub_file(path, blob.size, blob.sha256, None, blob.path))
    files.sort(key=lambda f: f.path)
    seed = f"{ORG}/{name}:" + ",".join(f"{f.path}={f.git_oid}" for f in files)
    model = HubModel(f"{ORG}/{name}", hashlib.sha1(seed.encode()).hexdigest(), tuple(files), root)
    _write_api(model)
    return model


def _write_api(model: HubModel) -> None:
    """info.json, tree.json and the CDN's links, as the Hub's API would answer."""
    root = model.root
    cdn = root / "cdn"
    for f in model.files:
        if not f.lfs:
            continue
        link = cdn / f.sha256[:2] / f.sha256[2:4] / f.sha256
        link.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        os.symlink(f.source, link)
    siblings = []
    for f in model.files:
        sib: dict[str, object] = {"rfilename": f.path, "size": f.size, "blobId": f.git_oid}
        if f.lfs:
            sib["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
        siblings.append(sib)
    info = {
        "_id": hashlib.md5(model.repo_id.encode()).hexdigest()[:24],
        "id": model.repo_id,
        "modelId": model.repo_id,
        "author": ORG,
        "sha": model.commit,
        "lastModified": _DATE_ISO,
        "createdAt": _DATE_ISO,
        "private": False,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "usedStorage": model.payload,
    }
    dirs = sorted({p for f in model.files for p in _parents(f.path)})
    tree: list[dict[str, object]] = [
        {
            "type": "directory",
            "oid": hashlib.sha1(f"tree {d}".encode()).hexdigest(),
            "size": 0,
            "path": d,
        }
        for d in dirs
    ]
    for f in model.files:
        entry: dict[str, object] = {
            "type": "file",
            "oid": f.git_oid,
            "size": f.size,
            "path": f.path,
        }
        if f.lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
        tree.append(entry)
    tree.sort(key=lambda e: str(e["path"]))
    (root / "info.json").write_text(json.dumps(info))
    (root / "tree.json").write_text(json.dumps(tree))


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _cdn_url(cdn_base: str, f: HubFile) -> str:
    sig = hashlib.sha256(b"bench" + f.sha256.encode()).hexdigest()
    name = f.path.rsplit("/", 1)[-1]
    return (
        f"{cdn_base}/repos/{f.sha256[:2]}/{f.sha256[2:4]}/{f.sha256}"
        "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=FAKEKEY%2F20240101%2Fus-east-1%2Fs3%2Faws4_request"
        f"&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-Signature={sig}"
        "&X-Amz-SignedHeaders=host"
        f"&response-content-disposition=attachment%3B%20filename%3D%22{name}%22&x-id=GetObject"
    )


def hub_locations(model: HubModel, cdn_base: str) -> str:
    """nginx ``location`` blocks of the Hub server for ``model`` (API and /resolve/)."""
    info, tree = model.root / "info.json", model.root / "tree.json"
    api = f"/api/models/{model.repo_id}"
    out = [
        "location = /api/agent-harnesses { default_type application/json; "
        """return 200 '{"standardEnvVars": [], "harnesses": {}}'; }""",
    ]
    for uri, path in (
        (api, info),
        (f"{api}/revision/main", info),
        (f"{api}/revision/{model.commit}", info),
        (f"{api}/tree/main", tree),
        (f"{api}/tree/{model.commit}", tree),
    ):
        out.append(f"location = {uri} {{ default_type application/json; alias {path}; }}")
    for rev in ("main", model.commit):
        # The Hub answers the root listing with a trailing slash too (olah asks for it); nginx
        # would take that URI for a directory, so it is rewritten to the listing.
        out.append(f"location = {api}/tree/{rev}/ {{ rewrite ^ {api}/tree/{rev} last; }}")
    for f in model.files:
        common = f"add_header X-Repo-Commit {model.commit} always; "
        for rev in ("main", model.commit):
            uri = f"/{model.repo_id}/resolve/{rev}/{f.path}"
            if f.lfs:
                out.append(
                    f"location = {uri} {{ {common}"
                    f"""add_header ETag '"{f.git_oid}"'; """
                    f"""add_header X-Linked-Etag '"{f.sha256}"'; """
                    f"add_header X-Linked-Size {f.size}; "
                    f'return 302 "{_cdn_url(cdn_base, f)}"; }}'
                )
            else:
                out.append(
                    f"location = {uri} {{ {common}etag off; "
                    f"""add_header ETag '"{f.git_oid}"'; alias {f.source}; }}"""
                )
    return "\n        ".join(out)


def cdn_root(model: HubModel) -> Path:
    return model.root / "cdn"


def log_model(model: HubModel) -> None:
    lfs = sum(f.lfs for f in model.files)
    log(
        f"hub model {model.repo_id}@{model.commit[:8]}: {len(model.files)} files "
        f"({lfs} LFS), {model.payload / MiB:.0f} MiB"
    )
