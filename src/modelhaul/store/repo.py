"""The local model store, in the Hugging Face cache layout.

    <root>/models--ORG--NAME/
        blobs/<etag>                        sha256 for LFS files, git blob sha1 for small ones
        blobs/<etag>.modelhaul.part|journal partial data until verified
        refs/<revision>                     the commit, no newline, replaced atomically
        snapshots/<commit>/<path>           relative symlink to ../../blobs/<etag> (or a copy)
        trees/<commit>.json                 the revision's Hub listing, huggingface_hub's format
        .modelhaul/files-<commit>.json      the files pulls asked for: sizes, hashes, URLs; and
                                            the refs a pull still owes (written before fetching)
        .modelhaul/blobs/<etag>.json        verification record and per-chunk digests
    <root>/.locks/models--ORG--NAME/<etag>.lock   the per-blob lock huggingface_hub also takes

huggingface_hub ignores ``.modelhaul/`` (it reads refs, snapshots, blobs and trees), so stock
``snapshot_download(..., local_files_only=True)`` loads what modelhaul wrote, and refuses a
snapshot that ``trees/<commit>.json`` shows to be incomplete, as it does for its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..disk.lock import AsyncFileLock
from ..errors import Category, DiskFull, InvalidInput, ModelhaulError, PermissionDenied
from ..policy.paths import safe_relpath
from ..policy.validate import (
    REVISION_PATTERN,
    check_repo_id,
    check_repo_type,
    check_revision,
    is_blob_id,
    is_commit_hash,
    repo_folder_name,
)
from .chunks import (
    CHUNK_ALGO,
    CHUNK_BYTES,
    LEGACY_CHUNK_ALGO,
    BlobRecord,
    chunk_digests,
    git_blob_sha1,
    sha256_with_chunks,
)

CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by modelhaul (Hugging Face cache layout).\n"
)
_DISCREDITED = -1  # the mtime a record gets when a hash found its blob bad
TREE_FORMAT_VERSION = 1  # huggingface_hub's _tree_cache.TREE_CACHE_FORMAT_VERSION


class NotInStore(ModelhaulError):
    """A model (or revision) the store does not hold: a wrong name, not a server's 404."""

    category = Category.NOT_FOUND
    default_hint = "Run 'modelhaul ls' to see what the store holds."


