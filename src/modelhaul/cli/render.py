"""Turning progress records into output: rich bars on a terminal, plain lines, or JSON lines."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..errors import ModelhaulError, human_bytes
from ..events import Progress as ProgressRecord


class Renderer:
    """Base renderer: says nothing. Subclasses override what they show."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def progress(self, key: str, p: ProgressRecord) -> None: ...

    def file_done(self, key: str, record: dict[str, Any]) -> None: ...

    def notice(self, message: str) -> None:
        print(f"modelhaul: {message}", file=sys.stderr, flush=True)

    def result(self, record: dict[str, Any]) -> None: ...


class QuietRenderer(Renderer):
    """-q: nothing but the final error."""

    def notice(self, message: str) -> None: ...


class JsonRenderer(Renderer):
    """JSON lines on stdout: progress events (at most ~4 a second a file) and the result line."""

    def __init__(self, out: TextIO = sys.stdout, every_s: float = 0.25) -> None:
        self._out = out
        self._every_s = every_s
        self._last: dict[str, float] = {}

    def _emit(self, record: dict[str, Any]) -> None:
        self._out.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._out.flush()

    def progress(self, key: str, p: ProgressRecord) -> None:
        now = time.monotonic()
        if now - self._last.get(key, 0.0) < self._every_s:
            return
        self._last[key] = now
        self._emit(p.to_dict())

    def file_done(self, key: str, record: dict[str, Any]) -> None:
        self._emit({**record, "event": "file"})

    def notice(self, message: str) -> None:
        self._emit({"event": "notice", "message": message})

    def result(self, record: dict[str, Any]) -> None:
        self._emit(record)


class PlainRenderer(Renderer):
    """Periodic one-line reports on stderr, for logs and pipes."""

    def __init__(self, every_s: float = 5.0) -> None:
        self._every_s = every_s
        self._last: dict[str, float] = {}

    def progress(self, key: str, p: ProgressRecord) -> None:
        now = time.monotonic()
        if now - self._last.get(key, 0.0) < self._every_s:
            return
        self._last[key] = now
        print(f"modelhaul: {describe(key, p)}", file=sys.stderr, flush=True)

    def file_done(self, key: str, record: dict[str, Any]) -> None:
        if record.get("status") == "completed":
            print(
                f"modelhaul: {record['path']} {human_bytes(record['size'])} sha256 {record['sha256']}",
                file=sys.stderr,
                flush=True,
            )


def describe(key: str, p: ProgressRecord) -> str:
    total = human_bytes(p.total) if p.total is not None else "?"
    pct = f"{100 * p.bytes_done / p.total:5.1f}% " if p.total else ""
    eta = f" ETA {p.eta_s:.0f}s" if p.eta_s is not None else ""
    return (
        f"{key}: {pct}{human_bytes(p.bytes_done)}/{total} "
        f"{human_bytes(p.speed_bytes_per_s)}/s{eta} ({p.connections} conn)"
    )


class RichRenderer(Renderer):
    """Bars on a terminal: one per active file and a total line."""

    def __init__(self) -> None:
        self._console = Console(stderr=True)
        self._bars = Progress(
            TextColumn("[bold]{task.description}", justify="left"),
            BarColumn(bar_width=None),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=False,
            refresh_per_second=8,
        )
        self._tasks: dict[str, TaskID] = {}
        self._total: TaskID | None = None
        self._done: dict[str, int] = {}
        self._sizes: dict[str, int] = {}

    def start(self) -> None:
        self._bars.start()

    def stop(self) -> None:
        self._bars.stop()

    def _task(self, key: str, total: int | None) -> TaskID:
        if key not in self._tasks:
            name = key if len(key) <= 40 else "…" + key[-39:]
            self._tasks[key] = self._bars.add_task(name, total=total)
        return self._tasks[key]

    def progress(self, key: str, p: ProgressRecord) -> None:
        task = self._task(key, p.total)
        self._bars.update(task, completed=p.bytes_done, total=p.total)
        self._done[key] = p.bytes_done
        if p.total is not None:
            self._sizes[key] = p.total
        if len(self._tasks) > 1 + (self._total is not None):
            if self._total is None:
                self._total = self._bars.add_task("[cyan]total", total=None)
            total = sum(self._sizes.values()) or None
            self._bars.update(self._total, completed=sum(self._done.values()), total=total)

    def file_done(self, key: str, record: dict[str, Any]) -> None:
        if key in self._tasks and record.get("status") == "completed":
            size = record.get("size") or 0
            self._bars.update(self._tasks[key], completed=size, total=size)
            self._done[key] = size
            self._sizes[key] = size

    def notice(self, message: str) -> None:
        self._console.print(f"[yellow]modelhaul:[/] {message}")


def make_renderer(*, json_mode: bool, quiet: bool) -> Renderer:
    if json_mode:
        return JsonRenderer()
    if quiet:
        return QuietRenderer()
    if sys.stderr.isatty():
        return RichRenderer()
    return PlainRenderer()


def print_error(err: ModelhaulError) -> None:
    """One line saying what happened, one with the next step."""
    print(f"modelhaul: error: {err.message}", file=sys.stderr)
    if err.hint:
        print(f"  hint: {err.hint}", file=sys.stderr)
