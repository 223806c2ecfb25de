"""Hints below cli/ are remedies with facts; the CLI words them with its flags, the library and
the service without."""

from __future__ import annotations

from modelhaul.cli.words import CLI_WORDS
from modelhaul.errors import DiskFull
from modelhaul.remedies import Remedy
from modelhaul.server.words import SERVICE_WORDS

GiB = 1024**3


def test_a_known_shortfall_is_worded_from_the_errors_fields() -> None:
    err = DiskFull(
        "not enough disk space for m.bin",
        need_bytes=3 * GiB,
        free_bytes=GiB,
        path="/srv/models",
        remedy=Remedy.FREE_SHORTFALL,
    )
    assert err.hint_in(CLI_WORDS) == (
        "Free at least 2.0 GiB in /srv/models, or download elsewhere with -d DIR."
    )
    assert err.hint == (
        "Free at least 2.0 GiB in /srv/models, or download somewhere else (another directory)."
    )
    assert err.hint_in(SERVICE_WORDS).startswith("Free at least 2.0 GiB in /srv/models on the")
    assert err.to_dict(CLI_WORDS)["hint"] == err.hint_in(CLI_WORDS)
