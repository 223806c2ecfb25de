"""SegmentScheduler driven by simulated connections that receive, fail and steal.

The model is a per-byte delivery count. Whatever the connections do, once they all run to
completion every byte of the file that was not already held arrives exactly once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from modelhaul.policy.ranges import Range, RangeSet
from modelhaul.policy.segments import Segment, SegmentScheduler, next_connection_count


@dataclass
class Conn:
    seg: Segment | None = None
    want: int = 0  # a receive in flight asked for this many bytes


class Model:
    """Ground truth for one file: which bytes are held, delivered, or in flight."""

    def __init__(self, size: int, held: RangeSet) -> None:
        self.size = size
        self.held = [held.covers(i, i + 1) for i in range(size)]
        self.count = [0] * size
        self.steals = 0
        self.drops = 0

    def deliver(self, start: int, end: int) -> None:
        for i in range(start, end):
            assert not self.held[i], f"byte {i} was already held"
            assert self.count[i] == 0, f"byte {i} delivered twice"
            self.count[i] = 1

    def done(self, i: int) -> bool:
        return self.held[i] or self.count[i] > 0

    def lowest_unassigned(self, active: set[Segment]) -> int | None:
        in_flight = [False] * self.size
        for seg in active:
            for i in range(seg.pos, seg.end):
                in_flight[i] = True
        for i in range(self.size):
            if not self.done(i) and not in_flight[i]:
                return i
        return None

    def unassigned(self, active: set[Segment]) -> int:
        in_flight = sum(s.remaining for s in active)
        return self.size - sum(1 for i in range(self.size) if self.done(i)) - in_flight


def check_next(
    sched: SegmentScheduler, model: Model, chunk: int, min_steal: int, align: int
) -> Segment | None:
    """Call next_nowait and check it against the model: in-order chunks, then fair steals."""
    before_free = sched.unassigned_bytes
    assert before_free == model.unassigned(sched.active)
    lowest = model.lowest_unassigned(sched.active)
    # A steal may take only what is neither received nor claimed by a receive in flight.
    victims = {id(s): (max(s.pos, s.claimed), s.end, s.stealable) for s in sched.active}
    longest = max((r for _, _, r in victims.values()), default=0)
    seg = sched.next_nowait()
    if before_free > 0:
        # Unassigned bytes remain: the next chunk starts at the lowest one, in file order.
        assert seg is not None
        assert seg.start == lowest
        assert seg.pos == seg.start
        assert 0 < seg.end - seg.start <= chunk
        assert sched.unassigned_bytes == before_free - (seg.end - seg.start)
        return seg
    if seg is None:
        # Refusing to steal is only allowed when no range in flight has two worthwhile halves
        # (with alignment the cut may round down below the minimum, so check only align 1).
        if align == 1:
            assert longest < 2 * min_steal
        return None
    # A steal: the upper part of the longest range in flight.
    model.steals += 1
    assert id(seg) not in victims
    robbed = [s for s in sched.active if id(s) in victims and s.end != victims[id(s)][1]]
    assert len(robbed) == 1
    victim = robbed[0]
    base, old_end, stealable = victims[id(victim)]
    assert stealable == longest
    assert victim.end == seg.start
    assert seg.end == old_end
    assert seg.start - base >= min_steal
    assert seg.end - seg.start >= min_steal
    assert sched.unassigned_bytes == 0
    return seg


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, object]:
    size = draw(st.one_of(st.integers(0, 50), st.integers(100, 600)))
    held_pairs = draw(
        st.lists(st.tuples(st.integers(0, max(0, size)), st.integers(0, 80)), max_size=5)
    )
    return {
        "size": size,
        "held": RangeSet((s, min(size, s + n)) for s, n in held_pairs),
        "chunk": draw(st.integers(1, 200)),
        "min_steal": draw(st.integers(1, 30)),
        "read": draw(st.sampled_from([3, 16, 64])),
        "align": draw(st.sampled_from([1, 1, 4, 16])),
        "conns": draw(st.integers(1, 6)),
        "fail_p": draw(st.sampled_from([0.0, 0.02, 0.1, 0.3])),
        "probe": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def simulate(
    size: int,
    held: RangeSet,
    chunk: int,
    min_steal: int,
    align: int,
    conns: int,
    fail_p: float,
    probe: bool,
    read: int,
    seed: int,
) -> Model:
    rng = random.Random(seed)
    sched = SegmentScheduler(size, held, chunk_bytes=chunk, min_steal_bytes=min_steal, align=align)
    model = Model(size, held)
    assert sched.remaining_bytes == size - held.total()
    pool = [Conn() for _ in range(conns)]
    holes = held.missing(size)
    if probe and holes:
        # The probe response covers a piece of the first hole; it is claimed before planning.
        s, e = holes[0]
        a = rng.randrange(s, e)
        b = rng.randrange(a + 1, e + 1)
        pool[0].seg = sched.claim_nowait(a, b)
        assert (pool[0].seg.start, pool[0].seg.pos, pool[0].seg.end) == (a, a, b)
    done = held.total()
    idle_in_a_row = 0
    for _ in range(200_000):
        conn = rng.choice(pool)
        if conn.seg is None:
            conn.seg = check_next(sched, model, chunk, min_steal, align)
            if conn.seg is None:
                idle_in_a_row += 1
                if idle_in_a_row > 20 and all(c.seg is None for c in pool):
                    break
                continue
        idle_in_a_row = 0
        seg = conn.seg
        if rng.random() < 0.05:
            chunk = rng.randint(1, 200)
            sched.set_chunk_bytes(chunk)
        if seg.pos >= seg.end:
            sched.release(seg)  # finished (or robbed of everything that was left)
            conn.seg, conn.want = None, 0
        elif rng.random() < fail_p:
            sched.release(seg)  # the connection dropped mid-segment
            model.drops += 1
            conn.seg, conn.want = None, 0
        elif conn.want == 0 and rng.random() < 0.5:
            # A blocking receive starts: it claims its bytes; steals may happen meanwhile.
            conn.want = rng.randint(1, read)
            seg.claimed = seg.pos + conn.want
        else:
            # A read returns up to what was asked; the connection stops at the (maybe shrunk) end.
            n = min(rng.randint(1, conn.want or read), seg.end - seg.pos)
            model.deliver(seg.pos, seg.pos + n)
            seg.pos += n
            done += n
            conn.want = 0
        assert sched.remaining_bytes == size - done
    else:
        pytest.fail("the simulation did not finish")
    assert sched.active == set()
    assert sched.unassigned_bytes == 0
    assert sched.remaining_bytes == 0
    assert sched.next_nowait() is None
    return model


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_every_missing_byte_arrives_exactly_once(sc: dict[str, object]) -> None:
    model = simulate(**sc)  # type: ignore[arg-type]
    event(f"steals: {min(model.steals, 3)}+, drops: {min(model.drops, 3)}+")
    for i in range(model.size):
        assert model.count[i] == (0 if model.held[i] else 1), i


@pytest.mark.parametrize("seed", range(20))
def test_work_stealing_storm(seed: int) -> None:
    """The first connection takes the whole file; the others can only get work by stealing."""
    model = simulate(
        size=2000,
        held=RangeSet([(300, 400)]),
        chunk=2000,
        min_steal=8,
        align=1 if seed % 2 else 8,
        conns=5,
        fail_p=0.05,
        probe=False,
        read=16,
        seed=seed,
    )
    assert model.steals >= 1
    assert all(model.count[i] == (0 if model.held[i] else 1) for i in range(2000))


def test_in_order_chunks_without_failures() -> None:
    sched = SegmentScheduler(100, RangeSet([(30, 40)]), chunk_bytes=25, min_steal_bytes=10)
    got = [sched.next_nowait() for _ in range(4)]
    assert [(s.start, s.end) for s in got if s] == [(0, 25), (25, 30), (40, 65), (65, 90)]
    assert sched.unassigned_bytes == 10
    assert sched.remaining_bytes == 90


def test_set_chunk_bytes_changes_the_next_chunk() -> None:
    sched = SegmentScheduler(100, RangeSet(), chunk_bytes=10, min_steal_bytes=10)
    assert sched.next_nowait().end == 10  # type: ignore[union-attr]
    sched.set_chunk_bytes(30)
    assert sched.next_nowait().end == 40  # type: ignore[union-attr]
    sched.set_chunk_bytes(0)  # clamped to one byte, never a zero-length chunk
    seg = sched.next_nowait()
    assert seg is not None
    assert (seg.start, seg.end) == (40, 41)


def test_steal_takes_the_upper_half_of_the_longest() -> None:
    sched = SegmentScheduler(100, RangeSet(), chunk_bytes=60, min_steal_bytes=5)
    a = sched.next_nowait()
    b = sched.next_nowait()
    assert a is not None and b is not None
    assert (a.start, a.end, b.start, b.end) == (0, 60, 60, 100)
    a.pos = 20  # 40 left: the longest
    b.pos = 90  # 10 left
    c = sched.next_nowait()
    assert c is not None
    assert (c.start, c.end) == (40, 60)
    assert a.end == 40
    assert b.end == 100


def test_a_steal_leaves_bytes_already_claimed_by_a_receive_alone() -> None:
    sched = SegmentScheduler(100, RangeSet(), chunk_bytes=100, min_steal_bytes=5)
    a = sched.next_nowait()
    assert a is not None
    a.pos = 20
    a.claimed = 60  # a receive in flight asked for [20, 60)
    c = sched.next_nowait()
    assert c is not None
    # Half of what is neither received nor claimed: [60, 100) splits at 80.
    assert (c.start, c.end, a.end) == (80, 100, 80)


def test_the_victim_is_the_one_with_most_unclaimed_bytes() -> None:
    sched = SegmentScheduler(100, RangeSet(), chunk_bytes=50, min_steal_bytes=5)
    a = sched.next_nowait()
    b = sched.next_nowait()
    assert a is not None and b is not None
    a.claimed = 45  # 50 left, but only 5 of them unclaimed
    b.pos = 60  # 40 left, none claimed
    c = sched.next_nowait()
    assert c is not None
    assert (c.start, c.end) == (80, 100)
    assert a.end == 50 and b.end == 80


def test_no_steal_when_halves_would_be_too_small() -> None:
    sched = SegmentScheduler(100, RangeSet(), chunk_bytes=100, min_steal_bytes=30)
    a = sched.next_nowait()
    assert a is not None
    a.pos = 41  # 59 left: two halves of 30 do not fit
    assert sched.next_nowait() is None
    assert a.end == 100
    a.pos = 40  # 60 left: they do
    c = sched.next_nowait()
    assert c is not None
    assert (c.start, c.end, a.end) == (70, 100, 70)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def timed(steal_after_s: float = 1.0) -> tuple[SegmentScheduler, Clock]:
    clock = Clock()
    sched = SegmentScheduler(
        100,
        RangeSet(),
        chunk_bytes=100,
        min_steal_bytes=10,
        steal_after_s=steal_after_s,
        clock=clock,
    )
    return sched, clock


def test_a_young_segment_is_not_stolen_from_until_it_has_run_long_enough() -> None:
    sched, clock = timed()
    a = sched.next_nowait()
    assert a is not None and a.born == 100.0
    assert sched.next_nowait() is None
    assert sched.steal_wait_s() == pytest.approx(1.0)
    clock.now += 0.4
    assert sched.next_nowait() is None
    assert sched.steal_wait_s() == pytest.approx(0.6)
    clock.now += 0.6
    # Nothing arrived in all that time: as slow as can be.
    c = sched.next_nowait()
    assert c is not None
    assert (c.start, c.end, a.end) == (50, 100, 50)
    assert c.born == clock.now


def test_a_segment_that_will_be_done_soon_is_left_alone() -> None:
    sched, clock = timed()
    a = sched.next_nowait()
    assert a is not None
    clock.now += 2.0
    a.pos = 80  # 40 bytes/s: the last 20 take 0.5 s, under the 1 s a steal must save
    assert sched.next_nowait() is None
    # It may yet slow down: worth another look one judging interval later.
    assert sched.steal_wait_s() == pytest.approx(1.0)
    a.pos = 70  # 35 bytes/s: the last 30 take 0.86 s
    assert sched.next_nowait() is None
    clock.now += 2.0
    a.pos = 75  # 18.75 bytes/s: the last 25 take 1.33 s
    c = sched.next_nowait()
    assert c is not None
    assert (c.start, c.end) == (87, 100)


def test_the_slow_segment_is_stolen_from_when_the_longer_one_is_fast() -> None:
    clock = Clock()
    sched = SegmentScheduler(
        200, RangeSet(), chunk_bytes=100, min_steal_bytes=10, steal_after_s=1.0, clock=clock
    )
    a = sched.next_nowait()
    b = sched.next_nowait()
    assert a is not None and b is not None
    clock.now += 1.0
    a.pos = 40  # 60 left at 40 bytes/s: 1.5 s, stealable
    b.pos = 190  # 10 left at 90 bytes/s: soon done, and too short to halve anyway
    c = sched.next_nowait()
    assert c is not None
    assert (c.start, c.end) == (70, 100)


def test_waiting_cannot_pay_when_no_range_has_two_worthwhile_halves() -> None:
    sched, _ = timed()
    a = sched.next_nowait()
    assert a is not None
    a.pos = 81  # 19 left: under two halves of 10
    assert sched.steal_wait_s() is None
    sched.release(a)
    assert sched.steal_wait_s() is None  # nothing in flight at all


def test_without_a_judging_interval_a_steal_comes_at_once() -> None:
    sched, _ = timed(steal_after_s=0.0)
    a = sched.next_nowait()
    assert a is not None
    a.pos = 1
    c = sched.next_nowait()
    assert c is not None
    assert (c.start, c.end) == (50, 100)


def test_release_returns_only_unreceived_bytes() -> None:
    sched = SegmentScheduler(100, RangeSet(), chunk_bytes=50, min_steal_bytes=10)
    a = sched.next_nowait()
    assert a is not None
    a.pos = 20
    sched.release(a)
    assert sched.unassigned_bytes == 80
    again = sched.next_nowait()
    assert again is not None
    assert (again.start, again.end) == (20, 70)  # the returned bytes come first, merged
    rest = sched.next_nowait()
    assert rest is not None
    assert (rest.start, rest.end) == (70, 100)


def test_release_of_a_finished_segment_frees_nothing() -> None:
    sched = SegmentScheduler(10, RangeSet(), chunk_bytes=10, min_steal_bytes=1)
    a = sched.next_nowait()
    assert a is not None
    a.pos = a.end
    sched.release(a)
    assert sched.remaining_bytes == 0
    assert sched.next_nowait() is None


def test_claim_probe_range() -> None:
    sched = SegmentScheduler(100, RangeSet([(0, 10)]), chunk_bytes=30, min_steal_bytes=10)
    probe = sched.claim_nowait(10, 25)
    assert (probe.start, probe.pos, probe.end) == (10, 10, 25)
    assert probe in sched.active
    assert sched.unassigned_bytes == 75
    nxt = sched.next_nowait()
    assert nxt is not None
    assert (nxt.start, nxt.end) == (25, 55)


def test_claim_from_the_middle_keeps_both_sides_free() -> None:
    sched = SegmentScheduler(100, RangeSet(), chunk_bytes=100, min_steal_bytes=10)
    sched.claim_nowait(40, 60)
    assert sched.unassigned_bytes == 80
    a = sched.next_nowait()
    b = sched.next_nowait()
    assert a is not None and b is not None
    assert [(a.start, a.end), (b.start, b.end)] == [(0, 40), (60, 100)]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (5, 15),  # overlaps held bytes
        (0, 10),  # entirely held
        (90, 101),  # past the end
        (15, 25),  # already claimed
        (50, 70),  # spans two free pieces
    ],
)
def test_claim_refuses_bytes_that_are_not_free(start: int, end: int) -> None:
    sched = SegmentScheduler(100, RangeSet([(0, 10), (60, 65)]), chunk_bytes=10, min_steal_bytes=5)
    sched.claim_nowait(12, 30)
    before = sched.unassigned_bytes
    with pytest.raises(ValueError, match="not free"):
        sched.claim_nowait(start, end)
    assert sched.unassigned_bytes == before


def test_fully_held_file_has_nothing_to_do() -> None:
    sched = SegmentScheduler(50, RangeSet([(0, 50)]), chunk_bytes=10, min_steal_bytes=5)
    assert sched.remaining_bytes == 0
    assert sched.next_nowait() is None


def test_chunk_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk_bytes"):
        SegmentScheduler(10, RangeSet(), chunk_bytes=0, min_steal_bytes=1)


def simulate_plain(size: int, held: list[Range]) -> list[int]:
    """Starts of the chunks one connection gets with no failures: strictly in file order."""
    sched = SegmentScheduler(size, RangeSet(held), chunk_bytes=7, min_steal_bytes=3)
    starts = []
    while (seg := sched.next_nowait()) is not None:
        starts.append(seg.start)
        seg.pos = seg.end
        sched.release(seg)
    return starts


def test_chunks_are_handed_out_in_file_order() -> None:
    starts = simulate_plain(100, [(10, 20), (50, 53)])
    assert starts == sorted(starts)
    assert starts[0] == 0
    assert 10 not in starts and 50 not in starts
    assert starts == [0, 7, 20, 27, 34, 41, 48, 53, 60, 67, 74, 81, 88, 95]


@pytest.mark.parametrize(
    ("speed", "current", "previous", "expected"),
    [
        (100.0, 16, None, (32, False)),  # the first measurement only sets a baseline
        (200.0, 8, (100.0, 4), (16, False)),  # doubling paid: double again
        (110.0, 8, (100.0, 4), (8, True)),  # paid a little: keep, stop
        (103.0, 32, (100.0, 16), (16, True)),  # bought almost nothing: go back
        (90.0, 32, (100.0, 16), (16, True)),  # doubling cost speed: go back
        (100.0, 32, None, (32, True)),  # already at the ceiling
        (100.0, 24, None, (32, False)),  # doubling is capped by the ceiling
    ],
)
def test_next_connection_count(
    speed: float, current: int, previous: tuple[float, int] | None, expected: tuple[int, bool]
) -> None:
    assert next_connection_count(speed, current, previous, 32) == expected


@given(
    speed=st.floats(0, 1e10),
    prev_speed=st.floats(0, 1e10),
    current=st.integers(1, 64),
    ceiling=st.integers(1, 64),
)
def test_next_connection_count_stays_within_bounds(
    speed: float, prev_speed: float, current: int, ceiling: int
) -> None:
    previous = (prev_speed, max(1, current // 2))
    count, final = next_connection_count(speed, current, previous, ceiling)
    assert 1 <= count <= max(current, ceiling)
    if not final:
        assert count == min(current * 2, ceiling) > current
