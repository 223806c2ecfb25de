"""A pulled revision as plain files in a folder of the user's choosing (``--local-dir``)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import PermissionDenied
from ..policy.paths import safe_relpath
from ..sources.model import ModelSpec
from .repo import RepoStore, link_or_copy, unique_tmp, writing


def place_local_dir(rs: RepoStore, spec: ModelSpec, local_dir: Path) -> None:
    """Plain files in ``local_dir`` (hard links to the blobs where possible, else copies)."""
    base = local_dir.absolute()
    for f in spec.files:
        dest = base / safe_relpath(f.path)
        with writing(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.parent.resolve().is_relative_to(base.resolve()):
                raise PermissionDenied(f"refusing to write through a symbolic link under {base}")
            tmp = unique_tmp(dest)
            blob = rs.blob_path(f.blob_id)
            try:
                link_or_copy(blob, tmp)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
