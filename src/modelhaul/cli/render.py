"""Turning progress records into output: rich bars on a terminal, plain lines, or JSON lines."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from rich.console import Console, RenderableType
from rich.markup import escape
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
        # Machines read stdout; a person watching the terminal still sees why nothing moves.
        self._emit({"event": "notice", "message": message})
        super().notice(message)

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


class _Bars(Progress):
    """A rich Progress whose summary row stays last, whatever order the file rows arrive in."""

    summary: TaskID | None = None

    def get_renderables(self) -> Iterable[RenderableType]:
        rows = [t for t in self.tasks if t.id != self.summary]
        rows += [t for t in self.tasks if t.id == self.summary]
        yield self.make_tasks_table(rows)


class RichRenderer(Renderer):
    """Bars on a terminal: one per active file and, for several files, a total line.

    With several files a finished file's bar gives way to one printed line, so a long list
    shows only what is in flight. ``files=None`` (count unknown) adds the total line when a
    second file shows up.
    """

    def __init__(self, *, files: int | None = None, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._bars = _Bars(
            TextColumn("[bold]{task.description}", justify="left"),
            BarColumn(bar_width=None),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=False,
            refresh_per_second=8,
        )
        self._files = files
        self._tasks: dict[str, TaskID] = {}
        self._done: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._finished: set[str] = set()
        self._seen: set[str] = set()

    @property
    def _multi(self) -> bool:
        return len(self._seen) > 1 if self._files is None else self._files > 1

    def _ensure_total(self) -> None:
        if self._multi and self._bars.summary is None:
            self._bars.summary = self._bars.add_task(self._total_label(), total=None)

    def start(self) -> None:
        self._ensure_total()
        self._bars.start()

    def stop(self) -> None:
        self._bars.stop()

    def _task(self, key: str, total: int | None) -> TaskID:
        if key not in self._tasks:
            self._seen.add(key)
            name = key if len(key) <= 40 else "…" + key[-39:]
            # Names come from servers: never let one be read as rich markup.
            self._tasks[key] = self._bars.add_task(escape(name), total=total)
        return self._tasks[key]

    def _total_label(self) -> str:
        of = "" if self._files is None else f"/{self._files}"
        return f"[cyan]total {len(self._finished)}{of} files"

    def _update_total(self) -> None:
        self._ensure_total()
        if self._bars.summary is None:
            return
        self._bars.update(
            self._bars.summary,
            completed=sum(self._done.values()),
            total=sum(self._sizes.values()) or None,
            description=self._total_label(),
        )

    def progress(self, key: str, p: ProgressRecord) -> None:
        if key in self._finished:
            return
        task = self._task(key, p.total)
        self._bars.update(task, completed=p.bytes_done, total=p.total)
        self._done[key] = p.bytes_done
        if p.total is not None:
            self._sizes[key] = p.total
        self._update_total()

    def file_done(self, key: str, record: dict[str, Any]) -> None:
        if key in self._finished:
            return
        self._finished.add(key)
        self._seen.add(key)
        completed = record.get("status") == "completed"
        if completed:
            size = record.get("size") or 0
            self._done[key] = self._sizes[key] = size
        if self._multi:
            if key in self._tasks:
                self._bars.remove_task(self._tasks.pop(key))
            if completed:
                size_text = human_bytes(record.get("size") or 0)
                self._console.print(f"[green]✓[/] {escape(key)} {size_text}")
            else:
                message = (record.get("error") or {}).get("message", "failed")
                self._console.print(f"[red]✗[/] {escape(key)}: {escape(message)}")
        elif completed:
            size = record.get("size") or 0
            self._bars.update(self._task(key, size), completed=size, total=size)
        self._update_total()

    def notice(self, message: str) -> None:
        self._console.print(f"[yellow]modelhaul:[/] {escape(message)}")


def make_renderer(*, json_mode: bool, quiet: bool, files: int | None = None) -> Renderer:
    if json_mode:
        return JsonRenderer()
    if quiet:
        return QuietRenderer()
    if sys.stderr.isatty():
        return RichRenderer(files=files)
    return PlainRenderer()


_NO_GUIDANCE = ("invalid_input", "cancelled")


def print_error(
    err: ModelhaulError, *, what: str | None = None, context: dict[str, Any] | None = None
) -> None:
    """One line saying what happened (prefixed with ``what`` failed), one with the next step;
    for a download that failed for good, then why it is likely and the steps to fix it."""
    subject = f"{what}: " if what else ""
    print(f"modelhaul: error: {subject}{err.message}", file=sys.stderr)
    if err.hint:
        print(f"  hint: {err.hint}", file=sys.stderr)
    if err.category not in _NO_GUIDANCE:
        from ..guidance import explain, format_guidance

        for line in format_guidance(explain(err, **(context or {}))):
            print(line, file=sys.stderr)


def error_dict(err: ModelhaulError, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``error`` object of a JSON result: category, message, hint, and (for failures that
    are not usage errors) ``why`` and ``steps``."""
    out: dict[str, Any] = err.to_dict()
    if err.category not in _NO_GUIDANCE:
        from ..guidance import explain

        g = explain(err, **(context or {}))
        out["why"] = g.why
        out["steps"] = list(g.steps)
    return out
