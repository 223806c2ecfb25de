"""Filesystem checks of the cache: writable, free space, symlinks, file locks, partial downloads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from pathlib import Path

import filelock

from ..disk.partials import is_downloading
from ..errors import InvalidInput, human_bytes, human_duration
from ..policy.paths import JOURNAL_SUFFIX, PART_SUFFIX
from ..policy.validate import check_repo_id, parse_repo_folder
from ..remedies import Remedy, say
from .checks import GIB, Check, DoctorConfig, os_error_text

_TEMP_PREFIX = ".modelhaul-doctor-"


async def check_cache_writable(root: Path) -> Check:
    return await asyncio.to_thread(_cache_writable, root)


def _cache_writable(root: Path) -> Check:
    fix = (
        f"Fix the owner or mode of {root} (ls -ld, chown, chmod), or point HF_HUB_CACHE (or "
        "HF_HOME) at a writable directory."
    )
    if root.is_dir():
        error = _try_write(root)
        if error:
            return Check("cache_writable", False, f"cannot write in {root}: {error}", fix)
        return Check("cache_writable", True, f"{root} is writable")
    if root.exists():
        return Check("cache_writable", False, f"{root} exists but is not a directory", fix)
    base = _existing_ancestor(root)
    if not base.is_dir():
        return Check(
            "cache_writable",
            False,
            f"{root} cannot be created: {base} is a file, not a directory",
            fix,
        )
    error = _try_write(base)
    if error:
        return Check(
            "cache_writable",
            False,
            f"{root} does not exist and cannot be created: cannot write in {base}: {error}",
            fix,
        )
    return Check(
        "cache_writable",
        True,
        f"{root} does not exist yet; it can be created in {base}",
    )


async def check_free_space(
    root: Path, *, need_bytes: int | None = None, min_free_bytes: int = GIB
) -> Check:
    return await asyncio.to_thread(_free_space, root, need_bytes, min_free_bytes)


def _free_space(root: Path, need_bytes: int | None, min_free_bytes: int) -> Check:
    where = root if root.is_dir() else _existing_ancestor(root)
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return Check("free_space", None, f"cannot tell for {where}: {os_error_text(exc)}")
    detail = f"{human_bytes(usage.free)} free of {human_bytes(usage.total)} on {where}"
    want = need_bytes if need_bytes is not None else min_free_bytes
    if usage.free >= want:
        if need_bytes is not None:
            detail += f"; the source needs {human_bytes(need_bytes)}"
        return Check("free_space", True, detail)
    short = want - usage.free
    what = "the source needs" if need_bytes is not None else "less than"
    return Check(
        "free_space",
        False,
        f"{detail}; {what} {human_bytes(want)}",
        f"Free at least {human_bytes(short)}: 'modelhaul gc' removes partial downloads and "
        "unused revisions; or set HF_HUB_CACHE to a directory on a bigger disk.",
    )


async def check_symlinks(root: Path) -> Check:
    return await asyncio.to_thread(_symlinks, root)


def _symlinks(root: Path) -> Check:
    where = _probe_dir(root)
    if where is None:
        return Check("symlinks", None, "skipped: no directory to test in")
    target = where / f"{_TEMP_PREFIX}{secrets.token_hex(4)}"
    link = target.with_name(target.name + ".link")
    try:
        target.write_bytes(b"x")
        os.symlink(target.name, link)  # relative, as snapshots/ -> ../../blobs/
        works = link.read_bytes() == b"x"
    except OSError as exc:
        if not target.exists():
            return Check("symlinks", None, f"skipped: cannot write in {where}")
        return Check(
            "symlinks",
            False,
            f"cannot make a symbolic link in {where}: {os_error_text(exc)}",
            "Set HF_HUB_DISABLE_SYMLINKS=1 (files are then copied into snapshots/, using "
            "more space), or move the cache to a filesystem with symlinks via HF_HUB_CACHE.",
        )
    finally:
        for p in (link, target):
            with contextlib.suppress(OSError):
                p.unlink()
    if not works:
        return Check("symlinks", False, f"a relative symlink in {where} does not resolve")
    return Check("symlinks", True, f"relative symlinks work in {where}")


async def check_file_locks(root: Path) -> Check:
    return await asyncio.to_thread(_file_locks, root)


def _file_locks(root: Path) -> Check:
    locks = root / ".locks"
    where = locks if locks.is_dir() else _probe_dir(root)
    if where is None:
        return Check("file_locks", None, "skipped: no directory to test in")
    path = where / f"{_TEMP_PREFIX}{secrets.token_hex(4)}.lock"
    first = filelock.FileLock(path, timeout=0)
    fix = (
        "This filesystem does not lock files (some NFS and FUSE mounts): put the cache on a "
        "local disk with HF_HUB_CACHE, and never run two downloads of one model at once."
    )
    try:
        first.acquire()
    except filelock.Timeout:
        return Check("file_locks", False, f"a fresh lock in {where} is held", fix)
    except OSError as exc:
        if not where.exists() or _try_write(where):
            return Check("file_locks", None, f"skipped: cannot write in {where}")
        return Check(
            "file_locks",
            False,
            f"cannot lock a file in {where}: {os_error_text(exc)}",
            fix,
        )
    try:
        second = filelock.FileLock(path, timeout=0)
        try:
            second.acquire()
        except filelock.Timeout:
            return Check("file_locks", True, f"exclusive file locks work in {where}")
        second.release()
        return Check(
            "file_locks",
            False,
            f"a lock in {where} does not exclude others",
            fix,
        )
    finally:
        first.release()
        with contextlib.suppress(OSError):
            path.unlink()


async def check_partials(config: DoctorConfig) -> Check:
    return await asyncio.to_thread(_partials, config, config.clock())


def _partials(config: DoctorConfig, now: float) -> Check:
    """Partial files in the cache's blobs/ (ours and huggingface_hub's) and in ``cwd``."""
    root = config.cache_root
    patterns = [(root, f"*/blobs/*{PART_SUFFIX}"), (root, "*/blobs/*.incomplete")]
    if config.cwd is not None:
        patterns.append((config.cwd, f"*{PART_SUFFIX}"))
    found: list[tuple[Path, int, float]] = []
    active = 0
    for base, pattern in patterns:
        with contextlib.suppress(OSError):
            for path in sorted(base.glob(pattern)):
                with contextlib.suppress(OSError):
                    st = path.stat()
                    if config.lock_dir and is_downloading(config.lock_dir, path.absolute()):
                        active += 1  # a running download's file is not "lying around"
                        continue
                    found.append((path, st.st_blocks * 512, st.st_mtime))
    running = f" ({active} downloading now)" if active else ""
    if not found:
        return Check("partials", True, f"no partial downloads lying around{running}")
    n, total = len(found), sum(size for _, size, _ in found)
    stale = [p for p, _, mtime in found if now - mtime > config.stale_partial_s]
    shown = ", ".join(str(p) for p, _, _ in found[:5]) + (f" and {n - 5} more" if n > 5 else "")
    detail = (
        f"{n} partial download{'s' if n != 1 else ''}, {human_bytes(total)} on disk, oldest "
        f"untouched for {human_duration(now - min(m for _, _, m in found))}: {shown}{running}"
    )
    if stale:
        detail += f"; {len(stale)} untouched for over {human_duration(config.stale_partial_s)}"
    repos = sorted({r for p, _, _ in found if (r := _repo_of(root, p))})
    resume = "".join(f"; modelhaul pull hf://{r}" for r in repos[:3])
    fix = say(
        config.words, Remedy.OLD_PARTIALS, resume=resume, part=PART_SUFFIX, journal=JOURNAL_SUFFIX
    )
    return Check("partials", not stale, detail, fix, items=tuple(str(p) for p, _, _ in found))


def _repo_of(root: Path, path: Path) -> str | None:
    try:
        folder = path.relative_to(root).parts[0]
    except (ValueError, IndexError):
        return None
    parsed = parse_repo_folder(folder)
    if parsed is None or parsed[0] != "model":
        return None
    with contextlib.suppress(InvalidInput):
        return check_repo_id(parsed[1])
    return None


def _existing_ancestor(path: Path) -> Path:
    """The nearest of ``path`` and its parents that exists (may be a file)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_dir(root: Path) -> Path | None:
    """Where to test filesystem features: the cache root, or what it will be created in."""
    if root.is_dir():
        return root
    base = _existing_ancestor(root)
    return base if base.is_dir() else None


def _try_write(directory: Path) -> str | None:
    """None if a file can be created and removed in ``directory``, else why not."""
    path = directory / f"{_TEMP_PREFIX}{secrets.token_hex(4)}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return os_error_text(exc)
    os.close(fd)
    with contextlib.suppress(OSError):
        path.unlink()
    return None


__all__ = [
    "check_cache_writable",
    "check_file_locks",
    "check_free_space",
    "check_partials",
    "check_symlinks",
]
