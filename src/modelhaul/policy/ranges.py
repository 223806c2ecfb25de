"""Byte-range bookkeeping: which half-open intervals ``[start, end)`` of a file are held.

A ``RangeSet`` is a sorted list of disjoint, non-adjacent intervals. Adding merges, so the list
stays as short as the holes in the file; every query is linear in that (tiny) length.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

Range = tuple[int, int]


class RangeSet:
    """Disjoint half-open byte intervals, merged on insert."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[Range] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        if start == end:
            return
        # Every interval touching or overlapping [start, end) is merged into one.
        lo = bisect_left(self._ends, start)
        hi = bisect_right(self._starts, end)
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]

    def __iter__(self) -> Iterator[Range]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"

    def total(self) -> int:
        return sum(e - s for s, e in self)

    def prefix_end(self) -> int:
        """End of the interval that starts at 0 (how much of the file is complete from the start)."""
        if self._starts and self._starts[0] == 0:
            return self._ends[0]
        return 0

    def covers(self, start: int, end: int) -> bool:
        if start >= end:
            return True
        i = bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def missing(self, size: int) -> list[Range]:
        """The holes of ``[0, size)`` not in the set, in order."""
        holes: list[Range] = []
        pos = 0
        for s, e in self:
            if s >= size:
                break
            if s > pos:
                holes.append((pos, s))
            pos = max(pos, e)
        if pos < size:
            holes.append((pos, size))
        return holes

    def to_list(self) -> list[list[int]]:
        return [[s, e] for s, e in self]


def split_even(start: int, end: int, parts: int, *, align: int = 1) -> list[Range]:
    """Split ``[start, end)`` into at most ``parts`` contiguous pieces, boundaries aligned."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    length = end - start
    if length <= 0:
        return []
    step = max(align, -(-length // parts))
    step = -(-step // align) * align
    return [(s, min(s + step, end)) for s in range(start, end, step)]


def steal_point(pos: int, end: int, *, min_bytes: int, align: int = 1) -> int | None:
    """Where to cut a running segment ``[pos, end)`` in two for an idle connection.

    Returns the start of the stolen upper half, or None when the remainder is too small to be
    worth another connection (each half would be under ``min_bytes``).
    """
    remaining = end - pos
    if remaining < 2 * min_bytes:
        return None
    cut = pos + remaining // 2
    cut -= cut % align
    if cut - pos < min_bytes or end - cut < min_bytes:
        return None
    return cut
