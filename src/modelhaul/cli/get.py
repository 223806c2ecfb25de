"""``modelhaul get``: download URLs to files."""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ManagerConfig
from ..errors import Cancelled, Category, InvalidInput, ModelhaulError, TargetConflict
from ..events import EventKind, Progress, Result, State, TaskEvent
from ..policy.paths import JOURNAL_SUFFIX, PART_SUFFIX, plan_paths
from ..policy.urls import check_url
from ..policy.validate import check_sha256
from ..sources.url import UrlEntry
from . import via_server
from .entries import read_input_file
from .options import add_transfer_options, download_config, state_dir
from .output import make_renderer
from .render import (
    JsonRenderer,
    Renderer,
    error_dict,
    interrupted_error,
    print_error,
)

if TYPE_CHECKING:
    from ..manager.downloads import DownloadManager
    from ..manager.handle import DownloadHandle

# Connections one host may get when several files share it (each file still gets its -x).
_SHARED_HOST_CONNECTIONS = 16


# Parsers are declared whole, a command at a time: alike in shape only (each names its own
# flags and help, the CLI contract), so nothing is shared but add_transfer_options.
def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "get",
        help="download URLs (segmented, resumable, verified)",
        description="Download one or more URLs. Re-running the same command resumes.",
    )
    p.add_argument(
        "urls", nargs="*", metavar="URL", help="http:// or https:// URLs to download (or use -i)"
    )
    p.add_argument(
        "-o", "--output", metavar="PATH", help="output file (one URL only; relative to -d)"
    )
    p.add_argument("-d", "--dir", default=".", metavar="DIR", help="output directory (default: .)")
    p.add_argument("--sha256", metavar="HEX", help="expected SHA-256 (one URL only)")
    p.add_argument(
        "-i", "--input-file", metavar="FILE", help="URLs to fetch, one a line (aria2 style)"
    )
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="files in flight (default 4)")
    add_transfer_options(p)
    via_server.add_via_server_option(p)
    p.set_defaults(run=run)


@dataclass(slots=True, eq=False)
class _Job:
    """One requested file: where it goes, its handle once queued, and how it ended."""

    entry: UrlEntry
    dest: Path | None  # None: named by the response, in the output directory
    label: str
    handle: DownloadHandle | None = None
    record: dict[str, Any] | None = None  # its result line, once asked for (record_of)
    result: Result | None = None
    error: ModelhaulError | None = None
    # Its folder's listing showed neither the file nor its partial file or journal (the
    # engine need not look: Downloader.download's known_absent).
    unseen: bool = False

    def record_of(self) -> dict[str, Any] | None:
        """The file's result record once it ended, else None; built when first asked for
        (-q shows none, so a quiet list builds none for its completed files)."""
        if self.record is None and self.result is not None:
            self.record = self.result.to_dict()
            if self.dest is not None:
                # A download shared with another job (one checksum, two names) was linked
                # here too: this job's file is its own destination, never the other job's.
                self.record["path"] = str(self.dest.absolute())
        return self.record


def collect_entries(args: argparse.Namespace) -> list[UrlEntry]:
    entries = [UrlEntry(url=check_url(u)) for u in args.urls]
    if args.input_file:
        listed = read_input_file(args.input_file)
        if not listed:
            raise InvalidInput(f"input file {args.input_file} lists no URL")
        entries.extend(listed)
    if not entries:
        raise InvalidInput("no URL given", hint="Usage: modelhaul get URL [URL ...] or -i FILE.")
    if args.output is not None and len(entries) > 1:
        raise InvalidInput("-o takes one URL; use -d DIR for several")
    if args.sha256:
        if len(entries) > 1:
            raise InvalidInput("--sha256 takes one URL; put sha256= lines in an input file")
        entries[0] = replace(entries[0], sha256=check_sha256(args.sha256))
    if args.jobs is not None and not 1 <= args.jobs <= 256:
        raise InvalidInput(f"-j must be between 1 and 256, got {args.jobs}")
    return entries


