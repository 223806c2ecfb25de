"""Progress of one download as immutable events: speed over recent samples, ETA, attempts."""

from __future__ import annotations

import time

from ..events import Progress
from .transfer import Transfer

_PROGRESS_EVERY_S = 0.1


def emit_progress(t: Transfer, *, force: bool = False) -> None:
    """Sample the speed; tell the listener at most every _PROGRESS_EVERY_S (or now, ``force``)."""
    now = time.monotonic()
    t.speed_samples.append((now, t.received))
    if t.facts.on_progress is None or (not force and now - t.last_progress_at < _PROGRESS_EVERY_S):
        return
    t.last_progress_at = now
    t.facts.on_progress(progress_of(t, now))


def progress_of(t: Transfer, now: float) -> Progress:
    # Speed over the last ~3 s of samples: smooth enough for an ETA, quick to react.
    samples = t.speed_samples
    speed = 0.0
    if len(samples) >= 2:
        t0, b0 = samples[0]
        for ts, b in samples:
            if now - ts <= 3.0:
                t0, b0 = ts, b
                break
        if now > t0:
            speed = (t.received - b0) / (now - t0)
    done = t.bytes_done()
    eta = (t.size - done) / speed if t.size is not None and speed > 0 else None
    return Progress(
        url=t.facts.url,
        path=str(t.dest),
        bytes_done=done,
        total=t.size,
        speed_bytes_per_s=speed,
        eta_s=eta,
        connections=max(t.alive, 0),
        attempts=t.attempts,
        resumed_from=t.resumed_from,
        elapsed_s=now - t.facts.started,
        bytes_received=t.received,
        resumable=not t.single,
        bytes_final=t.state.done.prefix_end(),
    )


__all__ = ["emit_progress", "progress_of"]
