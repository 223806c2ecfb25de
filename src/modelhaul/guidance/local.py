"""Guidance for failures on this machine or in the user's hands: integrity, a full disk,
permissions, invalid input, a cancel."""

from __future__ import annotations

from ..errors import DiskFull, IntegrityError, ModelhaulError, human_bytes
from .context import DOCTOR_COMMAND, GC_COMMAND, Context


def integrity(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    if ctx.model:
        repair = (
            f"Run 'modelhaul verify {ctx.model} --repair': it refetches only the chunks that "
            "are bad."
        )
    else:
        repair = (
            "Run the same command again: the bad data was discarded and is fetched anew "
            "('modelhaul verify ORG/NAME --repair' for a model in the cache)."
        )
    why = (
        "the bytes on disk do not match the published checksum or size: corrupted in transit, "
        "changed on the server, or damaged on disk."
    )
    if isinstance(err, IntegrityError) and err.actual_size is not None:
        why = "the file did not have the size the server promised: it changed or was cut short."
    return why, [
        repair,
        "If it fails again with the same result, the published checksum may be wrong: check the "
        "source (or download from another mirror).",
        f"Repeated mismatches on different files point at the disk or memory; '{DOCTOR_COMMAND}' "
        "checks the cache directory.",
    ]


def disk_full(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    need = free = short = where = None
    if isinstance(err, DiskFull):
        need, free, short, where = err.need_bytes, err.free_bytes, err.short_bytes, err.path
    where = where or ctx.cache_root
    place = f" in {where}" if where else ""
    if need is not None and free is not None:
        why = (
            f"the download needs {human_bytes(need)} more but only {human_bytes(free)} is "
            f"free{place}."
        )
    else:
        why = f"the disk filled up while writing{place}; the partial data was kept."
    steps = [
        _gc_step(short, ctx.store_bytes),
        "Or put the cache on a bigger disk: set HF_HUB_CACHE=/path/on/bigger/disk (for "
        "'get', -d DIR).",
        "Then run the same command again: finished files are kept.",
    ]
    if ctx.model:
        steps.insert(1, "Fetch only what you need: --include '*.safetensors' --include '*.json'.")
    return why, steps


def _gc_step(short: int | None, store_bytes: int | None) -> str:
    """The gc command that frees ``short`` bytes, as exact as what is known allows."""
    amount = f"at least {human_bytes(short)}" if short else "space"
    partials = "and removes partial downloads untouched for 7 days"
    if short and store_bytes is not None and store_bytes > short:
        cap = _size_arg(store_bytes - short)
        return (
            f"Free {amount}: '{GC_COMMAND} --max-size {cap}' evicts least recently used unpinned "
            f"models until the cache fits {cap} {partials} (add --dry-run to see what first)."
        )
    return (
        f"Free {amount}: 'modelhaul ls' shows the cache's size; '{GC_COMMAND} --max-size SIZE' "
        f"with SIZE that much smaller evicts least recently used unpinned models {partials} "
        "(add --dry-run to see what first)."
    )


def permission(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    root = ctx.cache_root or "the cache directory"
    return (
        "modelhaul may not write where the files go: wrong owner or mode, a read-only "
        "filesystem, or a path through a file or symbolic link.",
        [
            f"Check the owner and mode of {root} (ls -ld); fix them with chown/chmod.",
            "Or point HF_HUB_CACHE (or HF_HOME) at a writable directory; for 'get', use -d DIR.",
            f"'{DOCTOR_COMMAND}' checks that the cache directory is writable.",
        ],
    )


def invalid_input(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    steps = [err.hint] if err.hint else []
    steps.append("Run the command with --help for its syntax.")
    return "the command line or an input file is not in the expected form.", steps


def cancelled(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    return (
        "the download was interrupted (Ctrl-C, SIGTERM or a cancel).",
        ["Run the same command again: it resumes from the partial data that was kept."],
    )


def _size_arg(n: int) -> str:
    """Bytes as a --max-size argument, rounded down so that it frees at least enough."""
    if n >= 1024**3:
        return f"{int(n / 1024**3 * 10) / 10:g}G"
    return f"{max(n // 1024**2, 0)}M"