def plan_jobs(args: argparse.Namespace, entries: list[UrlEntry]) -> list[_Job]:
    """One job per target path, refused before any request when two URLs would share one.

    The same URL listed twice for the same file is fetched once and reported once: it asks for
    one file, not two. Two different URLs for one file are an error, since only one could end
    up on disk. A name still to come from the response is judged by the name its URL gives
    (the manager refuses a clash of names that the responses give).
    """
    directory = Path(args.dir)
    _check_directory(directory, "the output directory", "Name a directory with -d.")
    jobs: list[_Job] = []
    by_target: dict[str, _Job] = {}
    # The folders files go to (a list of many files shares a few), each listed once a second
    # file goes there: one listing, not a stat per file here and four in the engine.
    folders: dict[Path, _Listing | None] = {}
    for entry in entries:
        if args.output is not None:
            dest: Path | None = directory / args.output
        elif entry.out:
            dest = directory / entry.out
        else:
            dest = None
        unseen = False
        if dest is not None:
            is_dir, unseen = _look_up(dest, directory, folders)
            if is_dir:
                raise InvalidInput(
                    f"the output path {dest} is a directory",
                    hint="Give a file name with -o, or use -d DIR to download into a directory.",
                )
            # What plan_paths would make of it, without the partial file's paths.
            target = os.path.abspath(dest)
        else:
            target = os.path.normpath(plan_paths(entry.url, dest, directory).dest)
        job = _Job(entry, dest, _label(entry, dest), unseen=unseen)
        if (first := by_target.get(target)) is not None:
            first.entry = _same_file(first.entry, entry, Path(target))
            continue
        by_target[target] = job
        jobs.append(job)
    return jobs


@dataclass(frozen=True, slots=True)
class _Listing:
    """What one listing of a folder showed (nothing, for one not made yet): every name in
    it, and which are directories (or links to them)."""

    names: frozenset[str]
    dirs: frozenset[str]


def _look_up(
    dest: Path, directory: Path, folders: dict[Path, _Listing | None]
) -> tuple[bool, bool]:
    """(whether ``dest`` is a directory or a link to one, whether a listing of its folder
    showed neither it nor its partial file or journal). The first file of a folder asks the
    file system (and judges the folder, unless it is the output ``directory``, judged
    already); later ones look in one listing of the folder, kept in ``folders``."""
    folder = dest.parent
    if dest.name in ("", ".", ".."):
        return dest.is_dir(), False
    if folder not in folders:
        if folder != directory:
            _check_directory(folder, "the folder of the output path", "Name a file in a directory.")
        folders[folder] = None
        return dest.is_dir(), False
    listing = folders[folder]
    if listing is None:
        listing = folders[folder] = _list_folder(folder)
    if listing is None:
        return dest.is_dir(), False
    name = dest.name
    seen = {name, name + PART_SUFFIX, name + JOURNAL_SUFFIX} & listing.names
    return name in listing.dirs, not seen


def _list_folder(folder: Path) -> _Listing | None:
    """One listing of ``folder``: empty if it is not there yet, None if it cannot be listed."""
    try:
        with os.scandir(folder) as found:
            entries = list(found)
    except FileNotFoundError:
        return _Listing(frozenset(), frozenset())
    except OSError:
        return None
    return _Listing(
        frozenset(e.name for e in entries), frozenset(e.name for e in entries if e.is_dir())
    )


def _check_directory(path: Path, what: str, hint: str) -> None:
    """Refuse a folder whose nearest existing part is a file: nothing could be written there.
    (A missing folder is fine: it is created.)"""
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                raise InvalidInput(
                    f"{what} {path} is not a directory"
                    + ("" if existing == path else f" ({existing} is a file)"),
                    hint=hint,
                )
            return


