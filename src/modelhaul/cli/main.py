"""``modelhaul`` entry point: parse, dispatch, map errors to exit statuses.

Exit statuses: 0 success; 1 the work failed; 2 invalid usage or input; 130 interrupted (partial
data kept for resume). Errors are one line plus a hint on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

from ..errors import Cancelled, InvalidInput, ModelhaulError
from .render import print_error

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

Command = Callable[[argparse.Namespace], Awaitable[int]]
# What Ctrl-C means, unless a command says otherwise with set_defaults(interrupted=...).
INTERRUPTED = "interrupted; partial data was kept, run the same command to resume"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"modelhaul: error: {message}\n  hint: run '{self.prog} --help'.\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv``, only the chosen command's module is loaded."""
    from . import commands

    parser = _Parser(
        prog="modelhaul",
        description="Fast, resumable, verified downloads of ML model files.",
    )
    parser.add_argument("--version", action="version", version="modelhaul 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    command = next((a for a in (argv or []) if not a.startswith("-")), None)
    commands.register(sub, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code = _run(args.run(args), lambda: getattr(args, "interrupted", INTERRUPTED))
    except ModelhaulError as exc:
        print_error(exc)
        code = _exit_for(exc)
    except KeyboardInterrupt:
        print(f"modelhaul: {getattr(args, 'interrupted', INTERRUPTED)}", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except Exception as exc:  # a bug of ours: still one line, never a traceback
        if os.environ.get("MODELHAUL_DEBUG"):
            raise
        print(f"modelhaul: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(
            "  hint: this is a bug in modelhaul; run again with MODELHAUL_DEBUG=1 for the "
            "traceback and report it.",
            file=sys.stderr,
        )
        code = EXIT_FAILED
    sys.stdout.flush()
    return code


def _exit_for(exc: ModelhaulError) -> int:
    if isinstance(exc, InvalidInput):
        return EXIT_USAGE
    if isinstance(exc, Cancelled):
        return EXIT_INTERRUPTED
    return EXIT_FAILED


def _run(coro: Awaitable[int], interrupted: Callable[[], str] = lambda: INTERRUPTED) -> int:
    """Run a command; SIGINT/SIGTERM cancel it cleanly (journals saved) instead of killing it.

    ``interrupted`` is asked only then: a command may have learnt what the interruption left
    behind (``get``: whether the server could resume at all).
    """

    async def runner() -> int:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            if task.cancelled():
                print(f"modelhaul: {interrupted()}", file=sys.stderr)
                return EXIT_INTERRUPTED
            raise

    return asyncio.run(runner())


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
