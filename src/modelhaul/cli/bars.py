"""Progress bars on a terminal (rich), for make_renderer in render.py."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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

from ..errors import human_bytes, plural
from ..events import Progress as ProgressRecord
from .render import Renderer


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
        done = len(self._finished)
        if self._files is None:
            return f"[cyan]total {plural(done, 'file')}"
        return f"[cyan]total {done}/{plural(self._files, 'file')}"

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