def _same_file(first: UrlEntry, other: UrlEntry, target: Path) -> UrlEntry:
    """The one entry for two that name one target: a duplicate, or a conflict refused."""
    if other.url != first.url:
        raise TargetConflict.between(
            str(target),
            first.url,
            other.url,
            hint="Give each URL its own name: an out=NAME line under it in an input file "
            "(-i), or fetch them into different directories (-d).",
        )
    if first.sha256 and other.sha256 and first.sha256 != other.sha256:
        raise InvalidInput(
            f"{first.url} is listed twice for {target} with different SHA-256 checksums",
            hint="Keep one entry with the published checksum.",
        )
    return replace(first, sha256=first.sha256 or other.sha256)


def _label(entry: UrlEntry, dest: Path | None) -> str:
    if dest is not None:
        return dest.name
    return entry.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or entry.url


def manager_config(args: argparse.Namespace, connections: int, *, single: bool) -> ManagerConfig:
    if args.jobs:
        mconf = ManagerConfig(max_active_files=args.jobs, max_small_files=args.jobs, adaptive=False)
    else:
        mconf = ManagerConfig()
    # One file may use every connection automatic mode wants; an explicit -x is per file.
    per_host = max(_SHARED_HOST_CONNECTIONS, connections if single or args.connections else 0)
    return replace(
        mconf,
        max_connections_per_host=per_host,
        max_connections=max(mconf.max_connections, per_host),
    )


async def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: 'get --help' and a mistyped command line never load the
    # engine and aiohttp.
    from ..manager.downloads import DownloadManager

    if (code := await via_server.maybe_via_server(args)) is not None:
        return code
    try:
        entries = collect_entries(args)
        # No store records chunk digests of these files: SHA-256 alone on the hash thread.
        config = replace(download_config(args), chunk_digests=False)
        jobs = plan_jobs(args, entries)
    except ModelhaulError as exc:
        if args.json:  # --json promises a result line last, even for a wrong command line
            JsonRenderer().result(_failed_record(None, exc))
        raise
    conns = config.segments.connections or config.segments.max_connections
    mconf = manager_config(args, conns, single=len(jobs) == 1)
    by_id: dict[str, list[_Job]] = {}
    renderer: Renderer = Renderer()
    manager: DownloadManager | None = None

    def on_event(ev: TaskEvent) -> None:
        for job in by_id.get(ev.task_id, [])[:1]:
            if ev.kind is EventKind.PROGRESS and ev.progress is not None:
                renderer.progress(job.label, ev.progress)
            elif ev.kind is EventKind.STATE and ev.state is State.VERIFYING:
                renderer.verifying(job.label)
            elif ev.kind is EventKind.STATE and ev.state in (State.COMPLETED, State.FAILED):
                # Reported as each file ends, not in list order.
                record = ev.result or _failed_dict(job.entry.url, ev.error or {})
                renderer.file_done(job.label, record)

    try:
        async with DownloadManager(mconf, download_config=config, state_dir=state_dir()) as mgr:
            manager = mgr
            if args.json or not args.quiet:
                # -q shows no event: the manager then builds none (four or more per file).
                mgr.subscribe(on_event)
            directory = Path(args.dir)
            for job in jobs:
                job.handle = mgr.add(
                    job.entry.url,
                    job.dest,
                    directory=directory,
                    sha256=job.entry.sha256,
                    known_absent=job.unseen,
                )
                by_id.setdefault(job.handle.id, []).append(job)
            # Nothing has run yet (no await since the first add): no event is missed.
            renderer = make_renderer(json_mode=args.json, quiet=args.quiet, files=len(by_id))
            renderer.start()
            _notice_busy(mgr, jobs, directory, renderer)
            # Every file ends before the results are collected: one wake-up for the list,
            # not one per file.
            await mgr.join()
            for job in jobs:
                await _wait(job)
    except asyncio.CancelledError:
        # Reported once the manager has closed: by then each partial file is kept or dropped.
        renderer.stop()
        record = _cancelled_record(jobs, manager)
        renderer.result(record)
        args.interrupted = record["error"]["message"]  # what main says on stderr
        raise
    finally:
        renderer.stop()
    return _finish(jobs, renderer)


