"""policy.retry: one immutable Retry value, table-tested with an injected random source and sleeper."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from modelhaul.errors import ModelhaulError, NetworkError
from modelhaul.policy.retry import Retry

HALF = 0.5  # rand() -> 0.5: the delay is 3/4 of the uncapped backoff


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


@pytest.mark.parametrize(
    ("total", "outcomes", "exhausted"),
    [
        (0, [False], True),
        (1, [False], False),
        (1, [False, False], True),
        (2, [False, True, False, False], False),  # a gaining attempt resets the count
        (2, [False, False, True, False, False, False], True),
        (3, [True, True, True, True, True], False),
    ],
)
def test_exhaustion_counts_only_failures_in_a_row_that_gained_nothing(
    total: int, outcomes: list[bool], exhausted: bool
) -> None:
    retry = Retry(total=total)
    for i, gained in enumerate(outcomes):
        retry = retry.increment(NetworkError(str(i)), gained=gained)
    assert retry.is_exhausted() is exhausted
    assert [e.message for e in retry.history] == [str(i) for i in range(len(outcomes))]


def test_increment_returns_a_new_value_and_leaves_the_old_alone() -> None:
    first = Retry(total=2)
    second = first.increment(NetworkError("a"))
    assert first.fails == 0 and first.history == ()
    assert second.fails == 1 and len(second.history) == 1
    with pytest.raises(AttributeError):
        second.fails = 5  # type: ignore[misc]


def test_reset_keeps_the_history() -> None:
    retry = Retry(total=1).increment(NetworkError("a")).reset()
    assert retry.fails == 0 and len(retry.history) == 1
    assert retry.reset() is retry


@pytest.mark.parametrize(
    ("fails", "free", "retry_after_s", "rand", "want_s"),
    [
        (0, 0, None, 0.0, 0.5),  # a gaining attempt still waits the first step
        (1, 0, None, 0.0, 0.5),
        (2, 0, None, 0.0, 1.0),
        (3, 0, None, 1.0, 4.0),
        (10, 0, None, 1.0, 8.0),  # capped by max_s
        (1, 0, 30.0, 0.0, 30.0),  # Retry-After longer than the backoff wins
        (3, 0, 0.1, 1.0, 4.0),  # and a shorter one does not shorten it
        (1, 1, None, 1.0, 0.0),  # free failures retry at once
        (2, 1, None, 0.0, 0.5),
        (3, 1, None, 1.0, 2.0),
    ],
)
def test_wait_s(
    fails: int, free: int, retry_after_s: float | None, rand: float, want_s: float
) -> None:
    retry = Retry(total=10, initial_s=1.0, factor=2.0, max_s=8.0, free=free, fails=fails)
    assert retry.wait_s(retry_after_s, rand=fixed(rand)) == pytest.approx(want_s)


@pytest.mark.parametrize(
    ("field", "value"), [("total", -1), ("free", -1), ("fails", -1), ("factor", 0.5)]
)
def test_bad_values_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Retry(**{"total": 1, field: value})  # type: ignore[arg-type]


def test_a_retry_loop_with_an_injected_sleeper_waits_the_growing_backoff() -> None:
    slept: list[float] = []

    async def sleeper(s: float) -> None:
        slept.append(s)

    async def run() -> tuple[ModelhaulError, ...]:
        retry = Retry(total=3, initial_s=1.0, factor=2.0, max_s=60.0)
        while True:
            try:
                raise NetworkError(f"attempt {len(retry.history)}")
            except NetworkError as exc:
                retry = retry.increment(exc)
                if retry.is_exhausted():
                    return retry.history
                await sleeper(retry.wait_s(rand=fixed(HALF)))

    history = asyncio.run(run())
    assert len(history) == 4
    assert slept == [0.75, 1.5, 3.0]