def hf_cache_root(environ: Mapping[str, str]) -> Path:
    """The cache root as huggingface_hub finds it (HF_HUB_CACHE, legacy, HF_HOME/hub, XDG)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if environ.get(var):
            return Path(environ[var]).expanduser()
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser() / "hub"
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


class RepoStore:
    """One repository's folder in the cache."""

    def __init__(self, root: Path, repo_id: str, repo_type: str = "model") -> None:
        self.root = root
        self.repo_id = check_repo_id(repo_id)
        self.repo_type = check_repo_type(repo_type)
        self.folder = root / repo_folder_name(repo_id, repo_type)
        self.blobs = self.folder / "blobs"
        self.snapshots = self.folder / "snapshots"
        self.refs = self.folder / "refs"
        self.meta = self.folder / ".modelhaul"

    # ------------------------------------------------------------------ paths

    def blob_path(self, etag: str) -> Path:
        if not is_blob_id(etag):
            raise InvalidInput(f"bad blob id {etag!r}")
        return self.blobs / etag

    def lock_path(self, etag: str) -> Path:
        return self.root / ".locks" / self.folder.name / f"{etag}.lock"

    def snapshot_dir(self, commit: str) -> Path:
        return self.snapshots / check_revision(commit)

    def snapshot_file(self, commit: str, relpath: str) -> Path:
        return self.snapshot_dir(commit) / safe_relpath(relpath)

    # ------------------------------------------------------------------ writing

    def prepare(self) -> None:
        try:
            for d in (self.blobs, self.snapshots, self.refs, self.meta / "blobs"):
                d.mkdir(parents=True, exist_ok=True)
            tag = self.root / "CACHEDIR.TAG"
            if not tag.exists():
                _atomic_write(tag, CACHEDIR_TAG.encode())
        except OSError as exc:
            raise PermissionDenied(
                f"cannot write the model store at {self.root}: {exc.strerror}",
                hint="Set HF_HUB_CACHE (or HF_HOME) to a writable directory.",
            ) from exc

    def write_ref(self, revision: str, commit: str) -> None:
        path = self.refs / check_revision(revision)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, commit.encode())

    def read_ref(self, revision: str) -> str | None:
        try:
            text = (self.refs / check_revision(revision)).read_text().strip()
        except (OSError, InvalidInput):
            return None
        return text if is_commit_hash(text) else None

    def link(self, commit: str, relpath: str, etag: str, *, symlinks: bool = True) -> Path:
        """Point ``snapshots/<commit>/<relpath>`` at the blob (relative symlink, else a copy).

        The link is made under a temporary name and renamed into place, so a crash never
        leaves a snapshot entry pointing at a missing or wrong blob.
        """
        dest = self.snapshot_file(commit, relpath)
        blob = self.blob_path(etag)
        # A symlink planted in the snapshot (its commit folder included) must not carry our
        # writes elsewhere, not even the creation of a folder.
        make_dirs_within(self.snapshots, dest.parent)
        # A name of our own: two pulls of one model link the same entries at the same time.
        tmp = unique_tmp(dest)
        if symlinks:
            try:
                os.symlink(os.path.relpath(blob, dest.parent), tmp)
            except OSError:
                symlinks = False
        if not symlinks:
            link_or_copy(blob, tmp)
        try:
            os.replace(tmp, dest)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    def save_file_list(self, commit: str, data: dict[str, Any]) -> None:
        self.meta.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.meta / f"files-{check_revision(commit)}.json", json.dumps(data).encode())

    def load_file_list(self, commit: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.meta / f"files-{check_revision(commit)}.json").read_bytes())
        except (OSError, ValueError, InvalidInput):
            return None
        return data if isinstance(data, dict) else None

    def file_list_lock(self, commit: str) -> FileLock:
        """Held while a file list is read, changed and written back: two pulls of one commit
        (the service and the CLI) must not drop each other's files."""
        self.meta.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.meta / f"files-{check_revision(commit)}.lock"))

    def listed_commits(self) -> list[str]:
        """Commits that have a modelhaul file list, whether or not their snapshot exists."""
        try:
            names = [p.name for p in self.meta.iterdir()]
        except OSError:
            return []
        out = []
        for name in names:
            commit = name.removeprefix("files-").removesuffix(".json")
            if (
                name.startswith("files-")
                and name.endswith(".json")
                and REVISION_PATTERN.match(commit)
            ):
                out.append(commit)
        return out

    # ------------------------------------------------------------------ Hub listings

    def tree_path(self, commit: str) -> Path:
        return self.folder / "trees" / f"{check_revision(commit)}.json"

    def save_tree(self, commit: str, files: Mapping[str, Mapping[str, object]]) -> None:
        """Write huggingface_hub's listing of a commit, unless one is there: a commit's files
        never change, and the one huggingface_hub wrote may know more (Xet hashes)."""
        path = self.tree_path(commit)
        if path.exists():
            return
        data = {
            "format_version": TREE_FORMAT_VERSION,
            "files": {p: dict(files[p]) for p in sorted(files)},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, json.dumps(data, indent=1).encode())

    def load_tree(self, commit: str) -> dict[str, dict[str, Any]] | None:
        """The listing in ``trees/<commit>.json`` (huggingface_hub writes it too); None if
        absent or of a format this code does not know."""
        try:
            data = json.loads(self.tree_path(commit).read_bytes())
        except (OSError, ValueError, InvalidInput):
            return None
        if not isinstance(data, dict) or data.get("format_version") != TREE_FORMAT_VERSION:
            return None
        files = data.get("files")
        if not isinstance(files, dict):
            return None
        return {str(k): v for k, v in files.items() if isinstance(v, dict)}

    # ------------------------------------------------------------------ verification records

    def _record_path(self, etag: str) -> Path:
        return self.meta / "blobs" / f"{etag}.json"

    def record(self, etag: str) -> BlobRecord | None:
        """The verification record of a blob, if the blob is unchanged since."""
        rec = self.chunk_hashes(etag)
        try:
            st = self.blob_path(etag).stat()
        except OSError:
            return None
        if (
            rec is None
            or rec.size != st.st_size
            or rec.mtime_ns != st.st_mtime_ns
            or rec.digest != etag
        ):
            return None
        return rec

    def chunk_hashes(self, etag: str) -> BlobRecord | None:
        """The per-chunk hashes recorded when the blob was first verified, even if the blob has
        changed since (that is exactly when they are needed: to find the bad chunks)."""
        try:
            data = json.loads(self._record_path(etag).read_bytes())
            return BlobRecord(
                size=int(data["size"]),
                mtime_ns=int(data["mtime_ns"]),
                digest=str(data["digest"]),
                chunk_bytes=int(data["chunk_bytes"]),
                chunks=tuple(str(c) for c in data["chunks"]),
                # Records of earlier versions name no digest: theirs is SHA-256.
                chunk_algo=str(data.get("chunk_algo", LEGACY_CHUNK_ALGO)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def verify_blob(self, etag: str, *, record: bool = True, rehash: bool = False) -> bool:
        """Hash a blob and compare with its name; record chunk hashes when it is good.

        A valid record stands in for hashing unless ``rehash``. A blob found bad keeps the chunk
        hashes of its last good state (a repair needs them to find the bad chunks) but loses the
        record's word that it is good.
        """
        path = self.blob_path(etag)
        try:
            st = path.stat()
        except OSError:
            return False
        if not rehash and self.record(etag) is not None:
            return True
        if len(etag) == 40:
            ok = git_blob_sha1(path) == etag
            chunks: tuple[str, ...] = ()
        else:
            digest, chunks = sha256_with_chunks(path, CHUNK_BYTES)
            ok = digest == etag
        if ok and record:
            self.save_record(etag, st, chunks)
        elif not ok:
            self.discredit_record(etag, st)
        return ok

    def record_download(
        self, etag: str, *, chunk_bytes: int = 0, chunk_xxh3: tuple[str, ...] = ()
    ) -> None:
        """Record a blob the engine just verified by its whole hash.

        The engine's hashing pass also gave the xxh3-128 of each chunk (``chunk_xxh3``, see
        events.Result): recorded as they are, without reading the blob again. Only a download
        that hashed nothing (the file was already complete) leaves them to be computed here,
        and only for blobs larger than one chunk, where a repair can save.
        """
        path = self.blob_path(etag)
        st = path.stat()
        if len(etag) != 64 or st.st_size <= CHUNK_BYTES:
            self.save_record(etag, st, ())
        elif chunk_bytes > 0 and len(chunk_xxh3) == -(-st.st_size // chunk_bytes):
            self.save_record(etag, st, chunk_xxh3, chunk_bytes=chunk_bytes)
        else:
            self.save_record(etag, st, chunk_digests(path, CHUNK_BYTES))

    def save_record(
        self,
        etag: str,
        st: os.stat_result,
        chunks: tuple[str, ...],
        *,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        """Write a blob's record; ``chunks`` are xxh3-128 digests of ``chunk_bytes`` pieces."""
        data = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "digest": etag,
            "chunk_bytes": chunk_bytes,
            "chunk_algo": CHUNK_ALGO,
            "chunks": list(chunks),
        }
        # A record only saves work later; failing to write one must not fail a pull.
        with contextlib.suppress(OSError):
            self.meta.joinpath("blobs").mkdir(parents=True, exist_ok=True)
            _atomic_write(self._record_path(etag), json.dumps(data).encode())

    def forget_record(self, etag: str) -> None:
        self._record_path(etag).unlink(missing_ok=True)

    def is_discredited(self, etag: str) -> bool:
        """Whether the last hash of this blob found it bad and the same file is still there (a
        blob replaced since, by any tool, is no longer known to be bad)."""
        try:
            data = json.loads(self._record_path(etag).read_bytes())
            st = self.blob_path(etag).stat()
        except (OSError, ValueError):
            return False
        if not isinstance(data, dict) or data.get("mtime_ns") != _DISCREDITED:
            return False
        bad = data.get("bad")
        if not isinstance(bad, dict):
            return True  # found bad before the file was identified: still believed bad
        return bad.get("size") == st.st_size and bad.get("mtime_ns") == st.st_mtime_ns

    def discredit_record(self, etag: str, st: os.stat_result | None = None) -> None:
        """Keep a record's chunk hashes but make ``record()`` stop vouching for the blob, and
        note which file (``st``) was found bad; a blob without a record gets just that note."""
        try:
            data = json.loads(self._record_path(etag).read_bytes())
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except (OSError, ValueError):
            if st is None:
                return
            data = {"digest": etag}
        data["mtime_ns"] = _DISCREDITED  # never a real mtime: no longer matches the blob
        if st is not None:
            data["bad"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        with contextlib.suppress(OSError):
            self.meta.joinpath("blobs").mkdir(parents=True, exist_ok=True)
            _atomic_write(self._record_path(etag), json.dumps(data).encode())


def unique_tmp(path: Path) -> Path:
    """A temporary name beside ``path`` that no other process or thread uses."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.modelhaul-tmp")


class BlobLock:
    """The per-blob lock huggingface_hub also takes (``.locks/<repo folder>/<etag>.lock``).

    Held while a blob is fetched or repaired, so two processes (modelhaul or huggingface_hub)
    never fetch the same blob at once, whichever state directory each uses. Acquired without
    blocking the event loop (disk.lock); ``on_wait`` is called once if another holder makes
    us wait.
    """

    def __init__(self, path: Path, *, on_wait: Callable[[], None] | None = None) -> None:
        self.path = path
        self._lock = AsyncFileLock(path, on_wait=on_wait)

    @property
    def waited(self) -> bool:
        """Another holder made us wait: what it did may be done now."""
        return self._lock.waited

    async def __aenter__(self) -> BlobLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            await self._lock.acquire()
        except OSError as exc:
            raise PermissionDenied(
                f"cannot create the lock {self.path}: {exc.strerror or exc}",
                hint="Set HF_HUB_CACHE (or HF_HOME) to a writable directory.",
            ) from exc
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


def link_or_copy(src: Path, dest: Path) -> None:
    """A hard link to ``src`` at ``dest``, or a copy where links fail (another file system)."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def make_dirs_within(base: Path, path: Path) -> None:
    """``mkdir -p path`` for a ``path`` below ``base``, refusing a symlink on the way.

    ``mkdir(parents=True)`` followed by a check of where the result resolves would already
    have created folders wherever a planted link pointed. ``base`` itself may be a link (a
    cache moved to another disk); only the levels below it are checked.

    Raises:
        PermissionDenied: a level below ``base`` is a symbolic link (or not a folder).
    """
    base.mkdir(parents=True, exist_ok=True)
    current = base
    for part in path.relative_to(base).parts:
        current = current / part
        if current.is_symlink():
            raise PermissionDenied(f"refusing to write through a symbolic link at {current}")
        try:
            current.mkdir(exist_ok=True)
        except FileExistsError as exc:  # a file where a folder goes
            raise PermissionDenied(f"cannot create the folder {current}: a file is there") from exc


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """OS errors while writing ``path`` as modelhaul errors: a full disk, or a path that cannot
    be written (permissions, a folder where a file goes), never a traceback."""
    try:
        yield
    except ModelhaulError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"the disk is full while writing {path}") from exc
        raise PermissionDenied(f"cannot write {path}: {exc.strerror or exc}") from exc


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = unique_tmp(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


__all__ = [
    "BlobLock",
    "NotInStore",
    "RepoStore",
    "hf_cache_root",
    "link_or_copy",
    "make_dirs_within",
    "unique_tmp",
    "writing",
]