def _notice_busy(
    mgr: DownloadManager, jobs: list[_Job], directory: Path, renderer: Renderer
) -> None:
    """Say so when another process holds a target: this one will wait for it, then reuse it.

    The manager waits on the lock without telling anyone, so the CLI looks before it starts.
    """
    busy = mgr.downloading_among(
        (job, plan_paths(job.entry.url, job.dest, directory)) for job in jobs
    )
    for job in busy:
        renderer.notice(
            f"another modelhaul process is downloading {job.label}; waiting for it to finish"
        )


async def _wait(job: _Job) -> None:
    assert job.handle is not None
    try:
        result = await job.handle.wait()
    except ModelhaulError as exc:
        job.error = exc
        job.record = _failed_record(job.entry.url, exc)
    else:
        job.result = result


def _failed_dict(url: str | None, error: dict[str, str]) -> dict[str, Any]:
    return {
        "event": "result",
        "status": "cancelled" if error.get("category") == Category.CANCELLED else "failed",
        "url": url,
        "path": None,
        "size": None,
        "sha256": None,
        "error": error,
    }


def _failed_record(url: str | None, exc: ModelhaulError) -> dict[str, Any]:
    return _failed_dict(url, error_dict(exc))


def _cancelled_record(jobs: list[_Job], manager: DownloadManager | None) -> dict[str, Any]:
    record = _failed_record(None, _interrupted(jobs, manager))
    if len(jobs) == 1:
        job = jobs[0]
        record["url"] = job.entry.url
        known = _last_progress(job, manager)
        record["path"] = (
            known.path if known else str(job.dest.absolute()) if job.dest is not None else None
        )
    else:
        record["files"] = [r for j in jobs if (r := j.record_of()) is not None]
    return record


def _interrupted(jobs: list[_Job], manager: DownloadManager | None) -> Cancelled:
    unfinished = [j for j in jobs if j.record_of() is None]
    return interrupted_error({j.label: _resumable(j, manager) for j in unfinished})


def _last_progress(job: _Job, manager: DownloadManager | None) -> Progress | None:
    """The last progress ``job``'s download reported (what its progress events said)."""
    if manager is None or job.handle is None:
        return None
    return manager.last_progress(job.handle.id)


def _resumable(job: _Job, manager: DownloadManager | None) -> bool:
    p = _last_progress(job, manager)
    return p is None or p.resumable


def _show_result(jobs: list[_Job], failures: list[_Job], renderer: Renderer) -> None:
    records = [r for j in jobs if (r := j.record_of()) is not None]
    if len(jobs) == 1:
        renderer.result(records[0])
        return
    renderer.result(
        {
            "event": "result",
            "status": "completed" if not failures else "failed",
            "path": None,
            "size": sum(r["size"] or 0 for r in records),
            "bytes_transferred": sum(r.get("bytes_transferred") or 0 for r in records),
            "sha256": None,
            "error": failures[0].record["error"] if failures and failures[0].record else None,
            "files": records,
        }
    )


def _finish(jobs: list[_Job], renderer: Renderer) -> int:
    failures = [j for j in jobs if j.error is not None]
    for job in failures:
        assert job.error is not None
        print_error(job.error, what=job.label if len(jobs) > 1 else None)
    if renderer.shows_result():  # -q shows none: no record is built for it
        _show_result(jobs, failures, renderer)
    if not failures:
        return 0
    categories = {j.error.category for j in failures if j.error is not None}
    if categories == {Category.INVALID_INPUT}:
        return 2
    if categories == {Category.CANCELLED}:
        return 130
    return 1
