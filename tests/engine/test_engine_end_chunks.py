"""The chunks in flight at the end of a file complete together, so the hashed prefix jumps by
about half of them at the last byte: with much in flight the last chunks get smaller."""

from __future__ import annotations

from modelhaul.config import MiB
from modelhaul.engine.workers import end_chunk_bytes


def test_the_last_chunks_of_a_file_with_much_in_flight_get_smaller() -> None:
    # 16 connections x 64 MiB: 1 GiB in flight, half of it left to hash after the last byte.
    assert end_chunk_bytes(64 * MiB, 3 * 1024 * MiB, 16) == 64 * MiB  # far from the end
    assert end_chunk_bytes(64 * MiB, 512 * MiB, 16) == 32 * MiB  # each its share of the rest
    assert end_chunk_bytes(64 * MiB, 100 * MiB, 16) == 6 * MiB  # whole MiB
    assert end_chunk_bytes(64 * MiB, 8 * MiB, 16) == 4 * MiB  # never below 4 MiB
    # Little in flight (few connections, or small chunks): the chunk stays as it is.
    assert end_chunk_bytes(64 * MiB, 8 * MiB, 4) == 64 * MiB
    assert end_chunk_bytes(8 * MiB, 8 * MiB, 32) == 8 * MiB
