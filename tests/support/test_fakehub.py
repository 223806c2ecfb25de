"""Fidelity tests for tests/support/fakehub.py: the real huggingface_hub must work against it unchanged.

huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE and friends into ``huggingface_hub.constants`` at
import time, so the in-process tests patch those constants; the subprocess test sets the variables,
which it reads at import like any user's program. Xet is off and the fake never offers it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from fakehub import FakeHub, RequestRecord, fakehub_fixture

TOKEN = "hf_fake_token"
CONFIG = b'{"model_type": "fake"}'
VOCAB = b"a\nb\nc\n"
WEIGHTS_1 = hashlib.sha512(b"one").digest() * 3000  # 192 KB, LFS
WEIGHTS_2 = hashlib.sha512(b"two").digest() * 100  # 6.4 KB, LFS
FILES = {
    "config.json": CONFIG,
    "tokenizer/vocab.txt": VOCAB,
    "weights/model-00001.safetensors": WEIGHTS_1,
    "weights/model-00002.safetensors": WEIGHTS_2,
}
PAGE_SIZE = 2


def git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def lfs_pointer(content: bytes) -> bytes:
    spec = "version https://git-lfs.github.com/spec/v1"
    return f"{spec}\noid sha256:{sha256(content)}\nsize {len(content)}\n".encode()


def hub_calls(hub: FakeHub) -> list[RequestRecord]:
    """Requests to the Hub, without huggingface_hub's one-off agent-registry fetch."""
    return [r for r in hub.requests if r.site == "hub" and r.path != "/api/agent-harnesses"]


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    yield from fakehub_fixture(page_size=PAGE_SIZE)


