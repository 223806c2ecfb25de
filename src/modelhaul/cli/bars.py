"""Progress bars on a terminal (rich), for make_renderer in output.py.

Sizes and speeds are in one unit family (MiB, MiB/s): rich's own speed column is decimal (MB/s).
Speed and ETA are the engine's measurements, carried on each row as task fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.progress_bar import ProgressBar
from rich.text import Text

from ..errors import human_bytes, plural
from ..events import Progress as ProgressRecord
from .render import Renderer, sources_note


class _Bars(Progress):
    """A rich Progress whose summary row stays last, whatever order the file rows arrive in."""

    summary: TaskID | None = None

    def get_renderables(self) -> Iterable[RenderableType]:
        rows = [t for t in self.tasks if t.id != self.summary]
        rows += [t for t in self.tasks if t.id == self.summary]
        yield self.make_tasks_table(rows)


class _Bar(BarColumn):
    """A bar that turns red on a row whose ``failed`` field is set (the total, once a file failed)."""

    def render(self, task: Task) -> ProgressBar:
        bar = super().render(task)
        if task.fields.get("failed"):
            bar.complete_style = bar.finished_style = "red"
        return bar


class _Speed(ProgressColumn):
    """The row's ``speed`` field (bytes per second) in binary units, like the sizes."""

    def render(self, task: Task) -> Text:
        speed = task.fields.get("speed")
        if not speed:
            return Text("")
        return Text(f"{human_bytes(speed)}/s", style="progress.data.speed")


class _Eta(ProgressColumn):
    """The row's ``eta`` field (seconds), labelled; nothing once the row is finished or
    ``ended`` (a total whose failed files never fill it); "verifying" while a file's last
    bytes are hashed and written out."""

    def render(self, task: Task) -> Text:
        if task.fields.get("verifying"):
            return Text("verifying", style="progress.remaining")
        if task.finished or task.total is None or task.fields.get("ended"):
            return Text("")
        eta = task.fields.get("eta")
        if eta is None:
            return Text("ETA -:--:--", style="progress.remaining")
        minutes, seconds = divmod(int(eta), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"ETA {hours:d}:{minutes:02d}:{seconds:02d}", style="progress.remaining")


class RichRenderer(Renderer):
    """Bars on a terminal: one per active file and, for several files, a total line.

    With several files a finished file's bar gives way to one printed line, so a long list
    shows only what is in flight, and the total line counts the files completed and, in red,
    those that failed. ``files=None`` (count unknown) adds the total line when a second file
    shows up. A single file ends with a line giving its path and SHA-256.
    """

    def __init__(self, *, files: int | None = None, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._bars = _Bars(
            TextColumn("[bold]{task.description}", justify="left"),
            _Bar(bar_width=None),
            DownloadColumn(binary_units=True),
            _Speed(),
            _Eta(),
            console=self._console,
            transient=False,
            refresh_per_second=8,
        )
        self._files = files
        self._tasks: dict[str, TaskID] = {}
        self._done: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._speeds: dict[str, float] = {}  # of the files in flight
        self._finished: set[str] = set()
        self._failed: set[str] = set()
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
        completed = len(self._finished - self._failed)
        failed = f", [red]{len(self._failed)} failed[/]" if self._failed else ""
        if self._files is None:
            return f"[cyan]total {plural(completed, 'file')}[/]{failed}"
        return f"[cyan]total {completed}/{plural(self._files, 'file')}[/]{failed}"

    def _update_total(self) -> None:
        self._ensure_total()
        if self._bars.summary is None:
            return
        done, total = sum(self._done.values()), sum(self._sizes.values()) or None
        speed = sum(self._speeds.values())
        self._bars.update(
            self._bars.summary,
            completed=done,
            total=total,
            description=self._total_label(),
            speed=speed,
            eta=(total - done) / speed if total is not None and speed > 0 else None,
            failed=bool(self._failed),
            ended=self._files is not None and len(self._finished) >= self._files,
        )

    def progress(self, key: str, p: ProgressRecord) -> None:
        if key in self._finished:
            return
        task = self._task(key, p.total)
        self._bars.update(
            task, completed=p.bytes_done, total=p.total, speed=p.speed_bytes_per_s, eta=p.eta_s
        )
        self._speeds[key] = p.speed_bytes_per_s
        self._done[key] = p.bytes_done
        if p.total is not None:
            self._sizes[key] = p.total
        self._update_total()

    def verifying(self, key: str) -> None:
        # A full bar with a speed would claim the file is done while its tail (hash, fsync,
        # rename) can still take seconds on a busy disk: say what it is doing instead.
        if key in self._finished or key not in self._tasks:
            return
        self._bars.update(self._tasks[key], speed=None, verifying=True)
        self._speeds.pop(key, None)
        self._update_total()

    def file_done(self, key: str, record: dict[str, Any]) -> None:
        if key in self._finished:
            return
        self._finished.add(key)
        self._seen.add(key)
        self._speeds.pop(key, None)
        completed = record.get("status") == "completed"
        if completed:
            size = record.get("size") or 0
            self._done[key] = self._sizes[key] = size
        else:
            self._failed.add(key)
        if self._multi:
            if key in self._tasks:
                self._bars.remove_task(self._tasks.pop(key))
            if completed:
                self._console.print(_done_line(record))
            else:
                message = (record.get("error") or {}).get("message", "failed")
                self._console.print(f"[red]✗[/] {escape(key)}: {escape(message)}")
        elif completed:
            size = record.get("size") or 0
            self._bars.update(
                self._task(key, size),
                completed=size,
                total=size,
                speed=_average_speed(record),
                verifying=False,
            )
        self._update_total()

    def result(self, record: dict[str, Any]) -> None:
        # A list's files each had their line as they ended; one file gets its line last,
        # below its bar, as the piped output gives it (the demo's file is gone: no line).
        if self._multi or record.get("status") != "completed":
            return
        if record.get("path") and record.get("sha256"):
            self._console.print(_done_line(record))

    def notice(self, message: str) -> None:
        self._console.print(f"[yellow]modelhaul:[/] {escape(message)}")


def _done_line(record: dict[str, Any]) -> str:
    """A completed file as the piped output reports it: path, size, SHA-256."""
    size = human_bytes(record.get("size") or 0)
    return (
        f"[green]✓[/] {escape(str(record.get('path')))} {size} sha256 {record.get('sha256')}"
        f"{escape(sources_note(record))}"
    )


def _average_speed(record: dict[str, Any]) -> float | None:
    """What this run received over its time (nothing for a file that was already there)."""
    received, elapsed_s = record.get("bytes_transferred") or 0, record.get("elapsed") or 0
    return received / elapsed_s if received and elapsed_s > 0 else None
