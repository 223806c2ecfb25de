"""What a model is, whatever its source: a repository id, a commit, and a set of files."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import InvalidInput


@dataclass(frozen=True, slots=True)
class ModelFile:
    """One file of a model.

    ``blob_id`` names the blob in the store: the SHA-256 for LFS files and manifests, the git
    blob sha1 for small files of a Hub repository.
    """

    path: str
    size: int
    blob_id: str
    urls: tuple[str, ...]  # the first is primary, the rest are mirrors of the same bytes
    sha256: str | None = None  # known for LFS files and manifest entries
    headers: tuple[tuple[str, str], ...] = ()  # credentials for the primary host only

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "size": self.size,
            "blob_id": self.blob_id,
            "sha256": self.sha256,
            "urls": list(self.urls),
        }


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A resolved model: everything needed to pull it without asking the source again."""

    repo_id: str
    commit: str
    files: tuple[ModelFile, ...]
    revision: str | None = None  # the name asked for (branch, tag), when not the commit itself
    repo_type: str = "model"
    source: str = "hf"
    extra: dict[str, object] = field(default_factory=dict)
    # The revision's whole listing in huggingface_hub's trees/<commit>.json format (Hub only),
    # kept through select(): the cache records what the revision holds, not what was asked.
    tree: dict[str, dict[str, object]] | None = None

    def select(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> ModelSpec:
        """Keep files matching any include glob (all if none) and no exclude glob."""
        files = tuple(
            f
            for f in self.files
            if (not include or any(fnmatch.fnmatchcase(f.path, g) for g in include))
            and not any(fnmatch.fnmatchcase(f.path, g) for g in exclude)
        )
        return ModelSpec(
            repo_id=self.repo_id,
            commit=self.commit,
            files=files,
            revision=self.revision,
            repo_type=self.repo_type,
            source=self.source,
            extra=self.extra,
            tree=self.tree,
        )


def check_paths(files: Sequence[ModelFile], where: str) -> None:
    """Refuse a file list in which two entries would land on the same place in a folder: the
    same path twice, or a file that another entry needs as a directory (``a`` and ``a/b``)."""
    seen: set[str] = set()
    for f in files:
        if f.path in seen:
            raise InvalidInput(f"{where}: the path {f.path!r} is listed twice")
        seen.add(f.path)
    for f in files:
        parts = f.path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in seen:
                raise InvalidInput(
                    f"{where}: {parent!r} is listed as a file, but {f.path!r} needs it as a folder"
                )
