"""The Hub's URL paths and ranges as the mirror parses them (pure, table-driven)."""

from __future__ import annotations

import pytest

from modelhaul.errors import InvalidInput
from modelhaul.policy.hubpaths import (
    lfs_pointer_size,
    normalize_hub_etag,
    parse_api_path,
    parse_resolve_path,
    requested_range,
    split_raw,
)


@pytest.mark.parametrize(
    ("raw", "kind", "repo_type", "repo_id", "revision", "path"),
    [
        ("models/org/name", "info", "model", "org/name", None, ""),
        ("models/gpt2", "info", "model", "gpt2", None, ""),
        ("models/gpt2/revision/v1", "info", "model", "gpt2", "v1", ""),
        ("datasets/org/d/revision/refs%2Fpr%2F1", "info", "dataset", "org/d", "refs/pr/1", ""),
        ("models/org/name/tree/main", "tree", "model", "org/name", "main", ""),
        ("models/org/name/tree/main/a/b", "tree", "model", "org/name", "main", "a/b"),
        ("spaces/org/s/tree/main/", "tree", "space", "org/s", "main", ""),
    ],
)
def test_api_paths(
    raw: str, kind: str, repo_type: str, repo_id: str, revision: str | None, path: str
) -> None:
    hp = parse_api_path(split_raw(raw))
    assert (hp.kind, hp.repo_type, hp.repo_id, hp.revision, hp.path) == (
        kind,
        repo_type,
        repo_id,
        revision,
        path,
    )


@pytest.mark.parametrize(
    ("raw", "repo_type", "repo_id", "revision", "path", "upstream"),
    [
        (
            "org/m/resolve/main/config.json",
            "model",
            "org/m",
            "main",
            "config.json",
            "/org/m/resolve/main/config.json",
        ),
        (
            "gpt2/resolve/v1/a%20b.bin",
            "model",
            "gpt2",
            "v1",
            "a b.bin",
            "/gpt2/resolve/v1/a%20b.bin",
        ),
        (
            "datasets/org/d/resolve/refs%2Fpr%2F1/x/y.csv",
            "dataset",
            "org/d",
            "refs/pr/1",
            "x/y.csv",
            "/datasets/org/d/resolve/refs%2Fpr%2F1/x/y.csv",
        ),
    ],
)
def test_resolve_paths(
    raw: str, repo_type: str, repo_id: str, revision: str, path: str, upstream: str
) -> None:
    hp = parse_resolve_path(split_raw(raw))
    assert (hp.repo_type, hp.repo_id, hp.revision, hp.path) == (repo_type, repo_id, revision, path)
    assert hp.upstream_path() == upstream


@pytest.mark.parametrize(
    "raw",
    [
        "org/m/resolve/main/../../etc/passwd",
        "org/m/resolve/main/%2Fetc%2Fpasswd",
        "org/m/resolve/main",
        "org/m/blob/main/x",
        "../m/resolve/main/x",
    ],
)
def test_resolve_paths_that_could_escape_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput):
        parse_resolve_path(split_raw(raw))


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-4", 10, (0, 5)),
        ("bytes=5-", 10, (5, 10)),
        ("bytes=5-100", 10, (5, 10)),
        ("bytes=-3", 10, (7, 10)),
        ("bytes=-30", 10, (0, 10)),
        ("bytes=10-", 10, "bad"),
        ("bytes=-0", 10, "bad"),
        ("bytes=4-2", 10, None),
        ("bytes=0-1,3-4", 10, None),
        ("items=0-1", 10, None),
    ],
)
def test_ranges(header: str | None, size: int, expected: object) -> None:
    assert requested_range(header, size) == expected


def test_etags_and_pointer_sizes() -> None:
    assert normalize_hub_etag('W/"abc"') == "abc"
    assert normalize_hub_etag(None) is None
    sha = "a" * 64
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize 12345\n"
    assert lfs_pointer_size(sha, 12345) == len(pointer)