@pytest.fixture
def cache(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the real huggingface_hub at the fake, with a private cache and no ambient token."""
    cache_dir, home = tmp_path / "hub-cache", tmp_path / "hf-home"
    home.mkdir()
    # A fresh registry cache keeps huggingface_hub from fetching the agent registry in every test.
    (home / ".agent_harnesses.json").write_text(
        json.dumps({"standardEnvVars": [], "harnesses": {}})
    )
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "HF_HUB_OFFLINE",
        "HUGGINGFACE_HUB_CACHE",
    ):
        monkeypatch.delenv(name, raising=False)
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(cache_dir), "HF_HOME": str(home)}
    for name, value in (env | {"HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}).items():
        monkeypatch.setenv(name, value)
    patched = {
        "ENDPOINT": hub.endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_CACHE": str(cache_dir),
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
    }
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value)
    return cache_dir


def test_regular_file_is_served_by_the_hub_under_its_git_sha1(hub: FakeHub, cache: Path) -> None:
    commit = hub.add_repo("org/model", FILES)

    path = Path(hf_hub_download("org/model", "config.json"))

    repo_dir = cache / "models--org--model"
    assert path == repo_dir / "snapshots" / commit / "config.json"
    assert path.read_bytes() == CONFIG
    assert path.resolve() == (repo_dir / "blobs" / git_oid(CONFIG)).resolve()
    assert (repo_dir / "refs" / "main").read_text() == commit
    head, get = hub_calls(hub)
    assert (head.method, head.status, get.method, get.status) == ("HEAD", 200, "GET", 200)
    assert get.body_bytes == len(CONFIG)
    assert not [r for r in hub.requests if r.site == "cdn"]


def test_lfs_file_redirects_to_the_cdn_and_the_token_stays_on_the_hub(
    hub: FakeHub, cache: Path
) -> None:
    hub.set_token(TOKEN)
    commit = hub.add_repo("org/private", FILES, private=True)
    name = "weights/model-00001.safetensors"

    path = Path(hf_hub_download("org/private", name, token=TOKEN))

    assert path.read_bytes() == WEIGHTS_1
    blob = cache / "models--org--private" / "blobs" / sha256(WEIGHTS_1)
    assert path.resolve() == blob.resolve()
    assert path.parent.parent == cache / "models--org--private" / "snapshots" / commit
    [head] = hub_calls(hub)
    assert (head.method, head.status, head.authorization) == ("HEAD", 302, f"Bearer {TOKEN}")
    [download] = [r for r in hub.requests if r.site == "cdn"]
    assert (download.method, download.status, download.local_host) == ("GET", 200, "127.0.0.2")
    assert download.authorization is None
    assert "X-Amz-Signature=" in download.query
    assert hub.cdn_bytes(name) == hub.cdn_bytes(sha256(WEIGHTS_1)) == len(WEIGHTS_1)


def test_snapshot_download_paginates_the_tree_then_loads_offline(hub: FakeHub, cache: Path) -> None:
    commit = hub.add_repo("org/model", FILES)

    snapshot = Path(snapshot_download("org/model"))

    assert snapshot == cache / "models--org--model" / "snapshots" / commit
    assert {p: (snapshot / p).read_bytes() for p in FILES} == FILES
    assert (cache / "models--org--model" / "trees" / f"{commit}.json").is_file()
    tree_pages = [r for r in hub.requests if "/tree/" in r.path]
    assert len(tree_pages) == 3  # 4 files + 2 directories, 2 per page
    assert {r.status for r in hub.requests} == {200, 302}

    hub.reset_stats()
    assert Path(snapshot_download("org/model", local_files_only=True)) == snapshot
    offline = hf_hub_download("org/model", "weights/model-00002.safetensors", local_files_only=True)
    assert Path(offline).read_bytes() == WEIGHTS_2
    assert hub.requests == []


def test_list_repo_tree_and_model_info_have_the_hub_shapes(hub: FakeHub, cache: Path) -> None:
    commit = hub.add_repo("org/model", FILES)
    api = HfApi()

    entries = list(api.list_repo_tree("org/model", recursive=True))

    files = {e.path: e for e in entries if hasattr(e, "blob_id")}
    folders = {e.path for e in entries if hasattr(e, "tree_id")}
    assert folders == {"tokenizer", "weights"}
    assert set(files) == set(FILES)
    for path, content in FILES.items():
        entry = files[path]
        assert entry.size == len(content)
        if path.startswith("weights/"):
            assert entry.lfs is not None
            assert entry.lfs.sha256 == sha256(content)
            assert entry.lfs.pointer_size == len(lfs_pointer(content))
            assert entry.blob_id == git_oid(lfs_pointer(content))
        else:
            assert (entry.lfs, entry.blob_id) == (None, git_oid(content))
        assert entry.xet_hash is None
    pages = [r for r in hub.requests if "/tree/" in r.path]
    assert len(pages) == 3 and "cursor=" in pages[-1].query

    top = {e.path for e in api.list_repo_tree("org/model")}
    assert top == {"config.json", "tokenizer", "weights"}
    below = {e.path for e in api.list_repo_tree("org/model", path_in_repo="weights")}
    assert below == {"weights/model-00001.safetensors", "weights/model-00002.safetensors"}

    info = api.model_info("org/model", files_metadata=True)
    assert (info.id, info.sha, info.private) == ("org/model", commit, False)
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == set(FILES)
    lfs = siblings["weights/model-00001.safetensors"].lfs
    assert lfs is not None and lfs.sha256 == sha256(WEIGHTS_1)
    assert siblings["config.json"].blob_id == git_oid(CONFIG)


def test_revisions_resolve_by_branch_and_by_commit(hub: FakeHub, cache: Path) -> None:
    first = hub.add_repo("org/model", {"config.json": b"v1"})
    second = hub.add_revision("org/model", "main", {"config.json": b"v2"})
    tagged = hub.add_revision("org/model", "v3.0", {"config.json": b"v3"})
    api = HfApi()

    assert Path(hf_hub_download("org/model", "config.json")).read_bytes() == b"v2"
    assert Path(hf_hub_download("org/model", "config.json", revision=first)).read_bytes() == b"v1"
    assert Path(hf_hub_download("org/model", "config.json", revision="v3.0")).read_bytes() == b"v3"
    refs = cache / "models--org--model" / "refs"
    assert ((refs / "main").read_text(), (refs / "v3.0").read_text()) == (second, tagged)
    assert [api.model_info("org/model", revision=r).sha for r in ("main", first, "v3.0")] == [
        second,
        first,
        tagged,
    ]


def test_dataset_repos_live_under_their_url_prefix(hub: FakeHub, cache: Path) -> None:
    commit = hub.add_repo(
        "org/data", {"train.csv": b"a,b\n1,2\n", "data.bin": WEIGHTS_2}, repo_type="dataset"
    )

    small = hf_hub_download("org/data", "train.csv", repo_type="dataset")
    large = hf_hub_download("org/data", "data.bin", repo_type="dataset")

    assert Path(small).read_bytes() == b"a,b\n1,2\n" and Path(large).read_bytes() == WEIGHTS_2
    assert Path(large).parent == cache / "datasets--org--data" / "snapshots" / commit
    assert all(r.path.startswith("/datasets/org/data/resolve/") for r in hub_calls(hub))
    assert HfApi().dataset_info("org/data").sha == commit


@pytest.mark.parametrize(
    ("repo_id", "filename", "revision", "token", "error", "status"),
    [
        pytest.param(
            "org/missing", "config.json", None, None, RepositoryNotFoundError, 401, id="no-repo"
        ),
        pytest.param(
            "org/missing",
            "config.json",
            None,
            TOKEN,
            RepositoryNotFoundError,
            404,
            id="no-repo-token",
        ),
        pytest.param(
            "org/private", "config.json", None, None, RepositoryNotFoundError, 401, id="private"
        ),
        pytest.param(
            "org/model", "config.json", "nope", None, RevisionNotFoundError, 404, id="no-revision"
        ),
        pytest.param(
            "org/model", "missing.json", None, None, EntryNotFoundError, 404, id="no-file"
        ),
        pytest.param("org/gated", "config.json", None, None, GatedRepoError, 401, id="gated"),
        pytest.param(
            "org/model", "config.json", None, "hf_wrong", HfHubHTTPError, 401, id="wrong-token"
        ),
    ],
)
def test_errors_map_to_huggingface_hub_exceptions(
    hub: FakeHub,
    cache: Path,
    repo_id: str,
    filename: str,
    revision: str | None,
    token: str | None,
    error: type[HfHubHTTPError],
    status: int,
) -> None:
    hub.set_token(TOKEN)
    hub.add_repo("org/model", FILES)
    hub.add_repo("org/private", FILES, private=True)
    hub.add_repo("org/gated", FILES, gated=True)

    with pytest.raises(error) as caught:
        hf_hub_download(repo_id, filename, revision=revision, token=token or False)

    assert caught.value.response.status_code == status
    if error is HfHubHTTPError:  # a bad token must not read as a missing repo
        assert not isinstance(caught.value, RepositoryNotFoundError)


def test_missing_file_is_cached_as_no_exist_and_gated_files_open_with_the_token(
    hub: FakeHub, cache: Path
) -> None:
    hub.set_token(TOKEN)
    commit = hub.add_repo("org/gated", FILES, gated=True)

    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/gated", "missing.json", token=TOKEN)
    assert (cache / "models--org--gated" / ".no_exist" / commit / "missing.json").is_file()
    with pytest.raises(GatedRepoError):  # info and tree are public; the files are not
        snapshot_download("org/gated", token=False)
    assert Path(hf_hub_download("org/gated", "config.json", token=TOKEN)).read_bytes() == CONFIG


def test_rate_limited_head_is_retried_by_huggingface_hub(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("org/model", FILES)
    hub.rate_limit(1, retry_after_s=0)

    assert Path(hf_hub_download("org/model", "config.json")).read_bytes() == CONFIG

    assert [(r.method, r.status) for r in hub_calls(hub)] == [
        ("HEAD", 429),
        ("HEAD", 200),
        ("GET", 200),
    ]


CHUNK = (
    constants.DOWNLOAD_CHUNK_SIZE
)  # 10 MiB: huggingface_hub writes (and can resume) in these steps
BIG = hashlib.sha512(b"big").digest() * ((CHUNK + CHUNK // 10) // 64)


@pytest.mark.parametrize(
    ("drop_at", "resumed_range", "resumed_status"),
    [
        pytest.param(CHUNK // 2, None, 200, id="inside-first-chunk-restarts"),
        pytest.param(CHUNK + 1000, f"bytes={CHUNK}-", 206, id="after-first-chunk-resumes"),
    ],
)
def test_dropped_cdn_connection_is_retried(
    hub: FakeHub, cache: Path, drop_at: int, resumed_range: str | None, resumed_status: int
) -> None:
    hub.add_repo("org/model", {"big.safetensors": BIG})
    hub.drop_after("big.safetensors", drop_at)

    # huggingface_hub sleeps 1 s before retrying: its own backoff, not synchronisation here.
    assert Path(hf_hub_download("org/model", "big.safetensors")).read_bytes() == BIG

    first, second = [r for r in hub.requests if r.site == "cdn"]
    assert (first.status, first.body_bytes) == (200, drop_at)
    assert (second.status, second.headers.get("range")) == (resumed_status, resumed_range)


async def test_ranges_and_validators_from_an_async_client(hub: FakeHub) -> None:
    commit = hub.add_repo("org/model", FILES)
    blob = sha256(WEIGHTS_1)
    url, size = hub.cdn_url(blob, "model.safetensors"), len(WEIGHTS_1)
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Range": "bytes=10-19"}) as r:
            assert (r.status, r.headers["Content-Range"]) == (206, f"bytes 10-19/{size}")
            assert await r.read() == WEIGHTS_1[10:20]
            cdn_etag = r.headers["ETag"]
        assert cdn_etag != f'"{blob}"'  # S3-style: If-Range must use the CDN's own validator
        async with session.get(url, headers={"Range": "bytes=-5", "If-Range": cdn_etag}) as r:
            assert (r.status, await r.read()) == (206, WEIGHTS_1[-5:])
        async with session.get(url, headers={"Range": "bytes=5-", "If-Range": f'"{blob}"'}) as r:
            assert (r.status, len(await r.read())) == (200, size)
        async with session.get(url, headers={"Range": f"bytes={size}-"}) as r:
            assert (r.status, r.headers["Content-Range"]) == (416, f"bytes */{size}")
        async with session.get(url.split("?")[0]) as r:
            assert r.status == 403
        resolve = f"{hub.endpoint}/org/model/resolve/{commit}/config.json"
        async with session.get(resolve, headers={"Range": "bytes=2-"}) as r:
            assert (r.status, await r.read()) == (206, CONFIG[2:])
            assert r.headers["X-Repo-Commit"] == commit
        async with session.head(resolve.replace("config.json", "missing")) as r:
            assert (r.status, r.headers["X-Error-Code"], r.headers["X-Repo-Commit"]) == (
                404,
                "EntryNotFound",
                commit,
            )


def fetch_in_thread(url: str) -> tuple[threading.Thread, list[bytes | Exception]]:
    result: list[bytes | Exception] = []

    def fetch() -> None:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                result.append(response.read())
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            result.append(exc)

    thread = threading.Thread(target=fetch)
    thread.start()
    return thread, result


def test_stall_holds_a_response_until_released(hub: FakeHub) -> None:
    hub.add_repo("org/model", FILES)
    blob = sha256(WEIGHTS_1)
    hub.stall_after(blob, 10_000)

    thread, result = fetch_in_thread(hub.cdn_url(blob))
    [get] = hub.wait_request(lambda r: r.site == "cdn")
    assert hub.wait_bytes(blob, 10_000) == 10_000
    with pytest.raises(TimeoutError):  # held: not one byte more
        hub.wait_bytes(blob, 10_001, timeout_s=0.05)
    assert (get.status, get.body_bytes) == (200, 10_000)
    hub.release_stalls()
    thread.join(timeout=10)

    assert result == [WEIGHTS_1]


def test_stop_is_prompt_and_cuts_stalled_connections() -> None:
    hub = FakeHub().start()
    hub.add_repo("org/model", FILES)
    blob = sha256(WEIGHTS_1)
    hub.stall_after(blob, 1000)
    thread, result = fetch_in_thread(hub.cdn_url(blob))
    hub.wait_bytes(blob, 1000)

    started = time.monotonic()
    hub.stop()
    thread.join(timeout=10)

    assert time.monotonic() - started < 2
    assert len(result) == 1 and isinstance(result[0], Exception)


def test_speed_limit_paces_each_response(hub: FakeHub) -> None:
    hub.add_repo("org/model", FILES)
    hub.set_speed_limit(400_000)

    started = time.monotonic()
    thread, result = fetch_in_thread(hub.cdn_url(sha256(WEIGHTS_1)))  # 192 KB at 400 KB/s
    thread.join(timeout=10)

    assert result == [WEIGHTS_1]
    assert time.monotonic() - started > 0.4


def test_subprocess_configured_by_environment(hub: FakeHub, cache: Path) -> None:
    commit = hub.add_repo("org/model", FILES)
    script = (
        "from huggingface_hub import hf_hub_download;"
        "print(hf_hub_download('org/model', 'weights/model-00002.safetensors'))"
    )

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ, check=True
    )

    path = Path(done.stdout.strip())
    assert path.parent.parent == cache / "models--org--model" / "snapshots" / commit
    assert path.read_bytes() == WEIGHTS_2
    assert [r.site for r in hub_calls(hub)] == ["hub"] and hub.cdn_bytes(sha256(WEIGHTS_2)) == len(
        WEIGHTS_2
    )
