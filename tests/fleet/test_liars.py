"""fleet.liars on files alone: what peers sent is held for a check, and only liars are blamed."""

from __future__ import annotations

import os
from pathlib import Path

from modelhaul.disk.journal import Journal
from modelhaul.fleet.liars import hold_ranges
from modelhaul.policy.paths import part_paths
from modelhaul.policy.slices import Served

TRUE = bytes(range(256)) * 4  # 1 KiB
SHA = "ab" * 32


def test_only_the_peer_whose_bytes_changed_is_blamed(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    part, journal = part_paths(blob)
    received = bytearray(TRUE)
    received[300] ^= 0xFF  # the liar's range is [256, 512)
    part.write_bytes(received)
    served = [Served(0, 256, "http://honest"), Served(256, 512, "http://liar")]
    check = hold_ranges(blob, size=len(TRUE), sha256=SHA, url="http://hub/f", served=served)
    assert check is not None
    # The next download fetches only what peers sent; the rest (from upstream) is kept.
    state = Journal(journal).load()
    assert state is not None and state.sha256 == SHA
    assert list(state.done) == [(512, len(TRUE))]
    # The upstream sent those ranges again and the file matched: the liar alone is blamed.
    part.write_bytes(TRUE)
    os.replace(part, blob)
    assert check.liars(blob) == {"http://liar": 256}


def test_a_partial_file_of_another_size_is_not_trusted(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    part, journal = part_paths(blob)
    part.write_bytes(TRUE[:100])
    served = [Served(0, 100, "http://p")]
    assert hold_ranges(blob, size=len(TRUE), sha256=SHA, url="u", served=served) is None
    assert not part.exists() and not journal.exists()
