"""Max-min fair shares of a bandwidth cap, and the guess of what a download wants."""

from __future__ import annotations

import pytest

from modelhaul.policy.fairshare import HEADROOM, estimate_demand, water_fill


@pytest.mark.parametrize(
    ("total", "demands", "shares"),
    [
        (9, [None, None, None], [3, 3, 3]),
        (9, [1, None, None], [1, 4, 4]),
        (9, [5, None, None], [3, 3, 3]),
        (9, [1, 2, None], [1, 2, 6]),
        (9, [1, 2, 3], [1, 2, 3]),  # all modest: the rest stays unused
        (9, [None, 1, None, 2], [3, 1, 3, 2]),
        (10, [], []),
        (0, [None, 1], [0, 0]),
        (6, [0, None], [0, 6]),
    ],
)
def test_water_fill(total: float, demands: list[float | None], shares: list[float]) -> None:
    assert water_fill(total, demands) == pytest.approx(shares)


@pytest.mark.parametrize("demands", [[None] * 7, [0.5, None, 3, None, 10, 2, None]])
def test_water_fill_never_hands_out_more_than_the_total(demands: list[float | None]) -> None:
    shares = water_fill(10, demands)
    assert sum(shares) <= 10 + 1e-9
    for share, demand in zip(shares, demands, strict=True):
        assert share <= (demand if demand is not None else 10)


@pytest.mark.parametrize(("total", "demands"), [(-1, [None]), (1, [-0.5])])
def test_water_fill_rejects_negative_values(total: float, demands: list[float | None]) -> None:
    with pytest.raises(ValueError):
        water_fill(total, demands)


@pytest.mark.parametrize(
    ("used", "share", "waited", "demand"),
    [
        (0.0, None, False, None),  # just started: presumed to want everything
        (90.0, 100.0, False, None),  # used most of its share
        (10.0, 100.0, True, None),  # waited for its bucket: held back by us
        (10.0, 100.0, False, 10.0 * HEADROOM),  # held back elsewhere: what it used, and room
        (1.0, 100.0, False, 5.0),  # never below the floor
    ],
)
def test_estimate_demand(
    used: float, share: float | None, waited: bool, demand: float | None
) -> None:
    assert estimate_demand(used, share, waited=waited, floor=5.0) == demand
