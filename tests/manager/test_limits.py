"""Per-download limits on their own: the connection clamp and the fair share of a global cap."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from modelhaul.config import DownloadConfig, ManagerConfig, SegmentPolicy
from modelhaul.events import State
from modelhaul.manager.limits import FairShare, TaskBucket, check_rate, within_host_limit


@dataclass
class Running:
    rate_limit: float | None = None
    state: State = State.RUNNING
    limiter: TaskBucket = field(default_factory=lambda: TaskBucket(None))
    share: float | None = None
    passed_mark: int = 0


async def test_a_global_cap_is_shared_and_a_lower_own_cap_is_kept() -> None:
    capped, free = Running(rate_limit=100.0), Running()
    tasks = {"a": capped, "b": free}
    shares = FairShare(tasks, 1000.0)
    try:
        shares.rebalance()
        assert capped.limiter.rate_bytes_per_s == 100.0
        assert free.limiter.rate_bytes_per_s == 900.0  # what the capped one leaves
        shares.set_limit(None)
        assert (capped.share, free.share) == (None, None)
        assert capped.limiter.rate_bytes_per_s == 100.0
        assert free.limiter.rate_bytes_per_s is None
    finally:
        shares.close()


def test_connections_per_file_stay_within_the_per_host_cap() -> None:
    dc = DownloadConfig(segments=SegmentPolicy(max_connections=32, connections=24))
    clamped = within_host_limit(dc, ManagerConfig(max_connections_per_host=8))
    assert clamped.segments.max_connections == 8
    assert clamped.segments.connections == 8


@pytest.mark.parametrize("rate", [0, -1.0, float("inf"), float("nan")])
def test_a_rate_must_be_positive_and_finite(rate: float) -> None:
    with pytest.raises(ValueError, match="rate_bytes_per_s"):
        check_rate(rate)
