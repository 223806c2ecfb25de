"""Named points in a download's life, reported to a hook that only crash tests set."""

from __future__ import annotations

from collections.abc import Callable

stage_hook: Callable[[str], None] | None = None
"""A seam for crash tests only (tests/support/crash_runner.py): called with the name of each
stage a download passes ("probed", "segment_done_before_journal", "hashing",
"renamed_before_journal_removal"; store/pull.py adds "linking"; engine/cpus.py and
engine/hashlag.py "hash_cpu_held", "hash_cpu_released", "receive_cap_set",
"receive_held", "receive_cap_lifted" and "receive_window_held"), so a test can kill the
process exactly there, or look at the process right then. None in normal use."""


def stage(name: str) -> None:
    """Tell the crash-test hook, if any, that a download reached ``name``."""
    hook = stage_hook
    if hook is not None:
        hook(name)


__all__ = ["stage", "stage_hook"]
