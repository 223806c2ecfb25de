"""Run the modelhaul CLI and SIGKILL it the moment a download reaches a named stage.

    python tests/support/crash_runner.py STAGE[:N] get URL -o PATH ...

The process kills itself with SIGKILL the N-th time (default: the first) the engine or the
puller reports STAGE through the private stage hook (see ``modelhaul.engine.stages.stage``). Stages:
probed, segment_done_before_journal, hashing, renamed_before_journal_removal, linking. If the
stage is never reached the CLI runs to its end and exits with its own status, so a test can
tell "killed there" (exit by SIGKILL) from "never got there".
"""

from __future__ import annotations

import os
import signal
import sys

from modelhaul.cli import main as cli_main
from modelhaul.engine import stages


def install(stage: str, nth: int = 1) -> None:
    """SIGKILL this process the ``nth`` time ``stage`` is reached."""
    seen = 0

    def hook(name: str) -> None:
        nonlocal seen
        if name != stage:
            return
        seen += 1
        if seen >= nth:
            os.kill(os.getpid(), signal.SIGKILL)

    stages.stage_hook = hook


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    stage, _, nth = argv[0].partition(":")
    install(stage, int(nth or 1))
    return cli_main.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
