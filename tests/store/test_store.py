"""The Hugging Face-layout store: names, refs, links, verification records and chunk hashes.

Also the store-level helpers of ``models.py`` that read a snapshot back (``local_files``,
``check_file``, ``resolve_local_commit``), since they define what "in the store" means.
Everything here runs on tmp_path without a network.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
import xxhash

from modelhaul.errors import InvalidInput, ModelhaulError, PermissionDenied
from modelhaul.sources.model import ModelFile
from modelhaul.store.chunks import (
    CHUNK_BYTES,
    LEGACY_CHUNK_ALGO,
    bad_chunks,
    chunk_digests,
    chunk_sha256s,
    git_blob_sha1,
    sha256_with_chunks,
)
from modelhaul.store.listing import local_files, resolve_local_commit
from modelhaul.store.repo import RepoStore, hf_cache_root
from modelhaul.store.verify import check_file

COMMIT = "a" * 40
OTHER_COMMIT = "b" * 40


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def rs(tmp_path: Path) -> RepoStore:
    store = RepoStore(tmp_path / "hub", "org/model")
    store.prepare()
    return store


def put_blob(rs: RepoStore, data: bytes, *, lfs: bool = True) -> str:
    etag = sha256(data) if lfs else git_oid(data)
    rs.blob_path(etag).write_bytes(data)
    return etag


# ---------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HF_HUB_CACHE": "/c/hub", "HF_HOME": "/h", "XDG_CACHE_HOME": "/x"}, "/c/hub"),
        ({"HUGGINGFACE_HUB_CACHE": "/legacy", "HF_HOME": "/h"}, "/legacy"),
        ({"HF_HOME": "/h", "XDG_CACHE_HOME": "/x"}, "/h/hub"),
        ({"XDG_CACHE_HOME": "/x"}, "/x/huggingface/hub"),
        ({"HF_HUB_CACHE": "", "HF_HOME": "/h"}, "/h/hub"),
    ],
)
def test_cache_root_follows_huggingface_hub_precedence(env: dict[str, str], expected: str) -> None:
    assert hf_cache_root(env) == Path(expected)


def test_cache_root_defaults_to_home(isolated_home: Path) -> None:
    assert hf_cache_root({}) == isolated_home / ".cache" / "huggingface" / "hub"


@pytest.mark.parametrize("etag", ["A" * 64, "a" * 63, "../" + "a" * 40, "g" * 40, ""])
def test_blob_names_must_be_hex_digests(rs: RepoStore, etag: str) -> None:
    with pytest.raises(InvalidInput):
        rs.blob_path(etag)


def test_prepare_tags_the_cache_directory(rs: RepoStore) -> None:
    tag = rs.root / "CACHEDIR.TAG"
    assert tag.read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert all(d.is_dir() for d in (rs.blobs, rs.snapshots, rs.refs))


# ---------------------------------------------------------------------------------- refs


def test_refs_hold_the_bare_commit_even_for_pull_request_refs(rs: RepoStore) -> None:
    rs.write_ref("main", COMMIT)
    rs.write_ref("refs/pr/1", OTHER_COMMIT)

    assert (rs.refs / "main").read_bytes() == COMMIT.encode()
    assert (rs.refs / "refs" / "pr" / "1").read_bytes() == OTHER_COMMIT.encode()
    assert rs.read_ref("main") == COMMIT
    assert rs.read_ref("refs/pr/1") == OTHER_COMMIT
    assert not [p for p in rs.refs.rglob("*") if "tmp" in p.name]


def test_a_ref_not_holding_a_commit_reads_as_none(rs: RepoStore) -> None:
    (rs.refs / "main").write_text("not a commit\n")
    assert rs.read_ref("main") is None
    assert rs.read_ref("missing") is None
    assert rs.read_ref("../../x") is None


def test_a_ref_written_with_a_newline_is_still_read(rs: RepoStore) -> None:
    (rs.refs / "main").write_text(COMMIT + "\n")
    assert rs.read_ref("main") == COMMIT


# ---------------------------------------------------------------------------------- links


def test_snapshot_entries_are_relative_symlinks_to_the_blob(rs: RepoStore) -> None:
    etag = put_blob(rs, b"weights")

    top = rs.link(COMMIT, "model.bin", etag)
    deep = rs.link(COMMIT, "a/b/c.bin", etag)

    assert os.readlink(top) == f"../../blobs/{etag}"
    assert os.readlink(deep) == f"../../../../blobs/{etag}"
    assert top.read_bytes() == deep.read_bytes() == b"weights"


def test_without_symlinks_the_snapshot_holds_a_plain_file(rs: RepoStore) -> None:
    etag = put_blob(rs, b"weights")

    dest = rs.link(COMMIT, "model.bin", etag, symlinks=False)

    assert not dest.is_symlink() and dest.read_bytes() == b"weights"


def test_relinking_replaces_an_entry_that_points_at_another_blob(rs: RepoStore) -> None:
    old, new = put_blob(rs, b"old"), put_blob(rs, b"new")
    rs.link(COMMIT, "model.bin", old)

    dest = rs.link(COMMIT, "model.bin", new)

    assert dest.read_bytes() == b"new"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.bin"]


def test_a_symlink_planted_in_the_snapshot_does_not_carry_writes_outside(
    rs: RepoStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    etag = put_blob(rs, b"weights")
    snap = rs.snapshot_dir(COMMIT)
    snap.mkdir(parents=True)
    (snap / "sub").symlink_to(outside)

    with pytest.raises(PermissionDenied):
        rs.link(COMMIT, "sub/x.bin", etag)

    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("relpath", ["../x", "/etc/x", "a/../../x", "a\\b", "a\x00b", ""])
def test_unsafe_snapshot_paths_are_refused(rs: RepoStore, relpath: str) -> None:
    etag = put_blob(rs, b"weights")
    with pytest.raises(InvalidInput):
        rs.link(COMMIT, relpath, etag)


def test_concurrent_links_of_the_same_entry_all_succeed(rs: RepoStore) -> None:
    """Two pulls of one model link the same entries at once (two processes, or threads)."""
    etag = put_blob(rs, b"weights")
    n_threads, rounds = 8, 150
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        for _ in range(rounds):
            try:
                rs.link(COMMIT, "model.bin", etag)
            except Exception as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    dest = rs.snapshot_file(COMMIT, "model.bin")
    assert dest.read_bytes() == b"weights"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.bin"]


# ---------------------------------------------------------------------------------- hashes


@pytest.mark.parametrize(
    ("data", "oid"),
    [
        (b"", "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"),
        (b"hello\n", "ce013625030ba8dba906f756967f9e9ca394464a"),
    ],
)
def test_git_blob_sha1_matches_git_hash_object(tmp_path: Path, data: bytes, oid: str) -> None:
    path = tmp_path / "f"
    path.write_bytes(data)
    assert git_blob_sha1(path) == oid


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 3005])
def test_chunk_hashes_in_one_pass_equal_separate_passes(tmp_path: Path, size: int) -> None:
    chunk = 1000
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)

    whole, chunks = sha256_with_chunks(path, chunk)

    expected = tuple(xxh3(data[i : i + chunk]) for i in range(0, size, chunk))
    assert whole == sha256(data)
    assert chunks == expected == chunk_digests(path, chunk)
    legacy = tuple(sha256(data[i : i + chunk]) for i in range(0, size, chunk))
    assert chunk_sha256s(path, chunk) == legacy == chunk_digests(path, chunk, LEGACY_CHUNK_ALGO)


def xxh3(data: bytes) -> str:
    return xxhash.xxh3_128(data).hexdigest()


def _record_for(rs: RepoStore, data: bytes) -> str:
    etag = put_blob(rs, data)
    assert rs.verify_blob(etag)
    return etag


def test_bad_chunks_names_exactly_the_corrupt_chunk(rs: RepoStore) -> None:
    data = os.urandom(3 * CHUNK_BYTES + 100)
    etag = _record_for(rs, data)
    rec = rs.chunk_hashes(etag)
    assert rec is not None and len(rec.chunks) == 4
    with open(rs.blob_path(etag), "r+b") as f:
        f.seek(CHUNK_BYTES + 5)
        f.write(b"\xff" if data[CHUNK_BYTES + 5] != 0xFF else b"\x00")

    assert bad_chunks(rs.blob_path(etag), rec) == [(CHUNK_BYTES, 2 * CHUNK_BYTES)]


def test_bad_chunks_merges_neighbours_and_counts_a_short_tail(rs: RepoStore) -> None:
    data = os.urandom(3 * CHUNK_BYTES + 100)
    etag = _record_for(rs, data)
    rec = rs.chunk_hashes(etag)
    assert rec is not None
    blob = rs.blob_path(etag)
    blob.write_bytes(data[: 2 * CHUNK_BYTES + 10])  # lost the tail

    assert bad_chunks(blob, rec) == [(2 * CHUNK_BYTES, 3 * CHUNK_BYTES + 100)]


def test_a_record_of_an_earlier_version_reads_as_sha256_chunks(rs: RepoStore) -> None:
    """Records written before the chunk digests came from the download name no algorithm:
    SHA-256 of 16 MiB pieces (here smaller, to keep the test small)."""
    chunk = 1000
    data = os.urandom(3 * chunk + 7)
    etag = put_blob(rs, data)
    blob = rs.blob_path(etag)
    st = blob.stat()
    old = {
        "size": len(data),
        "mtime_ns": st.st_mtime_ns,
        "digest": etag,
        "chunk_bytes": chunk,
        "chunks": [sha256(data[i : i + chunk]) for i in range(0, len(data), chunk)],
    }
    (rs.meta / "blobs" / f"{etag}.json").write_text(json.dumps(old))
    rec = rs.record(etag)
    assert rec is not None and rec.chunk_algo == LEGACY_CHUNK_ALGO
    with open(blob, "r+b") as f:
        f.seek(2 * chunk + 1)
        f.write(b"\xff" if data[2 * chunk + 1] != 0xFF else b"\x00")

    assert not rs.verify_blob(etag, rehash=True)
    rec = rs.chunk_hashes(etag)
    assert rec is not None and rec.chunk_algo == LEGACY_CHUNK_ALGO, "a bad blob keeps its record"
    assert bad_chunks(blob, rec) == [(2 * chunk, 3 * chunk)]


# ---------------------------------------------------------------------------------- records


def test_verify_blob_checks_content_against_the_name(rs: RepoStore) -> None:
    good_lfs = put_blob(rs, b"lfs content")
    good_git = put_blob(rs, b"small file", lfs=False)
    liar = sha256(b"something else")
    rs.blob_path(liar).write_bytes(b"not that")

    assert rs.verify_blob(good_lfs)
    assert rs.verify_blob(good_git)
    assert not rs.verify_blob(liar)
    assert not rs.verify_blob(sha256(b"absent"))


def test_a_record_is_trusted_only_while_the_blob_is_untouched(rs: RepoStore) -> None:
    data = b"x" * 100
    etag = _record_for(rs, data)
    assert rs.record(etag) is not None

    blob = rs.blob_path(etag)
    blob.write_bytes(b"y" * 100)  # same size, new mtime
    st = blob.stat()
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    assert rs.record(etag) is None
    assert not rs.verify_blob(etag)
    assert rs.chunk_hashes(etag) is not None, "chunk hashes must outlive the blob's corruption"


def test_file_lists_round_trip_and_a_corrupt_one_reads_as_none(rs: RepoStore) -> None:
    rs.save_file_list(COMMIT, {"files": [{"path": "a", "size": 1}]})
    assert rs.load_file_list(COMMIT) == {"files": [{"path": "a", "size": 1}]}

    (rs.meta / f"files-{COMMIT}.json").write_text("{not json")
    assert rs.load_file_list(COMMIT) is None


# ---------------------------------------------------------------------------------- reading back


def _model_file(rs: RepoStore, path: str, data: bytes, *, lfs: bool = True) -> ModelFile:
    etag = put_blob(rs, data, lfs=lfs)
    rs.link(COMMIT, path, etag)
    return ModelFile(path, len(data), etag, (), sha256(data) if lfs else None)


def test_check_file_names_each_kind_of_problem(rs: RepoStore) -> None:
    good = _model_file(rs, "good.bin", b"good")
    missing = _model_file(rs, "missing.bin", b"missing")
    rs.blob_path(missing.blob_id).unlink()
    short = _model_file(rs, "short.bin", b"short")
    rs.blob_path(short.blob_id).write_bytes(b"shor")
    flipped = _model_file(rs, "flipped.bin", b"flipped", lfs=False)
    rs.blob_path(flipped.blob_id).write_bytes(b"flippeD")
    unlinked = _model_file(rs, "unlinked.bin", b"unlinked")
    rs.snapshot_file(COMMIT, "unlinked.bin").unlink()

    problems = {
        f.path: (p.problem if (p := check_file(rs, COMMIT, f)) else None)
        for f in (good, missing, short, flipped, unlinked)
    }

    assert problems == {
        "good.bin": None,
        "missing.bin": "missing",
        "short.bin": "size",
        "flipped.bin": "hash",
        "unlinked.bin": "link",
    }


def test_check_file_rehashes_even_with_a_fresh_record(rs: RepoStore) -> None:
    f = _model_file(rs, "w.bin", b"w" * 64)
    assert rs.verify_blob(f.blob_id)  # a record now vouches for the blob
    blob = rs.blob_path(f.blob_id)
    st = blob.stat()
    blob.write_bytes(b"v" * 64)  # silent corruption: size and mtime as recorded
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))

    problem = check_file(rs, COMMIT, f)

    assert problem is not None and problem.problem == "hash"


def test_check_file_keeps_the_chunk_hashes_of_a_corrupt_blob(rs: RepoStore) -> None:
    """verify finds the damage, then --repair needs the chunk hashes to refetch only it."""
    data = os.urandom(2 * CHUNK_BYTES + 10)
    f = _model_file(rs, "big.bin", data)
    assert rs.verify_blob(f.blob_id)
    with open(rs.blob_path(f.blob_id), "r+b") as fh:
        fh.write(bytes(b ^ 0xFF for b in data[:10]))

    assert check_file(rs, COMMIT, f) is not None

    rec = rs.chunk_hashes(f.blob_id)
    assert rec is not None and len(rec.chunks) == 3
    assert bad_chunks(rs.blob_path(f.blob_id), rec) == [(0, CHUNK_BYTES)]


def test_local_files_reads_a_snapshot_written_by_huggingface_hub(rs: RepoStore) -> None:
    lfs = _model_file(rs, "weights/model.safetensors", b"weights")
    git = _model_file(rs, "config.json", b"{}", lfs=False)

    files = {f.path: f for f in local_files(rs, COMMIT)}

    assert set(files) == {"weights/model.safetensors", "config.json"}
    assert files["weights/model.safetensors"].blob_id == lfs.blob_id
    assert files["weights/model.safetensors"].sha256 == lfs.blob_id
    assert files["config.json"].blob_id == git.blob_id and files["config.json"].sha256 is None
    assert files["config.json"].size == 2


def test_local_commit_from_ref_commit_or_latest_snapshot(rs: RepoStore) -> None:
    rs.snapshot_dir(COMMIT).mkdir(parents=True)
    assert resolve_local_commit(rs, None) == COMMIT  # no refs/main: the only snapshot
    assert resolve_local_commit(rs, COMMIT) == COMMIT

    rs.snapshot_dir(OTHER_COMMIT).mkdir(parents=True)
    rs.write_ref("main", OTHER_COMMIT)
    rs.write_ref("v1", COMMIT)
    assert resolve_local_commit(rs, None) == OTHER_COMMIT
    assert resolve_local_commit(rs, "v1") == COMMIT

    with pytest.raises(ModelhaulError, match="v2"):
        resolve_local_commit(rs, "v2")


def test_local_commit_of_a_model_not_in_the_store_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ModelhaulError) as info:
        resolve_local_commit(RepoStore(tmp_path, "org/absent"), None)
    assert "org/absent" in info.value.message and "pull" in info.value.hint


def test_a_hub_listing_is_written_once_in_huggingface_hub_format(rs: RepoStore) -> None:
    rs.save_tree(
        COMMIT, {"b.json": {"size": 2, "blob_id": "1" * 40}, "a": {"size": 0, "blob_id": "2" * 40}}
    )
    rs.save_tree(COMMIT, {"other": {"size": 1, "blob_id": "3" * 40}})  # a commit never changes

    data = json.loads(rs.tree_path(COMMIT).read_text())

    assert data["format_version"] == 1 and list(data["files"]) == ["a", "b.json"]
    assert rs.load_tree(COMMIT) == data["files"]
    rs.tree_path(COMMIT).write_text(json.dumps({"format_version": 2, "files": {}}))
    assert rs.load_tree(COMMIT) is None, "a format this code does not know is no listing"


def test_a_blob_found_bad_stays_known_bad_only_while_it_is_the_same_file(rs: RepoStore) -> None:
    etag = put_blob(rs, b"good content")
    assert rs.verify_blob(etag) and not rs.is_discredited(etag)
    blob = rs.blob_path(etag)
    blob.write_bytes(b"bad content!")

    assert not rs.verify_blob(etag, rehash=True)
    assert rs.is_discredited(etag)

    blob.unlink()
    put_blob(rs, b"good content")  # replaced, by any tool
    assert not rs.is_discredited(etag)
