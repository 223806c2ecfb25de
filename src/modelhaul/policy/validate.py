"""Pure checks of names that come from users and remote listings, before they touch a path.

Each ``check_*`` returns its argument unchanged or raises ``InvalidInput``; the ``is_*``
functions only answer. No I/O here: the store, the sources and the faces all use these;
``check_sha256`` normalises the checksums users hand in.
"""

from __future__ import annotations

import re

from ..errors import InvalidInput

# ---------------------------------------------------------------------- repositories and revisions

_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
REVISION_PATTERN = re.compile(r"^[A-Za-z0-9._/-]{1,255}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_BLOB_ID = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
REPO_TYPES = ("model", "dataset", "space")


def check_repo_id(repo_id: str) -> str:
    """``org/name`` (or a bare ``name``); raise InvalidInput for anything that could escape."""
    parts = repo_id.split("/")
    if not 1 <= len(parts) <= 2 or not all(_REPO_PART.match(p) for p in parts):
        raise InvalidInput(
            f"bad model name {repo_id!r}",
            hint="Use ORG/NAME as on the Hub, e.g. 'openai-community/gpt2'.",
        )
    if any(p in (".", "..") or "--" in p or p.endswith(".") for p in parts):
        raise InvalidInput(f"bad model name {repo_id!r}")
    return repo_id


def check_revision(revision: str) -> str:
    """A branch, tag or commit usable as a file name below ``refs/`` or ``snapshots/``."""
    if (
        not REVISION_PATTERN.match(revision)
        or ".." in revision.split("/")
        or revision.startswith("/")
    ):
        raise InvalidInput(f"bad revision {revision!r}")
    return revision


def check_repo_type(repo_type: str) -> str:
    if repo_type not in REPO_TYPES:
        raise InvalidInput(f"bad repository type {repo_type!r}")
    return repo_type


def is_commit_hash(text: str) -> bool:
    """A full 40-hex git commit id (a revision that names exactly one snapshot)."""
    return bool(_COMMIT.match(text))


def is_blob_id(text: str) -> bool:
    """A blob's name in the cache: a git blob sha1 (40 hex) or an LFS SHA-256 (64 hex)."""
    return bool(_BLOB_ID.match(text))


def repo_folder_name(repo_id: str, repo_type: str = "model") -> str:
    return f"{repo_type}s--" + "--".join(repo_id.split("/"))


def parse_repo_folder(name: str) -> tuple[str, str] | None:
    """``models--org--name`` -> ("model", "org/name"); None if not a repo folder."""
    type_part, sep, rest = name.partition("--")
    if not sep or type_part not in ("models", "datasets", "spaces") or not rest:
        return None
    return type_part[:-1], rest.replace("--", "/")


def split_model_ref(text: str) -> tuple[str, str, str | None]:
    """``[hf://][datasets/|spaces/|models/]ORG/NAME[@REV]`` -> (repo_type, name, revision).

    Only splits: the callers check the name and decide how strict to be about the revision.

    Raises:
        InvalidInput: an ``@`` with nothing after it.
    """
    rest = text[5:] if text.startswith("hf://") else text
    repo_type = "model"
    for kind in ("datasets", "spaces", "models"):
        if rest.startswith(kind + "/"):
            repo_type, rest = kind[:-1], rest[len(kind) + 1 :]
            break
    name, at, rev = rest.partition("@")
    if at and not rev:
        raise InvalidInput(f"empty revision in {text!r}")
    return repo_type, name.strip("/"), rev or None


# ---------------------------------------------------------------------- checksums
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def check_sha256(value: str | None) -> str | None:
    """The SHA-256 ``value`` normalised to lower case; None stays None.

    Raises:
        InvalidInput: ``value`` is not 64 hexadecimal digits.
    """
    if value is None:
        return None
    if not _HEX64.match(value):
        raise InvalidInput(
            f"bad SHA-256 {value!r}: expected 64 hexadecimal digits",
            hint="Copy the checksum exactly as published (sha256sum prints it first).",
        )
    return value.lower()
