"""``modelhaul`` entry point: parse, dispatch, map errors to exit statuses.

Exit statuses: 0 success; 1 the work failed; 2 invalid usage or input; 130 interrupted (the
message says what it left behind: partial data to resume, a download going on in the service);
141 stdout was closed by its reader (``| head``), which stops the command as quietly as SIGPIPE
stops other Unix tools. Errors are one line plus a hint on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ..errors import ModelhaulError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a process SIGPIPE ended

Command = Callable[[argparse.Namespace], Awaitable[int]]
# What Ctrl-C means, unless a command says otherwise with set_defaults(interrupted=...).
INTERRUPTED = "interrupted; partial data was kept, run the same command to resume"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"modelhaul: error: {message}\n  hint: run '{self.prog} --help'.\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv``, only the chosen command's module is loaded (none without a
    known command), so start-up stays light. Without ``argv``: every command, complete."""
    from . import commands

    parser = _Parser(
        prog="modelhaul",
        description="Fast, resumable, verified downloads of ML model files.",
    )
    parser.add_argument("--version", action="version", version="modelhaul 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    if argv is None:
        commands.register_all(sub)
    else:
        command = next((a for a in argv if not a.startswith("-")), "")
        commands.register(sub, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    with _guard_stdout() as stdout:
        code = _main(argv, stdout)
        sys.stdout.flush()
        return EXIT_PIPE if stdout.broken else code


def _main(argv: Sequence[str], stdout: _GuardedStdout) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # Only now: --version and --help exit inside parse_args, without paying for the error
    # types (ssl, socket) and the renderer.
    from ..errors import ModelhaulError
    from .render import print_error

    try:
        return _run(args.run(args), lambda: getattr(args, "interrupted", INTERRUPTED), stdout)
    except ModelhaulError as exc:
        print_error(exc)
        return _exit_for(exc)
    except KeyboardInterrupt:
        print(f"modelhaul: {getattr(args, 'interrupted', INTERRUPTED)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError as exc:
        # Written past the guard (a stream taken before it was set)? A socket's EPIPE that
        # escaped translation is a bug, reported as one.
        if not stdout.reader_gone():
            return _internal_error(exc)
        stdout.close_quietly()
        return EXIT_PIPE
    except Exception as exc:  # a bug of ours: still one line, never a traceback
        return _internal_error(exc)


def _internal_error(exc: Exception) -> int:
    """A bug of ours: still one line, never a traceback (unless MODELHAUL_DEBUG asks)."""
    if os.environ.get("MODELHAUL_DEBUG"):
        raise exc
    print(f"modelhaul: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(
        "  hint: this is a bug in modelhaul; run again with MODELHAUL_DEBUG=1 for the "
        "traceback and report it.",
        file=sys.stderr,
    )
    return EXIT_FAILED


class _GuardedStdout:
    """sys.stdout while a command runs. When the reader goes away (``| head``) the next write
    does not raise from wherever it happens (an event callback, a final flush): the rest of the
    output goes to /dev/null, as Python's "Note on SIGPIPE" recommends, and the command is
    stopped the way Ctrl-C stops it, so a download keeps its partial data and journal."""

    def __init__(self, real: TextIO) -> None:
        self._real = real
        self.broken = False
        self.on_broken: Callable[[], None] | None = None

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._real.write(text)
            except BrokenPipeError:
                self.close_quietly()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._real.flush()
            except BrokenPipeError:
                self.close_quietly()

    def reader_gone(self) -> bool:
        """Whether stdout is a pipe whose reader has closed it (poll says POLLERR then)."""
        if self.broken:
            return True
        try:
            poller = select.poll()
            poller.register(self._real.fileno(), select.POLLOUT)
            return any(ev & select.POLLERR for _, ev in poller.poll(0))
        except (OSError, ValueError):
            return False

    def close_quietly(self) -> None:
        """Send what is left to /dev/null and stop the command."""
        if self.broken:
            return
        self.broken = True
        with contextlib.suppress(OSError, ValueError):
            # The descriptor, not only the object: the interpreter flushes the real stdout at
            # exit, and its buffer still holds what the reader never took.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._real.fileno())
            os.close(devnull)
        if self.on_broken is not None:
            self.on_broken()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextlib.contextmanager
def _guard_stdout() -> Iterator[_GuardedStdout]:
    real = sys.stdout
    guarded = _GuardedStdout(real)
    sys.stdout = guarded  # type: ignore[assignment]
    try:
        yield guarded
    finally:
        sys.stdout = real


def _exit_for(exc: ModelhaulError) -> int:
    from ..errors import Cancelled, InvalidInput

    if isinstance(exc, InvalidInput):
        return EXIT_USAGE
    if isinstance(exc, Cancelled):
        return EXIT_INTERRUPTED
    return EXIT_FAILED


def _run(
    coro: Awaitable[int],
    interrupted: Callable[[], str] = lambda: INTERRUPTED,
    stdout: _GuardedStdout | None = None,
) -> int:
    """Run a command; SIGINT/SIGTERM cancel it cleanly (journals saved) instead of killing it,
    and so does a closed stdout, quietly.

    ``interrupted`` is asked only then: a command may have learnt what the interruption left
    behind (``get``: whether the server could resume at all).
    """
    import asyncio  # here: --version and --help never start an event loop (20+ ms to import)

    async def runner() -> int:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)
        if stdout is not None:
            stdout.on_broken = lambda: loop.call_soon_threadsafe(task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            if task.cancelled():
                if stdout is not None and stdout.broken:
                    return EXIT_PIPE
                print(f"modelhaul: {interrupted()}", file=sys.stderr)
                return EXIT_INTERRUPTED
            raise
        finally:
            if stdout is not None:
                stdout.on_broken = None

    return asyncio.run(runner())


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
