"""Byte-range bookkeeping checked against a brute-force bitmap of the same bytes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelhaul.policy.ranges import Range, RangeSet, split_even, steal_point

LIMIT = 120  # small files keep the bitmap model cheap and collisions between intervals likely

fast = settings(max_examples=200, deadline=None)


@st.composite
def intervals(draw: st.DrawFn, limit: int = LIMIT) -> list[Range]:
    """Random half-open intervals inside [0, limit), empty ones included."""
    pairs = draw(
        st.lists(st.tuples(st.integers(0, limit), st.integers(0, 30)), max_size=15),
    )
    return [(s, min(limit, s + n)) for s, n in pairs]


def bitmap(ranges: list[Range], limit: int = LIMIT) -> list[bool]:
    bits = [False] * limit
    for s, e in ranges:
        for i in range(s, e):
            bits[i] = True
    return bits


def runs(bits: list[bool], value: bool = True, upto: int | None = None) -> list[Range]:
    """Maximal runs of ``value`` in ``bits[:upto]``."""
    upto = len(bits) if upto is None else upto
    out: list[Range] = []
    i = 0
    while i < upto:
        if bits[i] == value:
            j = i
            while j < upto and bits[j] == value:
                j += 1
            out.append((i, j))
            i = j
        else:
            i += 1
    return out


# ---------------------------------------------------------------- RangeSet against the model


@fast
@given(st.data())
def test_adding_in_any_order_matches_the_bitmap(data: st.DataObject) -> None:
    ranges = data.draw(intervals())
    order = data.draw(st.permutations(ranges))
    rs = RangeSet()
    for s, e in order:
        rs.add(s, e)
    bits = bitmap(ranges)
    assert list(rs) == runs(bits)  # merged, sorted, disjoint and never adjacent
    assert rs.total() == sum(bits)
    assert len(rs) == len(runs(bits))
    assert rs == RangeSet(ranges)
    assert rs.to_list() == [[s, e] for s, e in runs(bits)]


@fast
@given(ranges=intervals(), size=st.integers(0, LIMIT))
def test_missing_and_held_partition_the_file(ranges: list[Range], size: int) -> None:
    rs = RangeSet(ranges)
    holes = rs.missing(size)
    bits = bitmap(ranges)
    assert holes == runs(bits, value=False, upto=size)
    # Every byte of [0, size) is in exactly one of the two, and holes stay inside [0, size).
    hole_bits = bitmap(holes)
    for i in range(LIMIT):
        in_set = bits[i]
        in_hole = hole_bits[i]
        if i < size:
            assert in_set != in_hole, i
        else:
            assert not in_hole, i


@fast
@given(ranges=intervals())
def test_prefix_end_is_the_complete_prefix(ranges: list[Range]) -> None:
    bits = bitmap(ranges)
    expected = 0
    while expected < LIMIT and bits[expected]:
        expected += 1
    assert RangeSet(ranges).prefix_end() == expected


@fast
@given(ranges=intervals(), start=st.integers(0, LIMIT), length=st.integers(0, LIMIT))
def test_covers_matches_the_bitmap(ranges: list[Range], start: int, length: int) -> None:
    end = min(LIMIT, start + length)
    bits = bitmap(ranges)
    assert RangeSet(ranges).covers(start, end) == all(bits[start:end])


@pytest.mark.parametrize(
    ("adds", "expected"),
    [
        ([], []),
        ([(0, 0)], []),
        ([(5, 10)], [(5, 10)]),
        ([(5, 10), (10, 20)], [(5, 20)]),  # adjacent merge
        ([(10, 20), (5, 10)], [(5, 20)]),
        ([(0, 5), (10, 15), (4, 11)], [(0, 15)]),  # bridges two
        ([(0, 5), (10, 15), (20, 25), (3, 22)], [(0, 25)]),
        ([(0, 5), (7, 9)], [(0, 5), (7, 9)]),
        ([(7, 9), (0, 5), (6, 6)], [(0, 5), (7, 9)]),
        ([(2, 8), (3, 4)], [(2, 8)]),  # contained
        ([(3, 4), (2, 8)], [(2, 8)]),  # containing
    ],
)
def test_add_table(adds: list[Range], expected: list[Range]) -> None:
    rs = RangeSet()
    for s, e in adds:
        rs.add(s, e)
    assert list(rs) == expected


@pytest.mark.parametrize(("start", "end"), [(-1, 5), (5, 4), (-3, -1)])
def test_add_refuses_bad_ranges(start: int, end: int) -> None:
    rs = RangeSet([(0, 2)])
    with pytest.raises(ValueError, match="bad range"):
        rs.add(start, end)
    assert list(rs) == [(0, 2)]  # unchanged


@pytest.mark.parametrize(
    ("held", "size", "holes", "prefix"),
    [
        ([], 0, [], 0),
        ([], 10, [(0, 10)], 0),
        ([(0, 10)], 10, [], 10),
        ([(0, 4)], 10, [(4, 10)], 4),
        ([(2, 4), (6, 8)], 10, [(0, 2), (4, 6), (8, 10)], 0),
        ([(2, 4), (20, 30)], 10, [(0, 2), (4, 10)], 0),  # held bytes past size are ignored
        ([(0, 30)], 10, [], 30),
    ],
)
def test_missing_and_prefix_table(
    held: list[Range], size: int, holes: list[Range], prefix: int
) -> None:
    rs = RangeSet(held)
    assert rs.missing(size) == holes
    assert rs.prefix_end() == prefix


def test_covers_table() -> None:
    rs = RangeSet([(0, 10), (20, 30)])
    assert rs.covers(0, 10)
    assert rs.covers(3, 7)
    assert rs.covers(25, 25)  # empty is always covered
    assert rs.covers(40, 40)
    assert not rs.covers(5, 21)  # spans the hole
    assert not rs.covers(10, 11)
    assert not rs.covers(29, 31)
    assert not RangeSet().covers(0, 1)


def test_equality_is_by_content() -> None:
    assert RangeSet([(0, 5), (5, 9)]) == RangeSet([(0, 9)])
    assert RangeSet([(0, 5)]) != RangeSet([(0, 6)])
    assert RangeSet([(0, 5)]) != [(0, 5)]


# ---------------------------------------------------------------- split_even


@settings(max_examples=250, deadline=None)
@given(
    align=st.sampled_from([1, 2, 3, 8, 64]),
    start_blocks=st.integers(0, 1000),
    length=st.integers(0, 10_000),
    parts=st.integers(1, 40),
)
def test_split_even_covers_exactly_with_aligned_cuts(
    align: int, start_blocks: int, length: int, parts: int
) -> None:
    start = start_blocks * align
    end = start + length
    pieces = split_even(start, end, parts, align=align)
    if length == 0:
        assert pieces == []
        return
    assert 1 <= len(pieces) <= parts
    assert pieces[0][0] == start
    assert pieces[-1][1] == end
    for (_, e), (s, _) in itertools.pairwise(pieces):
        assert e == s  # contiguous: no gap, no overlap
    for s, e in pieces:
        assert s < e
    for _, e in pieces[:-1]:
        assert e % align == 0  # inner cuts on the alignment grid
    lengths = {e - s for s, e in pieces[:-1]}
    assert len(lengths) <= 1  # even: only the last piece may differ
    if lengths:
        assert pieces[-1][1] - pieces[-1][0] <= lengths.pop()


@pytest.mark.parametrize(
    ("args", "align", "expected"),
    [
        ((0, 100, 4), 1, [(0, 25), (25, 50), (50, 75), (75, 100)]),
        ((0, 10, 3), 1, [(0, 4), (4, 8), (8, 10)]),
        ((0, 10, 1), 1, [(0, 10)]),
        ((0, 3, 10), 1, [(0, 1), (1, 2), (2, 3)]),  # never empty pieces
        ((0, 100, 4), 64, [(0, 64), (64, 100)]),
        ((128, 384, 2), 64, [(128, 256), (256, 384)]),
        ((5, 5, 3), 1, []),
        ((9, 5, 3), 1, []),
    ],
)
def test_split_even_table(args: tuple[int, int, int], align: int, expected: list[Range]) -> None:
    assert split_even(*args, align=align) == expected


@pytest.mark.parametrize("parts", [0, -1])
def test_split_even_refuses_no_parts(parts: int) -> None:
    with pytest.raises(ValueError, match="parts"):
        split_even(0, 10, parts)


# ---------------------------------------------------------------- steal_point


@settings(max_examples=250, deadline=None)
@given(
    pos=st.integers(0, 10**9),
    remaining=st.integers(-10, 10**6),
    min_bytes=st.integers(1, 10**5),
    align=st.sampled_from([1, 2, 7, 4096, 65536]),
)
def test_steal_point_leaves_two_worthwhile_halves_or_none(
    pos: int, remaining: int, min_bytes: int, align: int
) -> None:
    end = pos + remaining
    cut = steal_point(pos, end, min_bytes=min_bytes, align=align)
    if cut is None:
        if align == 1:
            assert remaining < 2 * min_bytes  # only refused when it really is too small
        return
    assert pos < cut < end
    assert cut - pos >= min_bytes
    assert end - cut >= min_bytes
    assert cut % align == 0
    assert remaining >= 2 * min_bytes
    if align == 1:
        assert cut == pos + remaining // 2  # the upper half, rounded down


@pytest.mark.parametrize(
    ("pos", "end", "min_bytes", "align", "expected"),
    [
        (0, 100, 10, 1, 50),
        (0, 101, 10, 1, 50),
        (10, 30, 10, 1, 20),  # exactly two minimum halves
        (10, 29, 10, 1, None),
        (0, 0, 1, 1, None),
        (50, 40, 1, 1, None),  # already past its end
        (0, 1 << 20, 4096, 65536, 1 << 19),
        (1000, 1000 + (3 << 16), 1000, 65536, 1 << 16),  # aligned down to the grid
        (0, 100_000, 40_000, 65536, None),  # the aligned cut leaves too little below
    ],
)
def test_steal_point_table(
    pos: int, end: int, min_bytes: int, align: int, expected: int | None
) -> None:
    assert steal_point(pos, end, min_bytes=min_bytes, align=align) == expected
