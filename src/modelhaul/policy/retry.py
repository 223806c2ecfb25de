"""One retry decision as a value: how many failures in a row, the history, the next wait.

urllib3's ``Retry`` is the model: the value never changes; ``increment`` returns the next one
with the error appended to its history, so whoever gives up can report every attempt.

Example::

    retry = Retry(total=3)
    while True:
        try:
            return await attempt()
        except TransferError as exc:
            retry = retry.increment(exc)
            if retry.is_exhausted():
                raise RetriesExhausted(exc, list(retry.history)) from exc
            await sleep_s(retry.wait_s(exc.retry_after_s))
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..errors import ModelhaulError
from .backoff import backoff_delay_s, retry_wait_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """Failures in a row allowed, backoff parameters, and what happened so far.

    Args:
        total: failures in a row tolerated; one more and the value is exhausted.
        initial_s, factor, max_s: the backoff (see policy.backoff.backoff_delay_s).
        free: failures retried at once before the backoff begins (a clean restart after the
            remote changed is retried at once the first time: nothing was wrong with the link).
        fails: failures in a row so far (an attempt that gained something resets it).
        history: every error seen, oldest first.
    """

    total: int
    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0
    free: int = 0
    fails: int = 0
    history: tuple[ModelhaulError, ...] = ()

    def __post_init__(self) -> None:
        for name in ("total", "free", "fails"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor!r}")
        if self.initial_s < 0 or self.max_s < 0:
            raise ValueError("initial_s and max_s must be >= 0")

    def increment(self, error: ModelhaulError, *, gained: bool = False) -> Retry:
        """The value after ``error``; ``gained``: the failed attempt made progress, so it
        does not count against the budget (only attempts that gain nothing do)."""
        return replace(self, fails=0 if gained else self.fails + 1, history=(*self.history, error))

    def reset(self) -> Retry:
        """The value after a success: the budget is whole again, the history stays."""
        return replace(self, fails=0) if self.fails else self

    def is_exhausted(self) -> bool:
        """True once more failures came in a row than ``total`` allows."""
        return self.fails > self.total

    def wait_s(
        self, retry_after_s: float | None = None, *, rand: Callable[[], float] = random.random
    ) -> float:
        """Seconds to wait before the next attempt.

        ``backoff_delay_s(max(0, fails - free - 1))``, or 0 while ``free`` failures last;
        a longer Retry-After from the server wins (policy.backoff.retry_wait_s).
        """
        n = self.fails - self.free
        if self.free and n <= 0:
            return 0.0
        attempt = max(0, n - 1)
        if retry_after_s is None:
            return backoff_delay_s(
                attempt, initial_s=self.initial_s, factor=self.factor, max_s=self.max_s, rand=rand
            )
        return retry_wait_s(
            attempt,
            retry_after_s,
            max_s=self.max_s,
            initial_s=self.initial_s,
            factor=self.factor,
            rand=rand,  # type: ignore[arg-type]
        )


__all__ = ["Retry"]
