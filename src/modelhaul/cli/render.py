"""Turning progress records into output: rich bars on a terminal, plain lines, or JSON lines.

The bars live in ``bars.py``, imported only for a terminal: rich costs about 50 ms of start-up
that a script's ``--json`` or ``-q`` run need not pay.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from ..errors import Cancelled, Category, ModelhaulError, human_bytes, plural
from ..events import Progress as ProgressRecord
from .words import CLI_WORDS, cli_error, cli_hint


class Renderer:
    """Base renderer: says nothing. Subclasses override what they show."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def progress(self, key: str, p: ProgressRecord) -> None: ...

    def verifying(self, key: str) -> None:
        """Every byte of ``key`` arrived; its hash, fsync and rename are still to come."""

    def file_done(self, key: str, record: dict[str, Any]) -> None: ...

    def notice(self, message: str) -> None:
        print(f"modelhaul: {message}", file=sys.stderr, flush=True)

    def result(self, record: dict[str, Any]) -> None: ...

    def shows_result(self) -> bool:
        """Whether ``result`` shows anything (-q shows nothing: no record need be built)."""
        return type(self).result is not Renderer.result


class QuietRenderer(Renderer):
    """-q: nothing but the final error."""

    def notice(self, message: str) -> None: ...


class JsonRenderer(Renderer):
    """JSON lines on stdout: progress events (at most ~4 a second a file) and the result line."""

    def __init__(self, out: TextIO | None = None, every_s: float = 0.25) -> None:
        self._out = out if out is not None else sys.stdout  # the stdout of now, not of import
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
                f"modelhaul: {record['path']} {human_bytes(record['size'])} sha256 {record['sha256']}"
                f"{sources_note(record)}",
                file=sys.stderr,
                flush=True,
            )

    def result(self, record: dict[str, Any]) -> None:
        files = record.get("files")  # a list's records (a pull's result gives a count)
        if isinstance(files, list) and files and record.get("status") in ("completed", "failed"):
            print(f"modelhaul: {files_summary(files)}", file=sys.stderr, flush=True)


def sources_note(record: dict[str, Any]) -> str:
    """' (96 MiB from peers, 0 B from upstream; dropped http://b:8080: lied)' for a file that
    came through peers; nothing for one that did not (a pull without peers says no more)."""
    from_peers = record.get("bytes_from_peers") or 0
    dropped = record.get("dropped_peers") or []
    if not from_peers and not dropped:
        return ""
    note = (
        f" ({human_bytes(from_peers)} from peers, "
        f"{human_bytes(record.get('bytes_from_upstream') or 0)} from upstream"
    )
    if dropped:
        note += "; dropped " + ", ".join(f"{d['peer']}: {d['reason']}" for d in dropped)
    return note + ")"


def files_summary(records: list[dict[str, Any]]) -> str:
    """'total 3/5 files, 2 failed': the files a list ended with, failures counted apart."""
    completed = sum(1 for r in records if r.get("status") == "completed")
    failed = len(records) - completed
    return f"total {completed}/{plural(len(records), 'file')}" + (
        f", {failed} failed" if failed else ""
    )


def describe(key: str, p: ProgressRecord) -> str:
    total = human_bytes(p.total) if p.total is not None else "?"
    pct = f"{100 * p.bytes_done / p.total:5.1f}% " if p.total else ""
    eta = f" ETA {p.eta_s:.0f}s" if p.eta_s is not None else ""
    return (
        f"{key}: {pct}{human_bytes(p.bytes_done)}/{total} "
        f"{human_bytes(p.speed_bytes_per_s)}/s{eta} ({p.connections} conn)"
    )


def interrupted_error(resumable: Mapping[str, bool]) -> Cancelled:
    """What Ctrl-C left behind, given each unfinished file's label and whether its server can
    resume it: partial data to resume, except from a server that ignores Range requests, whose
    partial data the engine dropped since no run could use it."""
    over = [label for label, can in resumable.items() if not can]
    if not over:
        return Cancelled("interrupted; partial data was kept, run the same command to resume")
    names = ", ".join(over)
    them = "it" if len(over) == 1 else "them"
    message = (
        f"interrupted; the server cannot resume {names} (it ignores Range requests), "
        f"so the next run starts {them} over"
    )
    if len(over) < len(resumable):
        message += "; partial data of the others was kept"
    return Cancelled(
        message, hint=f"Run the same command again; {names} will be fetched from the start."
    )


_NO_GUIDANCE = (Category.INVALID_INPUT, Category.CANCELLED)


def print_error(
    err: ModelhaulError, *, what: str | None = None, context: dict[str, Any] | None = None
) -> None:
    """One line saying what happened (prefixed with ``what`` failed), one with the next step;
    for a download that failed for good, then why it is likely and the steps to fix it."""
    subject = f"{what}: " if what else ""
    print(f"modelhaul: error: {subject}{err.message}", file=sys.stderr)
    hint = cli_hint(err)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)
    if err.category not in _NO_GUIDANCE:
        from ..guidance import explain, format_guidance

        for line in format_guidance(explain(err, **_guidance_context(context))):
            print(line, file=sys.stderr)


def error_dict(err: ModelhaulError, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``error`` object of a JSON result: category, message, hint, and (for failures that
    are not usage errors) ``why`` and ``steps``."""
    out: dict[str, Any] = cli_error(err)
    if err.category not in _NO_GUIDANCE:
        from ..guidance import explain

        g = explain(err, **_guidance_context(context))
        if g.why:  # absent, never empty, when nothing specific is known
            out["why"] = g.why
        out["steps"] = list(g.steps)
    return out


def _guidance_context(context: dict[str, Any] | None) -> dict[str, Any]:
    """The caller's context, with the Hub endpoint in use (HF_ENDPOINT) unless it gave one:
    advice then names the real endpoint and knows which host is the Hub's; steps in the CLI's
    words."""
    return {
        "endpoint": os.environ.get("HF_ENDPOINT") or None,
        "words": CLI_WORDS,
        **(context or {}),
    }
