"""Retry delays: equal-jitter backoff, Retry-After parsing and which of the two wins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from modelhaul.config import RetryPolicy
from modelhaul.policy.backoff import backoff_delay_s, parse_retry_after, retry_wait_s

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
DAY_S = 24 * 3600.0

fast = settings(max_examples=200, deadline=None)


def low() -> float:
    return 0.0


def high() -> float:
    return 1.0


def mid() -> float:
    return 0.5


def cap_d(attempt: int, initial_s: float, factor: float, max_s: float) -> float:
    """The documented ``d`` of the formula, computed independently."""
    return min(max_s, initial_s * factor**attempt)


# ---------------------------------------------------------------- backoff_delay_s


@pytest.mark.parametrize(
    ("attempt", "rand", "kw", "expected"),
    [
        (0, low, {}, 0.5),
        (0, high, {}, 1.0),
        (0, mid, {}, 0.75),
        (1, low, {}, 1.0),
        (1, high, {}, 2.0),
        (3, low, {}, 4.0),
        (3, high, {}, 8.0),
        (10, low, {}, 30.0),  # capped: d = 60
        (10, high, {}, 60.0),
        (10_000, high, {}, 60.0),  # huge attempt numbers do not overflow
        (2, high, {"initial_s": 0.1, "factor": 3.0, "max_s": 100.0}, 0.9),
        (2, low, {"initial_s": 0.1, "factor": 3.0, "max_s": 100.0}, 0.45),
        (5, high, {"initial_s": 2.0, "factor": 1.0, "max_s": 100.0}, 2.0),
        (0, high, {"initial_s": 0.0}, 0.0),
        (4, high, {"max_s": 0.0}, 0.0),
    ],
)
def test_backoff_table(attempt: int, rand: object, kw: dict[str, float], expected: float) -> None:
    assert backoff_delay_s(attempt, rand=rand, **kw) == pytest.approx(expected)  # type: ignore[arg-type]


def test_backoff_refuses_negative_attempt() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay_s(-1)


def test_backoff_default_rand_stays_in_band() -> None:
    # The real random source, many draws: all inside [d/2, d] and not all equal (jitter is on).
    delays = [backoff_delay_s(3) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 1


@fast
@given(
    attempt=st.integers(0, 64),
    r=st.floats(0.0, 1.0),
    initial_s=st.floats(0.0, 100.0),
    factor=st.floats(1.0, 10.0),
    max_s=st.floats(0.0, 3600.0),
)
def test_delay_lies_in_half_to_full_d(
    attempt: int, r: float, initial_s: float, factor: float, max_s: float
) -> None:
    d = cap_d(attempt, initial_s, factor, max_s)
    delay = backoff_delay_s(
        attempt, initial_s=initial_s, factor=factor, max_s=max_s, rand=lambda: r
    )
    assert d / 2 - 1e-9 <= delay <= d + 1e-9
    assert delay == pytest.approx(d / 2 + r * d / 2)


@fast
@given(
    attempt=st.integers(0, 20),
    initial_s=st.floats(0.01, 10.0),
    factor=st.floats(2.0, 4.0),
    headroom_s=st.floats(0.0, 1000.0),
)
def test_growth_is_never_undone_below_the_cap(
    attempt: int, initial_s: float, factor: float, headroom_s: float
) -> None:
    """While the next ``d`` is below the cap, the shortest next wait >= the longest this one."""
    max_s = initial_s * factor ** (attempt + 1) + headroom_s
    kw = {"initial_s": initial_s, "factor": factor, "max_s": max_s}
    longest_now = backoff_delay_s(attempt, rand=high, **kw)
    shortest_next = backoff_delay_s(attempt + 1, rand=low, **kw)
    assert shortest_next >= longest_now * (1 - 1e-12)


@fast
@given(
    attempt=st.integers(0, 60),
    initial_s=st.floats(0.01, 10.0),
    factor=st.floats(2.0, 4.0),
    max_s=st.floats(1.0, 3600.0),
)
@example(attempt=5, initial_s=1.0, factor=2.0, max_s=60.0)  # the defaults: 32 s, then 30 s
def test_successive_waits_never_shrink_anywhere_in_the_schedule(
    attempt: int, initial_s: float, factor: float, max_s: float
) -> None:
    """The issue's formula caps ``d`` before the jitter: waits grow while ``d`` grows, and once
    ``d`` reaches the cap every wait lies in [max_s/2, max_s] (so with the defaults attempt 5
    may wait 32 s and attempt 6 only 30 s, as the formula says)."""
    kw = {"initial_s": initial_s, "factor": factor, "max_s": max_s}
    longest_now = backoff_delay_s(attempt, rand=high, **kw)
    shortest_next = backoff_delay_s(attempt + 1, rand=low, **kw)
    if initial_s * factor ** (attempt + 1) <= max_s:
        assert shortest_next >= longest_now * (1 - 1e-12), (attempt, longest_now, shortest_next)
    else:
        assert max_s / 2 * (1 - 1e-12) <= shortest_next <= max_s * (1 + 1e-12)


@pytest.mark.parametrize("factor", [1.0, 1.5, 2.0, 10.0, 1e3, 1e6])
@pytest.mark.parametrize("attempt", [0, 10, 52, 64, 1000])
def test_any_valid_retry_policy_gives_a_bounded_delay(factor: float, attempt: int) -> None:
    """RetryPolicy accepts any factor >= 1, so its delay must exist for every attempt."""
    policy = RetryPolicy(factor=factor, max_delay_s=60.0)
    assert 0.0 <= policy.delay_s(attempt) <= 60.0


def test_retry_policy_delay_uses_its_fields() -> None:
    policy = RetryPolicy(initial_delay_s=0.25, factor=3.0, max_delay_s=5.0)
    for attempt in range(8):
        d = cap_d(attempt, 0.25, 3.0, 5.0)
        assert d / 2 <= policy.delay_s(attempt) <= d


# ---------------------------------------------------------------- parse_retry_after


def http_date(when: datetime) -> str:
    return format_datetime(when, usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("120", 120.0),
        ("  7  ", 7.0),
        ("86400", DAY_S),
        ("86401", DAY_S),  # capped at one day
        ("99999999999999999999999", DAY_S),
        (http_date(NOW + timedelta(seconds=90)), 90.0),
        (http_date(NOW + timedelta(hours=1)), 3600.0),
        (http_date(NOW - timedelta(seconds=90)), 0.0),  # in the past: go now
        (http_date(NOW + timedelta(days=400)), DAY_S),
        ("Wed, 01 May 2024 12:00:30 GMT", 30.0),
        ("Wednesday, 01-May-24 12:00:30 GMT", 30.0),  # RFC 850 form
        ("Wed May  1 12:00:30 2024", 30.0),  # asctime form, no zone: UTC
        ("Wed, 01 May 2024 14:00:30 +0200", 30.0),  # a numeric zone is honoured
        (None, None),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("12 seconds", None),
        ("Wed, 99 Foo 2024 12:00:30 GMT", None),
    ],
)
def test_retry_after_table(value: str | None, expected: float | None) -> None:
    got = parse_retry_after(value, now=NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_retry_after_date_without_now_uses_the_current_time() -> None:
    got = parse_retry_after(http_date(datetime.now(UTC) + timedelta(seconds=600)))
    assert got is not None
    assert 590.0 <= got <= 600.0


@pytest.mark.parametrize(
    "value",
    [
        "²",  # str.isdigit() is true for superscripts, int() refuses them
        "¹²³",
        "9" * 5000,  # over Python's int-from-str digit limit
    ],
    ids=["superscript-2", "superscripts", "5000-digits"],
)
def test_retry_after_odd_digits_give_none_or_a_capped_number(value: str) -> None:
    """A header from the network must not crash the retry loop: None or a number in [0, 1 day]."""
    got = parse_retry_after(value, now=NOW)
    assert got is None or 0.0 <= got <= DAY_S


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.builds(
            lambda sp, n: f"{sp}{n}{sp}", st.sampled_from(["", " ", "\t"]), st.integers(0, 10**30)
        ),
        st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=8),
    )
)
def test_retry_after_fuzz_never_raises_and_stays_in_range(value: str) -> None:
    got = parse_retry_after(value, now=NOW)
    assert got is None or 0.0 <= got <= DAY_S


@fast
@given(st.integers(0, 10**12))
def test_retry_after_seconds_round_trip(seconds: int) -> None:
    assert parse_retry_after(str(seconds)) == float(min(seconds, 86400))


@fast
@given(st.integers(-10 * 86400, 10 * 86400))
def test_retry_after_date_is_the_distance_from_now(offset_s: int) -> None:
    got = parse_retry_after(http_date(NOW + timedelta(seconds=offset_s)), now=NOW)
    assert got == float(max(0, min(offset_s, 86400)))


# ---------------------------------------------------------------- retry_wait_s


@pytest.mark.parametrize(
    ("attempt", "retry_after_s", "max_s", "rand", "expected"),
    [
        (0, None, 60.0, high, 1.0),  # no header: the backoff
        (0, 30.0, 60.0, high, 30.0),  # the server asks for longer: it wins
        (3, 2.0, 60.0, high, 8.0),  # the server asks for less: the backoff wins
        (3, 2.0, 60.0, low, 4.0),
        (0, 0.0, 60.0, low, 0.5),
        (0, 300.0, 60.0, low, 300.0),  # longer than our own cap is still honoured
        (0, DAY_S, 60.0, low, DAY_S),
        (10, 45.0, 60.0, high, 60.0),
    ],
)
def test_retry_wait_takes_the_larger(
    attempt: int, retry_after_s: float | None, max_s: float, rand: object, expected: float
) -> None:
    got = retry_wait_s(attempt, retry_after_s, max_s=max_s, rand=rand)  # type: ignore[arg-type]
    assert got == pytest.approx(expected)


@fast
@given(
    attempt=st.integers(0, 100),
    retry_after_s=st.one_of(st.none(), st.floats(0.0, DAY_S)),
    r=st.floats(0.0, 1.0),
    max_s=st.floats(0.0, 600.0),
)
def test_retry_wait_is_max_of_backoff_and_header(
    attempt: int, retry_after_s: float | None, r: float, max_s: float
) -> None:
    backoff = backoff_delay_s(attempt, max_s=max_s, rand=lambda: r)
    got = retry_wait_s(attempt, retry_after_s, max_s=max_s, rand=lambda: r)
    assert got == max(backoff, retry_after_s if retry_after_s is not None else 0.0)


def test_retry_wait_passes_backoff_parameters_through() -> None:
    got = retry_wait_s(2, None, max_s=100.0, initial_s=0.1, factor=3.0, rand=high)
    assert got == pytest.approx(0.9)
