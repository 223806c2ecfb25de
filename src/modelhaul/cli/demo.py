"""``modelhaul demo``: a real download from a local origin that misbehaves on purpose.

No network is needed: the origin runs on 127.0.0.1 in this process. The download goes through
the same manager, engine and progress display as ``modelhaul get``, with ``--timeout 2`` so a
stalled connection is dropped and resumed quickly, and is verified against the SHA-256 of the
generated file before the summary says what was survived.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DownloadConfig, ManagerConfig, RetryPolicy, SegmentPolicy, Timeouts
from ..errors import Cancelled, InvalidInput, ModelhaulError, human_bytes, plural
from ..events import EventKind, Result, TaskEvent
from ..policy.units import parse_size
from .output import make_renderer
from .render import JsonRenderer, Renderer
from .words import cli_error

if TYPE_CHECKING:  # the origin and the manager load aiohttp: only a run imports them
    from ..http.demo_origin import DemoFaults, DemoStats, InjectedFault

DEFAULT_SIZE = "256M"
STALL_TIMEOUT_S = 2.0
CONNECTIONS = 8
# A few unlucky draws in a row must not end the demo: retries count attempts without progress.
DEMO_RETRIES = 8
_FAULT_WORDS = {  # kind: (one, many)
    "dropped": ("dropped connection", "dropped connections"),
    "stalled": ("stalled connection", "stalled connections"),
    "http_503": ("HTTP 503 answer", "HTTP 503 answers"),
}


# Parsers are declared whole, a command at a time: alike in shape only (each names its own
# flags and help, the CLI contract), so nothing is shared but add_transfer_options.
def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="offline demo: a verified download that survives drops, stalls and 503s",
        description="Serve a generated file from a local origin that drops connections, "
        "stalls and answers 503 on purpose, download it with modelhaul, verify it, and say "
        "what happened. Needs no network; the file is deleted afterwards.",
    )
    p.add_argument(
        "--size",
        default=DEFAULT_SIZE,
        metavar="SIZE",
        help=f"size of the generated file, with optional K/M/G suffix (default {DEFAULT_SIZE})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the content and the faults")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout, result line last")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary")
    p.set_defaults(run=run, interrupted="interrupted; the demo file was discarded")


def _size(text: str) -> int:
    size = parse_size(text, what="--size")
    if size <= 0:
        raise InvalidInput(f"--size must be more than 0 bytes, got {text!r}")
    return size


async def run(args: argparse.Namespace) -> int:
    from ..http.demo_origin import DemoContent, DemoFaults, DemoOrigin

    try:
        size = _size(args.size)
    except ModelhaulError as exc:
        if args.json:
            JsonRenderer().result(_record("failed", size=None, error=cli_error(exc)))
        raise
    renderer = make_renderer(json_mode=args.json, quiet=args.quiet, files=1)
    content = DemoContent(size, seed=args.seed)
    expected = await asyncio.to_thread(content.sha256)
    faults = DemoFaults(seed=args.seed)

    def on_fault(fault: InjectedFault) -> None:
        renderer.notice(fault_line(fault, faults))  # as it happens, while the bar runs

    with tempfile.TemporaryDirectory(prefix="modelhaul-demo-") as tmp:
        async with DemoOrigin(content, faults, on_fault=on_fault) as origin:
            renderer.notice(
                f"serving {human_bytes(size)} at {origin.url}; it drops connections, stalls "
                f"and answers 503 on purpose. {throttle_sentence(faults)} Downloading with "
                f"-x {CONNECTIONS} --timeout {STALL_TIMEOUT_S:g}."
            )
            started = time.monotonic()
            try:
                result = await _download(origin.url, Path(tmp), expected, renderer)
            except asyncio.CancelledError:
                renderer.result(_record("cancelled", size=size, error=_cancelled()))
                raise
            except ModelhaulError as exc:
                renderer.result(_record("failed", size=size, error=cli_error(exc)))
                raise
            elapsed = time.monotonic() - started
    summary = _summary(result, origin.stats, elapsed)
    renderer.result(summary)
    if not args.json and not args.quiet:
        print(describe(summary), flush=True)
    return 0


async def _download(url: str, folder: Path, expected: str, renderer: Renderer) -> Result:
    from ..manager.downloads import DownloadManager

    config = DownloadConfig(
        retry=RetryPolicy(retries=DEMO_RETRIES),
        timeouts=Timeouts(stall_s=STALL_TIMEOUT_S, connect_s=10.0),
        segments=SegmentPolicy(connections=CONNECTIONS),
    )
    mconf = ManagerConfig(max_connections_per_host=config.segments.max_connections)

    def on_event(ev: TaskEvent) -> None:
        if ev.kind is EventKind.PROGRESS and ev.progress is not None:
            renderer.progress("demo.bin", ev.progress)

    # A state directory of its own: the demo always downloads, and leaves no records behind.
    async with DownloadManager(mconf, download_config=config, state_dir=folder / "state") as mgr:
        mgr.subscribe(on_event)
        handle = mgr.add(url, folder / "demo.bin", sha256=expected)
        renderer.start()
        try:
            result = await handle.wait()
        finally:
            renderer.stop()
    return result


def throttle_sentence(faults: DemoFaults) -> str:
    """Why the demo is slow: its origin is, by design."""
    return (
        f"The origin is throttled on purpose to {human_bytes(faults.connection_bytes_per_s)}/s "
        f"per connection and {human_bytes(faults.total_bytes_per_s)}/s in total, so the "
        "download lasts long enough to watch: the speeds shown are limited by it."
    )


def fault_line(fault: InjectedFault, faults: DemoFaults) -> str:
    """One line for a fault the origin just injected."""
    span = f"a {human_bytes(fault.end - fault.start)} response"
    into = human_bytes((fault.at or fault.start) - fault.start)
    if fault.kind == "dropped":
        return f"fault injected: the origin dropped the connection {into} into {span}"
    if fault.kind == "stalled":
        return (
            f"fault injected: the origin stalled {into} into {span} "
            f"(silent for {faults.stall_s:g} s; the stall timeout is {STALL_TIMEOUT_S:g} s)"
        )
    from ..http.demo_origin import RETRY_AFTER_S

    return f"fault injected: the origin answered HTTP 503 (Retry-After: {RETRY_AFTER_S})"


def _cancelled() -> dict[str, str]:
    err = Cancelled("interrupted; the demo file was discarded", hint="Run 'modelhaul demo' again.")
    return err.to_dict()


def _record(status: str, *, size: int | None, error: dict[str, str] | None) -> dict[str, Any]:
    return {
        "event": "result",
        "status": status,
        "path": None,  # the demo file lives in a temporary directory, removed at the end
        "size": size,
        "sha256": None,
        "error": error,
    }


def _summary(result: Result, stats: DemoStats, elapsed_s: float) -> dict[str, Any]:
    record = _record("completed", size=result.size, error=None)
    record.update(
        sha256=result.sha256,
        verified=True,  # the engine refuses to publish a file whose digest differs
        elapsed=round(elapsed_s, 3),
        attempts=result.attempts,
        faults={kind: stats.faults.get(kind, 0) for kind in _FAULT_WORDS},
        requests_served=stats.requests,
        bytes_sent=stats.bytes_sent,
        bytes_refetched=max(0, stats.bytes_sent - result.size),
    )
    return record


def describe(summary: dict[str, Any]) -> str:
    """The few lines a person reads after the demo."""
    size, elapsed = summary["size"], summary["elapsed"]
    speed = human_bytes(size / elapsed) if elapsed > 0 else "?"
    faults = summary["faults"]
    injected = ", ".join(
        f"{faults[k]} {one if faults[k] == 1 else many}" for k, (one, many) in _FAULT_WORDS.items()
    )
    return "\n".join(
        [
            f"modelhaul demo: {human_bytes(size)} in {elapsed:.1f} s ({speed}/s) "
            "from an origin that misbehaved and was throttled on purpose",
            f"  faults injected: {injected}",
            f"  attempts: {plural(summary['attempts'], 'request')}; "
            f"re-fetched: {human_bytes(summary['bytes_refetched'])} "
            "(sent again or lost in dropped connections)",
            f"  verified: sha256 {summary['sha256']}",
        ]
    )
