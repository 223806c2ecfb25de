"""Guidance for failures on this machine or in the user's hands: integrity, a full disk,
permissions, invalid input, a cancel."""

from __future__ import annotations

from ..errors import DiskFull, IntegrityError, ModelhaulError, human_bytes
from ..remedies import Remedy
from .context import DOCTOR_COMMAND, Context


def integrity(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    if ctx.model:
        repair = ctx.say(Remedy.REPAIR_MODEL, model=ctx.model)
    else:
        repair = ctx.say(Remedy.REPAIR_AGAIN)
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
        _gc_step(short, ctx),
        ctx.say(Remedy.BIGGER_DISK),
        "Then run the same command again: finished files are kept.",
    ]
    if ctx.model:
        steps.insert(1, ctx.say(Remedy.FETCH_LESS))
    return why, steps


def _gc_step(short: int | None, ctx: Context) -> str:
    """The gc that frees ``short`` bytes, as exact as what is known allows."""
    amount = f"at least {human_bytes(short)}" if short else "space"
    partials = "and removes partial downloads untouched for 7 days"
    store_bytes = ctx.store_bytes
    if short and store_bytes is not None and store_bytes > short:
        cap_bytes = _size_floor(store_bytes - short)
        return ctx.say(
            Remedy.GC_TO,
            amount=amount,
            cap=_size_text(cap_bytes),
            cap_bytes=cap_bytes,
            partials=partials,
        )
    return ctx.say(Remedy.GC_ANY, amount=amount, partials=partials)


def permission(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    root = ctx.cache_root or "the cache directory"
    return (
        "modelhaul may not write where the files go: wrong owner or mode, a read-only "
        "filesystem, or a path through a file or symbolic link.",
        [
            f"Check the owner and mode of {root} (ls -ld); fix them with chown/chmod.",
            ctx.say(Remedy.WRITABLE_CACHE),
            f"'{DOCTOR_COMMAND}' checks that the cache directory is writable.",
        ],
    )


def invalid_input(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    hint = err.hint_in(ctx.words)
    steps = [hint] if hint else []
    steps.append(ctx.say(Remedy.SYNTAX))
    return "the command line or an input file is not in the expected form.", steps


def cancelled(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    return (
        "the download was interrupted (Ctrl-C, SIGTERM or a cancel).",
        ["Run the same command again: it resumes from the partial data that was kept."],
    )


def _size_floor(n: int) -> int:
    """``n`` bytes rounded down to a tenth of a GiB (from 1 GiB up) or a whole MiB, so that a
    cache cut to it frees at least enough and the size reads short."""
    if n >= 1024**3:
        return int(n / 1024**3 * 10) * 1024**3 // 10
    return max(n // 1024**2, 0) * 1024**2


def _size_text(n: int) -> str:
    """A size from ``_size_floor`` as a size argument: '8G', '1.5G', '300M'."""
    if n >= 1024**3:
        return f"{n / 1024**3:g}G"
    return f"{n // 1024**2}M"
