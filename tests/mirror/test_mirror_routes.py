"""The mirror's routes under /hf: a real service in front of the fake Hub, stock huggingface_hub
and plain httpx as the clients (issue 16: routes, the header contract, errors, the store)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download

from fakehub import FakeHub
from server_harness import ServerThread, point_hub_at_mirror, service_config, wait_until

CONFIG = b'{"model_type": "fake"}'
WEIGHTS = bytes(range(256)) * 1024 * 3  # 768 KiB, LFS
SHARD = hashlib.sha256(b"shard").digest() * 4096  # 128 KiB, LFS
FILES = {"config.json": CONFIG, "model.safetensors": WEIGHTS, "sub/shard.bin": SHARD}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def paged_hub() -> Iterator[FakeHub]:
    with FakeHub(page_size=2) as hub:
        yield hub


@pytest.fixture
def mirror(
    paged_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServerThread]:
    """The service with its mirror's upstream at the fake Hub; huggingface_hub in this process
    pointed at the mirror (its import-time constants), its agent registry pre-cached."""
    with ServerThread(service_config(tmp_path, hf_endpoint=paged_hub.endpoint)) as server:
        point_hub_at_mirror(server, tmp_path, monkeypatch)
        yield server


def store_root() -> Path:
    return Path(os.environ["HF_HUB_CACHE"])


# ---------------------------------------------------------------------------------- metadata


def test_info_carries_the_commit_and_siblings(paged_hub: FakeHub, mirror: ServerThread) -> None:
    main = paged_hub.add_repo("org/model", FILES)
    tag = paged_hub.add_revision("org/model", "v1", {"config.json": b"{}"})
    with mirror.client() as c:
        info = c.get("/hf/api/models/org/model")
        at_tag = c.get("/hf/api/models/org/model/revision/v1")
    assert info.status_code == 200
    assert info.json()["sha"] == main
    assert sorted(s["rfilename"] for s in info.json()["siblings"]) == sorted(FILES)
    assert at_tag.json()["sha"] == tag
    api = HfApi(endpoint=mirror.url + "/hf", token=False)
    assert api.repo_info("org/model", revision="v1").sha == tag


def test_tree_pages_link_back_to_the_mirror(paged_hub: FakeHub, mirror: ServerThread) -> None:
    paged_hub.add_repo("org/model", FILES)
    with mirror.client() as c:
        first = c.get("/hf/api/models/org/model/tree/main", params={"recursive": "True"})
    assert first.status_code == 200
    assert first.links["next"]["url"].startswith(mirror.url + "/hf/api/models/org/model/tree/")
    api = HfApi(endpoint=mirror.url + "/hf", token=False)
    listed = {e.path for e in api.list_repo_tree("org/model", recursive=True)}
    assert listed == {"config.json", "model.safetensors", "sub", "sub/shard.bin"}
    assert {e.path for e in api.list_repo_tree("org/model", path_in_repo="sub")} == {
        "sub/shard.bin"
    }


def test_errors_carry_the_hub_codes(paged_hub: FakeHub, mirror: ServerThread) -> None:
    commit = paged_hub.add_repo("org/model", FILES)
    with mirror.client() as c:
        no_repo = c.get("/hf/api/models/org/none")
        no_rev = c.get("/hf/api/models/org/model/revision/nope")
        no_file = c.head("/hf/org/model/resolve/main/missing.bin")
        no_file_get = c.get("/hf/org/model/resolve/main/missing.bin")
    assert no_repo.headers["X-Error-Code"] == "RepoNotFound"
    assert no_rev.status_code == 404 and no_rev.headers["X-Error-Code"] == "RevisionNotFound"
    for answer in (no_file, no_file_get):
        assert answer.status_code == 404
        assert answer.headers["X-Error-Code"] == "EntryNotFound"
        assert answer.headers["X-Repo-Commit"] == commit
        assert answer.headers["X-Error-Message"]


# ---------------------------------------------------------------------------------- resolve


def test_head_follows_the_header_contract(paged_hub: FakeHub, mirror: ServerThread) -> None:
    commit = paged_hub.add_repo("org/model", FILES)
    with mirror.client() as c:
        lfs = c.head("/hf/org/model/resolve/main/model.safetensors")
        small = c.head(f"/hf/org/model/resolve/{commit}/config.json")
    assert lfs.status_code == 200
    assert lfs.headers["X-Repo-Commit"] == commit
    assert lfs.headers["ETag"] == f'"{sha256(WEIGHTS)}"'
    assert lfs.headers["X-Linked-Etag"] == f'"{sha256(WEIGHTS)}"'
    assert lfs.headers["X-Linked-Size"] == str(len(WEIGHTS))
    assert lfs.headers["Content-Length"] == str(len(WEIGHTS))
    assert lfs.headers["Accept-Ranges"] == "bytes"
    assert small.headers["ETag"] == f'"{git_oid(CONFIG)}"'
    assert small.headers["Content-Length"] == str(len(CONFIG))
    assert "X-Linked-Etag" not in small.headers
    for answer in (lfs, small):
        assert "Location" not in answer.headers, "the client must not be sent around the mirror"
        assert not any(h.lower().startswith("x-xet") for h in answer.headers)
    assert paged_hub.cdn_bytes(sha256(WEIGHTS)) == 0, "a HEAD fetches nothing"


CONTRACT = ("X-Repo-Commit", "ETag", "X-Linked-Etag", "X-Linked-Size", "Accept-Ranges")


def test_get_carries_the_same_contract_as_head_cold_and_stored(
    paged_hub: FakeHub, mirror: ServerThread
) -> None:
    paged_hub.add_repo("org/model", FILES)
    url = "/hf/org/model/resolve/main/model.safetensors"
    with mirror.client() as c:
        head = c.head(url)
        cold = c.get(url)  # streamed from the flight
        stored = c.get(url)  # from the store
        ranged = c.get(url, headers={"Range": "bytes=10-19"})
    contract = {h: head.headers[h] for h in CONTRACT}
    for answer in (cold, stored, ranged):
        assert {h: answer.headers[h] for h in CONTRACT} == contract
        assert not any(h.lower().startswith("x-xet") for h in answer.headers)
        assert "Link" not in answer.headers
    assert cold.headers["Content-Length"] == head.headers["Content-Length"] == str(len(WEIGHTS))
    assert cold.content == stored.content == WEIGHTS
    assert ranged.headers["Content-Length"] == "10" and ranged.content == WEIGHTS[10:20]


def test_ranges_give_206_and_unsatisfiable_ones_416(
    paged_hub: FakeHub, mirror: ServerThread
) -> None:
    paged_hub.add_repo("org/model", FILES)
    url = "/hf/org/model/resolve/main/model.safetensors"
    size = len(WEIGHTS)
    with mirror.client() as c:
        middle = c.get(url, headers={"Range": "bytes=1000-1999"})
        tail = c.get(url, headers={"Range": "bytes=-100"})
        open_end = c.get(url, headers={"Range": f"bytes={size - 10}-"})
        past = c.get(url, headers={"Range": f"bytes={size}-"})
        whole = c.get(url)
    assert middle.status_code == 206
    assert middle.headers["Content-Range"] == f"bytes 1000-1999/{size}"
    assert middle.content == WEIGHTS[1000:2000]
    assert tail.headers["Content-Range"] == f"bytes {size - 100}-{size - 1}/{size}"
    assert tail.content == WEIGHTS[-100:]
    assert open_end.content == WEIGHTS[-10:]
    assert past.status_code == 416
    assert past.headers["Content-Range"] == f"bytes */{size}"
    assert whole.status_code == 200 and whole.content == WEIGHTS


@pytest.mark.parametrize("revision", ["main", "v1", "commit"])
def test_stock_clients_download_a_model_by_branch_tag_and_commit(
    paged_hub: FakeHub, mirror: ServerThread, tmp_path: Path, revision: str
) -> None:
    commit = paged_hub.add_repo("org/model", FILES)
    paged_hub.add_revision("org/model", "v1", FILES, commit=commit)
    rev = commit if revision == "commit" else revision
    cache = tmp_path / "client"

    folder = Path(snapshot_download("org/model", revision=rev, cache_dir=cache))
    single = hf_hub_download("org/model", "sub/shard.bin", revision=rev, cache_dir=cache)

    assert folder.name == commit
    for path, data in FILES.items():
        assert (folder / path).read_bytes() == data
    assert Path(single).read_bytes() == SHARD
    offline = snapshot_download("org/model", revision=rev, cache_dir=cache, local_files_only=True)
    assert Path(offline) == folder
    # The files are in the service's store too, in the Hugging Face layout.
    stored = store_root() / "models--org--model" / "snapshots" / commit
    for path, data in FILES.items():
        assert (stored / path).read_bytes() == data
    if revision != "commit":
        assert (store_root() / "models--org--model" / "refs" / rev).read_text() == commit
    with mirror.client() as c:
        listed = c.get("/api/models").json()
    assert "org/model" in json.dumps(listed)


@pytest.mark.parametrize("revision", ["main", "v1", "commit"])
def test_datasets_are_mirrored_under_their_prefix(
    paged_hub: FakeHub, mirror: ServerThread, tmp_path: Path, revision: str
) -> None:
    data = {"train.csv": b"a,b\n1,2\n", "data/part-0.parquet": bytes(range(256)) * 40 * 1024}
    commit = paged_hub.add_repo("org/data", data, repo_type="dataset")
    paged_hub.add_revision("org/data", "v1", data, commit=commit, repo_type="dataset")
    rev = commit if revision == "commit" else revision
    cache = tmp_path / "c"

    folder = Path(snapshot_download("org/data", repo_type="dataset", revision=rev, cache_dir=cache))
    single = hf_hub_download(
        "org/data", "train.csv", repo_type="dataset", revision=rev, cache_dir=cache
    )

    assert folder.name == commit
    for path, content in data.items():
        assert (folder / path).read_bytes() == content
    assert Path(single).read_bytes() == data["train.csv"]
    offline = snapshot_download(
        "org/data", repo_type="dataset", revision=rev, cache_dir=cache, local_files_only=True
    )
    assert Path(offline) == folder
    stored = store_root() / "datasets--org--data" / "snapshots" / commit
    assert (stored / "train.csv").read_bytes() == data["train.csv"]
    assert (stored / "data/part-0.parquet").read_bytes() == data["data/part-0.parquet"]


def test_a_file_in_the_store_is_not_fetched_again(
    paged_hub: FakeHub, mirror: ServerThread, tmp_path: Path
) -> None:
    paged_hub.add_repo("org/model", FILES)
    hf_hub_download("org/model", "model.safetensors", cache_dir=tmp_path / "a")
    sent = paged_hub.cdn_bytes(sha256(WEIGHTS))
    again = hf_hub_download("org/model", "model.safetensors", cache_dir=tmp_path / "b")
    assert Path(again).read_bytes() == WEIGHTS
    assert sent == len(WEIGHTS)
    assert paged_hub.cdn_bytes(sha256(WEIGHTS)) == sent


# ---------------------------------------------------------------------------------- upstream down


def test_upstream_down_serves_the_store_and_504s_the_rest(
    paged_hub: FakeHub, mirror: ServerThread, tmp_path: Path
) -> None:
    commit = paged_hub.add_repo("org/model", FILES)
    hf_hub_download("org/model", "config.json", cache_dir=tmp_path / "a")
    paged_hub.stop()
    with mirror.client() as c:
        by_branch = c.get("/hf/org/model/resolve/main/config.json")
        by_commit = c.head(f"/hf/org/model/resolve/{commit}/config.json")
        missing = c.get("/hf/org/model/resolve/main/model.safetensors")
        info = c.get("/hf/api/models/org/model")
    assert by_branch.status_code == 200 and by_branch.content == CONFIG
    assert by_branch.headers["X-Repo-Commit"] == commit
    assert by_commit.headers["ETag"] == f'"{git_oid(CONFIG)}"'
    for answer in (missing, info):
        assert answer.status_code == 504
        assert "unreachable" in answer.headers["X-Error-Message"]


def mirror_then_stop_upstream(paged_hub: FakeHub, tmp_path: Path) -> str:
    """Pull org/model through the mirror once, wait for its listing, stop the upstream: the
    commit."""
    commit = paged_hub.add_repo("org/model", FILES)
    snapshot_download("org/model", cache_dir=tmp_path / "a")
    listing = store_root() / "models--org--model" / "trees" / f"{commit}.json"
    wait_until(listing.exists, 20, "the mirror keeps the Hub's listing of the commit")
    paged_hub.stop()
    return commit


def test_upstream_down_a_whole_model_is_still_served_in_full(
    paged_hub: FakeHub, mirror: ServerThread, tmp_path: Path
) -> None:
    commit = mirror_then_stop_upstream(paged_hub, tmp_path)

    fresh = Path(snapshot_download("org/model", cache_dir=tmp_path / "b"))

    assert fresh.name == commit
    for path, data in FILES.items():
        assert (fresh / path).read_bytes() == data
    with mirror.client() as c:
        sub = c.get(f"/hf/api/models/org/model/tree/{commit}/sub")
    assert [e["path"] for e in sub.json()] == ["sub/shard.bin"]


def test_upstream_down_the_tree_is_paged_as_the_hub_pages_it(
    paged_hub: FakeHub, mirror: ServerThread, tmp_path: Path
) -> None:
    commit = mirror_then_stop_upstream(paged_hub, tmp_path)
    mirror._server.config.app.state.mirror.tree_page_size = 2  # the Hub's is 1000
    api = HfApi(endpoint=f"{mirror.url}/hf")

    everything = list(api.list_repo_tree("org/model", recursive=True))
    top = list(api.list_repo_tree("org/model", revision=commit))

    top_paths = ["config.json", "model.safetensors", "sub"]
    assert sorted(e.path for e in everything) == [*top_paths, "sub/shard.bin"]
    assert sorted(e.path for e in top) == top_paths
    with mirror.client() as c:
        first = c.get("/hf/api/models/org/model/tree/main", params={"recursive": "True"})
        bad = c.get("/hf/api/models/org/model/tree/main", params={"cursor": "!!"})
    assert len(first.json()) == 2
    assert first.links["next"]["url"].startswith(f"{mirror.url}/hf/api/models/org/model/tree/")
    assert bad.status_code == 400
