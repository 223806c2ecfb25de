"""Names from users and remote listings: repository ids, revisions, cache folder names."""

from __future__ import annotations

import pytest

from modelhaul.errors import InvalidInput
from modelhaul.policy.validate import (
    check_repo_id,
    check_revision,
    parse_repo_folder,
    repo_folder_name,
    split_model_ref,
)

COMMIT = "a" * 40


@pytest.mark.parametrize("repo_id", ["org/model", "gpt2", "Org-1/model_v2.5", "a/b.c-d_e"])
def test_repo_ids_as_on_the_hub_are_accepted(repo_id: str) -> None:
    assert check_repo_id(repo_id) == repo_id


@pytest.mark.parametrize(
    "repo_id",
    ["", "/", "../x", "org/..", "org/../x", "a/b/c", "org--x/y", "/org/x", "org/x/", ".hid/x",
     "org/x.", "a\\b", "a\x00b", "org/mo del", "x" * 97],
)  # fmt: skip
def test_repo_ids_that_could_escape_or_collide_are_refused(repo_id: str) -> None:
    with pytest.raises(InvalidInput):
        check_repo_id(repo_id)


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/1", COMMIT, "release_2024-01"])
def test_revisions_accepted(revision: str) -> None:
    assert check_revision(revision) == revision


@pytest.mark.parametrize(
    "revision", ["", "..", "a/../b", "/abs", "a b", "a\x00", "x" * 256, "a\\b", "~user"]
)
def test_revisions_that_could_escape_are_refused(revision: str) -> None:
    with pytest.raises(InvalidInput):
        check_revision(revision)


@pytest.mark.parametrize(
    ("repo_type", "repo_id", "folder"),
    [
        ("model", "org/model", "models--org--model"),
        ("dataset", "org/data", "datasets--org--data"),
        ("model", "gpt2", "models--gpt2"),
    ],
)
def test_repo_folder_names_round_trip(repo_type: str, repo_id: str, folder: str) -> None:
    assert repo_folder_name(repo_id, repo_type) == folder
    assert parse_repo_folder(folder) == (repo_type, repo_id)


@pytest.mark.parametrize("name", [".locks", "CACHEDIR.TAG", "models", "widgets--a--b", "models--"])
def test_other_entries_of_the_cache_root_are_not_repo_folders(name: str) -> None:
    assert parse_repo_folder(name) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("org/model", ("model", "org/model", None)),
        ("hf://org/model@v1", ("model", "org/model", "v1")),
        ("hf://datasets/org/data", ("dataset", "org/data", None)),
        ("spaces/org/app@main", ("space", "org/app", "main")),
        ("models/org/model/", ("model", "org/model", None)),
    ],
)
def test_model_refs_split_into_type_name_and_revision(
    text: str, expected: tuple[str, str, str | None]
) -> None:
    assert split_model_ref(text) == expected


def test_a_model_ref_with_an_empty_revision_is_refused() -> None:
    with pytest.raises(InvalidInput):
        split_model_ref("org/model@")
