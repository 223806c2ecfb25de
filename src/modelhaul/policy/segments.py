"""Which bytes each connection fetches next.

Connections take the missing bytes in file order, one chunk at a time, so the complete prefix
(and the hash that follows it) grows steadily. When nothing is left unassigned, an idle
connection steals the upper half of the largest range still in flight, so a slow connection
never leaves a long tail ("stuck at 99 %").

A steal costs a request, and whatever the victim's server already sent past the cut arrives
twice: on a fast link a whole small segment sits in socket buffers before the first read. So
a segment is judged only once it has run ``steal_after_s``, and then stolen from only if, at
the speed it has shown, it still needs that long again.

A ``Demand`` (readers of the growing file, such as the Hub mirror's clients) names ranges to
fetch before plan order: the next free segment starts at the first missing byte a reader waits
for, and a segment in flight that would reach those bytes only late is split there. When every
connection is busy, ``make_room_nowait`` ends the segment in flight with the most left
``min_steal`` bytes ahead (its rest goes back to the free list), so a connection comes for the
wanted bytes within seconds, not after a whole chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .ranges import Range, RangeSet, steal_point

_MAX_WANTED = 32  # ranges remembered per download; the oldest wait is dropped first


class Demand:
    """Ranges readers wait for, newest first, and what of the file is final so far.

    The reader side calls ``want``; the engine ``attach``es each attempt's set of written
    ranges and a ``wake`` for its idle connections. Everything runs on the event loop.
    """

    def __init__(self) -> None:
        self._wanted: list[Range] = []
        self._done: RangeSet | None = None
        self._wake: Callable[[], None] | None = None

    def attach(self, done: RangeSet, wake: Callable[[], None]) -> None:
        """An attempt starts: ``done`` grows as its bytes are written; ``wake`` stirs idle
        connections so they look at new wants."""
        self._done, self._wake = done, wake

    def want(self, start: int, end: int) -> None:
        """A reader waits for ``[start, end)``: fetch its missing bytes next."""
        if end <= start:
            return
        self._wanted = [(start, end), *[w for w in self._wanted if w != (start, end)]]
        del self._wanted[_MAX_WANTED:]
        if self._wake is not None:
            self._wake()

    def final_end(self, pos: int) -> int:
        """The end of the run of written bytes from ``pos`` (``pos`` itself if none)."""
        if self._done is None:
            return pos
        for s, e in self._done:
            if s <= pos < e:
                return e
            if s > pos:
                break
        return pos

    def pending(self) -> list[Range]:
        """The wanted ranges not yet wholly written, newest first (the rest are forgotten)."""
        done = self._done
        if done is not None:
            self._wanted = [w for w in self._wanted if not done.covers(*w)]
        return list(self._wanted)


@dataclass(slots=True, eq=False)
class Segment:
    """A range one connection is fetching. ``end`` may shrink when another connection steals."""

    start: int
    end: int
    pos: int  # next byte to receive
    # A receive in flight already asked for the bytes up to here (a whole block read by a
    # worker thread, which reports them only when it returns): a steal leaves them alone, or
    # they would arrive twice.
    claimed: int = 0
    born: float = 0.0  # when the scheduler handed it out (scheduler clock)

    @property
    def remaining(self) -> int:
        return max(0, self.end - self.pos)

    @property
    def stealable(self) -> int:
        return max(0, self.end - max(self.pos, self.claimed))


class SegmentScheduler:
    """Hands out segments of ``[0, size)`` minus what is already held."""

    # Each argument kept as a field: a shape every constructor repeats (Transport's too),
    # not logic to share.
    def __init__(
        self,
        size: int,
        held: RangeSet,
        *,
        chunk_bytes: int,
        min_steal_bytes: int,
        align: int = 1,
        steal_after_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        demand: Demand | None = None,
    ) -> None:
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be > 0")
        self.size = size
        self._chunk = chunk_bytes
        self._min_steal = min_steal_bytes
        self._align = align
        self._steal_after = steal_after_s
        self._clock = clock
        self._free: list[Range] = held.missing(size)
        self.active: set[Segment] = set()
        self._demand = demand

    @property
    def unassigned_bytes(self) -> int:
        return sum(e - s for s, e in self._free)

    @property
    def remaining_bytes(self) -> int:
        return self.unassigned_bytes + sum(s.remaining for s in self.active)

    def set_chunk_bytes(self, chunk_bytes: int) -> None:
        self._chunk = max(1, chunk_bytes)

    def next_nowait(self) -> Segment | None:
        """The next segment to fetch, or None when nothing is left worth a connection."""
        if self._demand is not None and (seg := self._wanted_nowait()) is not None:
            return seg
        if self._free:
            start, end = self._free[0]
            cut = min(end, start + self._chunk)
            if cut == end:
                self._free.pop(0)
            else:
                self._free[0] = (cut, end)
            return self._activate(start, cut)
        return self._steal()

    def _wanted_nowait(self) -> Segment | None:
        """A segment for the newest wanted bytes: free ones from their first missing byte, or
        the far part of a segment in flight that would reach them only after ``min_steal``."""
        assert self._demand is not None
        for want_start, want_end in self._demand.pending():
            for i, (s, e) in enumerate(self._free):
                if s < want_end and e > want_start:
                    start = max(s, want_start)
                    cut = min(e, start + self._chunk)
                    pieces = [(s, start), (cut, e)]
                    self._free[i : i + 1] = [(a, b) for a, b in pieces if b > a]
                    return self._activate(start, cut)
            for seg in self.active:
                cut = want_start - want_start % self._align
                if max(seg.pos, seg.claimed) + self._min_steal <= cut < seg.end:
                    upper_end, seg.end = seg.end, cut
                    return self._activate(cut, upper_end)
        return None

    def make_room_nowait(self) -> bool:
        """Every connection is busy and a reader waits for free bytes: end the segment in
        flight that has the most left (and has run long enough to judge) ``min_steal`` bytes
        ahead of what it has asked for. Whether one was shortened."""
        if self._demand is None:
            return False
        wanted = self._demand.pending()
        if not any(s < we and e > ws for ws, we in wanted for s, e in self._free):
            return False
        now = self._clock()
        victims = [s for s in self.active if self._worth_stealing(s, now)]
        if not victims:
            return False
        victim = max(victims, key=lambda s: s.stealable)
        cut = max(victim.pos, victim.claimed) + self._min_steal
        cut += -cut % self._align
        if cut + self._min_steal > victim.end:
            return False
        self._free.append((cut, victim.end))
        victim.end = cut
        self._merge_free()
        return True

    def claim_nowait(self, start: int, end: int) -> Segment:
        """Take exactly ``[start, end)`` (the range a probe response already covers)."""
        for i, (s, e) in enumerate(self._free):
            if s <= start and end <= e:
                pieces = [(s, start), (end, e)]
                self._free[i : i + 1] = [(a, b) for a, b in pieces if b > a]
                return self._activate(start, end)
        raise ValueError(f"[{start}, {end}) is not free")

    def steal_wait_s(self) -> float | None:
        """How long an idle connection should wait before asking again, or None if waiting
        cannot pay: no range in flight has two worthwhile halves.

        A wait ends early for nothing here; the caller also wakes when a segment is released.
        """
        now = self._clock()
        wait: float | None = None
        for seg in self.active:
            if self._cut(seg) is None:
                continue
            age = now - seg.born
            # Too young to judge: ask again once it is not. Judged fast: it may yet slow down.
            left = self._steal_after - age if age < self._steal_after else self._steal_after
            wait = left if wait is None else min(wait, left)
        return None if wait is None else max(wait, 0.0)

    def _activate(self, start: int, end: int) -> Segment:
        seg = Segment(start, end, start, born=self._clock())
        self.active.add(seg)
        return seg

    def _cut(self, seg: Segment) -> int | None:
        base = max(seg.pos, seg.claimed)
        return steal_point(base, seg.end, min_bytes=self._min_steal, align=self._align)

    def _worth_stealing(self, seg: Segment, now: float) -> bool:
        age = now - seg.born
        if age < self._steal_after:
            return False
        received = seg.pos - seg.start
        # Nothing yet after that long: as slow as can be. Otherwise: would it finish soon?
        return received <= 0 or seg.stealable * age >= self._steal_after * received

    def _steal(self) -> Segment | None:
        now = self._clock()
        victims = [s for s in self.active if self._worth_stealing(s, now)]
        if not victims:
            return None
        victim = max(victims, key=lambda s: s.stealable)
        cut = self._cut(victim)
        if cut is None:
            return None
        upper_end = victim.end
        victim.end = cut
        return self._activate(cut, upper_end)

    def release(self, seg: Segment) -> None:
        """A connection stopped (finished, failed, paused): unreceived bytes become free again."""
        self.active.discard(seg)
        if seg.pos < seg.end:
            self._free.append((seg.pos, seg.end))
            self._merge_free()

    def _merge_free(self) -> None:
        self._free.sort()
        merged: list[Range] = []
        for s, e in self._free:
            if merged and merged[-1][1] == s:
                merged[-1] = (merged[-1][0], e)
            else:
                merged.append((s, e))
        self._free = merged


# A doubling must raise the aggregate speed by this much to be followed by another one; one
# that raised it by less than GROWTH_KEEP is undone.
GROWTH_GAIN = 1.15
GROWTH_KEEP = 1.05


def next_connection_count(
    speed: float, current: int, previous: tuple[float, int] | None, ceiling: int
) -> tuple[int, bool]:
    """Automatic mode: the connection count after measuring ``speed`` with ``current``.

    ``previous`` is (speed, count) of the level before the last doubling. Returns the new
    count and whether adapting is over. Connections are doubled while that still pays (a CDN
    capping each flow). A doubling that bought (almost) nothing is undone: on a CPU- or
    link-bound transfer extra connections only cost CPU, memory and the server's patience.
    """
    if previous is not None and speed <= previous[0] * GROWTH_GAIN:
        return (previous[1] if speed < previous[0] * GROWTH_KEEP else current), True
    grown = min(current * 2, ceiling)
    if grown <= current:
        return current, True
    return grown, False
