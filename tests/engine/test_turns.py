"""engine.turns: receives held by a receive cap get their turns lowest file offset first, one
per freed slot, and a receive that stops waiting leaves the queue."""

from __future__ import annotations

import asyncio

from modelhaul.engine.turns import ReceiveTurns


async def _settle() -> None:
    for _ in range(5):  # let woken waiters run
        await asyncio.sleep(0)


async def _held(turns: ReceiveTurns, pos: int, woken: list[int]) -> None:
    """A receive at ``pos`` waiting for its turn; noted in ``woken`` once it has it."""
    await turns.wait(pos)
    woken.append(pos)


async def test_a_freed_turn_goes_to_the_lowest_offset_waiting() -> None:
    turns = ReceiveTurns()
    woken: list[int] = []
    tasks = [asyncio.create_task(_held(turns, p, woken)) for p in (300, 100, 200, 100)]
    await _settle()
    assert len(turns) == 4 and woken == []

    turns.wake(1)
    await _settle()
    assert woken == [100]  # one turn: one receive, the one nearest the prefix

    turns.wake(2)
    await _settle()
    assert woken == [100, 100, 200]  # equal offsets: first come, first served

    turns.wake()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert woken == [100, 100, 200, 300] and len(turns) == 0


async def test_a_receive_that_stops_waiting_leaves_the_queue_and_takes_no_turn() -> None:
    turns = ReceiveTurns()
    woken: list[int] = []
    with_timeout = asyncio.create_task(asyncio.wait_for(turns.wait(10), 0.01))
    later = asyncio.create_task(_held(turns, 50, woken))
    cancelled = asyncio.create_task(_held(turns, 20, woken))
    await _settle()
    cancelled.cancel()
    await asyncio.gather(with_timeout, cancelled, return_exceptions=True)
    assert len(turns) == 1  # only the receive at 50 still waits

    turns.wake(1)  # not spent on the two that left
    await asyncio.wait_for(later, 5)
    assert woken == [50] and len(turns) == 0
    turns.wake(3)  # nobody waiting: nothing happens
