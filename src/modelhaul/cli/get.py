"""``modelhaul get``: download URLs to files."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import ManagerConfig
from ..engine import check_sha256
from ..errors import Cancelled, InvalidInput, ModelhaulError
from ..events import TaskEvent
from ..manager import DownloadHandle, DownloadManager
from ..sources.url import UrlEntry, parse_input_list
from ..transport import check_url
from .options import add_transfer_options, download_config, state_dir
from .render import Renderer, make_renderer, print_error


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "get",
        help="download URLs (segmented, resumable, verified)",
        description="Download one or more URLs. Re-running the same command resumes.",
    )
    p.add_argument("urls", nargs="*", metavar="URL")
    p.add_argument("-o", "--output", metavar="PATH", help="output file (one URL only)")
    p.add_argument("-d", "--dir", default=".", metavar="DIR", help="output directory (default: .)")
    p.add_argument("--sha256", metavar="HEX", help="expected SHA-256 (one URL only)")
    p.add_argument(
        "-i", "--input-file", metavar="FILE", help="URLs to fetch, one a line (aria2 style)"
    )
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="files in flight (default 4)")
    add_transfer_options(p)
    p.set_defaults(run=run)


def collect_entries(args: argparse.Namespace) -> list[UrlEntry]:
    entries = [UrlEntry(url=check_url(u)) for u in args.urls]
    if args.input_file:
        try:
            text = Path(args.input_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read input file {args.input_file}: {exc}") from exc
        listed = parse_input_list(text, source=args.input_file)
        if not listed:
            raise InvalidInput(f"input file {args.input_file} lists no URL")
        entries.extend(listed)
    if not entries:
        raise InvalidInput("no URL given", hint="Usage: modelhaul get URL [URL ...] or -i FILE.")
    if args.output and len(entries) > 1:
        raise InvalidInput("-o takes one URL; use -d DIR for several")
    if args.sha256:
        if len(entries) > 1:
            raise InvalidInput("--sha256 takes one URL; put sha256= lines in an input file")
        entries[0] = UrlEntry(
            url=entries[0].url, out=entries[0].out, sha256=check_sha256(args.sha256)
        )
    if args.jobs is not None and not 1 <= args.jobs <= 256:
        raise InvalidInput(f"-j must be between 1 and 256, got {args.jobs}")
    return entries


async def run(args: argparse.Namespace) -> int:
    entries = collect_entries(args)
    config = download_config(args)
    renderer = make_renderer(json_mode=args.json, quiet=args.quiet)
    directory = Path(args.dir)
    single = len(entries) == 1
    if args.jobs:
        mconf = ManagerConfig(max_active_files=args.jobs, max_small_files=args.jobs, adaptive=False)
    else:
        mconf = ManagerConfig()
    if single:
        # One file may use every connection the automatic mode wants.
        mconf = replace(mconf, max_connections_per_host=max(16, config.segments.max_connections))
    labels: dict[str, str] = {}
    handles: list[tuple[UrlEntry, DownloadHandle]] = []

    def on_event(ev: TaskEvent) -> None:
        if ev.kind == "progress" and ev.progress is not None:
            renderer.progress(labels.get(ev.task_id, ev.task_id), ev.progress)

    renderer.start()
    try:
        async with DownloadManager(mconf, download_config=config, state_dir=state_dir()) as mgr:
            mgr.subscribe(on_event)
            for entry in entries:
                dest = (
                    Path(args.output)
                    if args.output
                    else (directory / entry.out if entry.out else None)
                )
                h = mgr.add(entry.url, dest, directory=directory, sha256=entry.sha256)
                labels[h.id] = _label(entry, dest)
                handles.append((entry, h))
            try:
                records = [await _wait(entry, h, renderer, labels) for entry, h in handles]
            except asyncio.CancelledError:
                renderer.stop()
                renderer.result(_cancelled_record(args))
                raise
    finally:
        renderer.stop()
    return _finish(records, renderer, single=single)


def _label(entry: UrlEntry, dest: Path | None) -> str:
    if dest is not None:
        return dest.name
    return entry.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or entry.url


async def _wait(
    entry: UrlEntry, handle: DownloadHandle, renderer: Renderer, labels: dict[str, str]
) -> dict[str, Any]:
    key = labels[handle.id]
    try:
        result = await handle.wait()
    except ModelhaulError as exc:
        record = _failed_record(entry, exc)
        renderer.file_done(key, record)
        return record
    record = result.to_dict()
    renderer.file_done(key, record)
    return record


def _failed_record(entry: UrlEntry, exc: ModelhaulError) -> dict[str, Any]:
    return {
        "event": "result",
        "status": "cancelled" if isinstance(exc, Cancelled) else "failed",
        "url": entry.url,
        "path": None,
        "size": None,
        "sha256": None,
        "error": exc.to_dict(),
        "_exc": exc,
    }


def _cancelled_record(args: argparse.Namespace) -> dict[str, Any]:
    err = Cancelled("interrupted; partial data was kept")
    return {
        "event": "result",
        "status": "cancelled",
        "path": args.output,
        "size": None,
        "sha256": None,
        "error": err.to_dict(),
    }


def _finish(records: list[dict[str, Any]], renderer: Renderer, *, single: bool) -> int:
    failures = [r for r in records if r["status"] != "completed"]
    for r in failures:
        exc = r.pop("_exc", None)
        if isinstance(exc, ModelhaulError):
            print_error(exc)
    clean = [{k: v for k, v in r.items() if k != "_exc"} for r in records]
    if single:
        renderer.result(clean[0])
    else:
        status = "completed" if not failures else "failed"
        first_error = failures[0]["error"] if failures else None
        renderer.result(
            {
                "event": "result",
                "status": status,
                "path": None,
                "size": sum(r["size"] or 0 for r in clean),
                "sha256": None,
                "error": first_error,
                "files": clean,
            }
        )
    if not failures:
        return 0
    return 2 if all(r["error"]["category"] == "invalid_input" for r in failures) else 1
