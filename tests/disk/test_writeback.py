"""Early writeback: finished ranges of a partial file are handed to the disk while the transfer
goes on, so the fsync before the rename has little left.

Observed through the page cache itself (cachestat): a page handed to the disk is no longer
dirty. tmp_path is on the project's disk; tmpfs (no writeback at all) must merely work.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import mounted_tmpfs
from modelhaul.disk.files import start_writeback
from modelhaul.disk.writeback import Writeback, unasked
from modelhaul.policy.ranges import RangeSet
from pagecache import cachestat

MiB = 1024 * 1024


@pytest.fixture
def written(tmp_path: Path) -> Iterator[int]:
    """A descriptor of a 64 MiB file just written: all of it dirty in the page cache."""
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        block = os.urandom(MiB)
        for i in range(64):
            os.pwrite(fd, block, i * MiB)
        if cachestat(fd).dirty_bytes < 48 * MiB:
            pytest.skip("this filesystem writes back at once (or the kernel flushed already)")
        yield fd
    finally:
        os.close(fd)


def test_start_writeback_hands_exactly_the_range_to_the_disk(written: int) -> None:
    assert start_writeback(written, 0, 32 * MiB)
    first, second = cachestat(written, 0, 32 * MiB), cachestat(written, 32 * MiB, 32 * MiB)
    # Every page of the range was submitted when the call returned; the rest was not touched.
    assert first.dirty_bytes < 4 * MiB, first
    assert second.dirty_bytes > 28 * MiB, second
    # The pages stay cached: the hasher reads the prefix back from memory.
    assert first.cached_bytes == 32 * MiB


async def test_writeback_starts_every_so_many_bytes_then_the_rest_at_the_end(
    written: int,
) -> None:
    wb = Writeback(written, 64 * MiB, every_bytes=16 * MiB)
    done = RangeSet([(0, 10 * MiB)])
    try:
        wb.advance(done)  # below the step: left to the kernel for now
        await wb.wait_idle()
        assert wb.started_bytes == 0
        assert cachestat(written, 0, 10 * MiB).dirty_bytes > 8 * MiB
        done.add(10 * MiB, 20 * MiB + 100)  # ends inside a page still being written
        done.add(40 * MiB, 50 * MiB)
        wb.advance(done)
        await wb.wait_idle()
        assert wb.started_bytes == 30 * MiB  # whole pages only
        assert cachestat(written, 0, 20 * MiB).dirty_bytes < 2 * MiB
        assert cachestat(written, 20 * MiB + 4096, 20 * MiB - 4096).dirty_bytes > 16 * MiB
        done.add(0, 64 * MiB)  # complete: everything left goes, however little
        wb.advance(done)
        await wb.wait_idle()
        assert wb.started_bytes == 64 * MiB
        assert cachestat(written).dirty_bytes < 4 * MiB
    finally:
        await wb.aclose()


@pytest.mark.parametrize(
    ("done", "asked", "expected"),
    [
        ([], [], []),
        ([(0, 10)], [], [(0, 10)]),
        ([(0, 10)], [(0, 10)], []),
        ([(0, 10)], [(0, 4)], [(4, 10)]),
        ([(0, 10), (20, 30)], [(2, 4), (20, 25)], [(0, 2), (4, 10), (25, 30)]),
        ([(0, 30)], [(5, 8), (12, 40)], [(0, 5), (8, 12)]),
        ([(10, 20)], [(0, 5), (25, 30)], [(10, 20)]),
    ],
)
def test_unasked_is_what_is_done_and_not_yet_handed_over(
    done: list[tuple[int, int]], asked: list[tuple[int, int]], expected: list[tuple[int, int]]
) -> None:
    assert unasked(RangeSet(done), RangeSet(asked)) == expected


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    yield from mounted_tmpfs(tmp_path / "mem", "size=64m")


async def test_tmpfs_and_descriptors_without_writeback_are_harmless(tmpfs: Path) -> None:
    fd = os.open(tmpfs / "part", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"x" * (4 * MiB), 0)
        start_writeback(fd, 0, 4 * MiB)  # nothing to write back; must not raise
        wb = Writeback(fd, 4 * MiB, every_bytes=MiB)
        wb.advance(RangeSet([(0, 4 * MiB)]))
        await wb.wait_idle()
        await wb.aclose()
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        assert not start_writeback(r, 0, MiB)  # ESPIPE: refused, not raised
        wb = Writeback(r, 2 * MiB, every_bytes=MiB)
        wb.advance(RangeSet([(0, MiB)]))
        await asyncio.wait_for(wb.wait_idle(), 10)
        assert wb.started_bytes == 0
        wb.advance(RangeSet([(0, 2 * MiB)]))  # refused once: no more requests
        await asyncio.wait_for(wb.wait_idle(), 10)
        assert wb.started_bytes == 0
        await wb.aclose()
    finally:
        os.close(r)
        os.close(w)
