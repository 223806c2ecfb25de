"""Frozen config values, the one state directory, the error tree's categories, fields and hints,
typed events, and the journal's JSON shape."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelhaul import errors
from modelhaul.cli.options import state_dir
from modelhaul.config import (
    DownloadConfig,
    ManagerConfig,
    RateLimit,
    RetryPolicy,
    SegmentPolicy,
    Timeouts,
    default_state_dir,
)
from modelhaul.disk.journal import VERSION, JournalState
from modelhaul.engine.downloader import Downloader
from modelhaul.errors import (
    CATEGORIES,
    HTTPStatusError,
    InvalidInput,
    ModelhaulError,
    NetworkError,
    RetriesExhausted,
    StallTimeout,
    status_info,
)
from modelhaul.events import FileEvent, FilePhase, Phase
from modelhaul.policy.ranges import RangeSet
from origin import Origin

MiB = 1024 * 1024

# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (RetryPolicy, "retries", -1),
        (RetryPolicy, "initial_delay_s", -0.5),
        (RetryPolicy, "factor", 0.5),
        (RetryPolicy, "max_delay_s", -1.0),
        (RetryPolicy, "max_restarts", -1),
        (Timeouts, "connect_s", 0),
        (Timeouts, "connect_s", -1.0),
        (Timeouts, "stall_s", 0.0),
        (SegmentPolicy, "connections", 0),
        (SegmentPolicy, "connections", 65),
        (SegmentPolicy, "initial_connections", 0),
        (SegmentPolicy, "initial_connections", 100),
        (SegmentPolicy, "max_connections", 0),
        (SegmentPolicy, "max_connections", 65),
        (SegmentPolicy, "min_split_bytes", 0),
        (SegmentPolicy, "chunk_bytes", 0),
        (SegmentPolicy, "chunk_bytes", -MiB),
        (SegmentPolicy, "min_steal_bytes", 0),
        (SegmentPolicy, "write_batch_bytes", -1),
        (SegmentPolicy, "read_buffer_bytes", 0),
        (RateLimit, "rate_bytes_per_s", 0),
        (RateLimit, "rate_bytes_per_s", -100),
        (SegmentPolicy, "journal_every_bytes", 0),
        (SegmentPolicy, "journal_every_s", -1.0),
        (DownloadConfig, "max_redirects", -1),
        (DownloadConfig, "user_agent", ""),
        (DownloadConfig, "user_agent", "a\r\nX-Injected: 1"),
        (DownloadConfig, "headers", (("only-a-name",),)),
        (ManagerConfig, "max_active_files", 0),
        (ManagerConfig, "rate_bytes_per_s", 0),
    ],
)
def test_invalid_values_are_refused_naming_the_field(cls: type, field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field} "):
        cls(**{field: value})


@pytest.mark.parametrize(
    ("cls", "field"),
    [
        (RetryPolicy, "initial_delay_s"),
        (RetryPolicy, "factor"),
        (RetryPolicy, "max_delay_s"),
        (Timeouts, "connect_s"),
        (Timeouts, "stall_s"),
        (RateLimit, "rate_bytes_per_s"),
    ],
)
def test_nan_is_refused(cls: type, field: str) -> None:
    """NaN slips past ``value < 0`` and ``value == 0``; a NaN timeout or delay is never meant."""
    with pytest.raises(ValueError, match=field):
        cls(**{field: math.nan})


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (RetryPolicy, {"retries": 0, "initial_delay_s": 0.0, "max_delay_s": 0.0, "factor": 1.0}),
        (RetryPolicy, {"max_restarts": 0}),
        (Timeouts, {"connect_s": 0.001, "stall_s": 1e6}),
        (SegmentPolicy, {"connections": 1}),
        (SegmentPolicy, {"connections": 64, "initial_connections": 64, "max_connections": 64}),
        (SegmentPolicy, {"chunk_bytes": 1}),
        (RateLimit, {"rate_bytes_per_s": 1}),
        (RateLimit, {"rate_bytes_per_s": None}),
    ],
)
def test_boundary_values_are_accepted(cls: type, kwargs: dict[str, Any]) -> None:
    value = cls(**kwargs)
    for k, v in kwargs.items():
        assert getattr(value, k) == v


def test_configs_are_frozen_keyword_only_and_replaceable() -> None:
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.retries = 10  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetryPolicy(5)  # type: ignore[misc]
    more = dataclasses.replace(policy, retries=10)
    assert (policy.retries, more.retries) == (3, 10)
    with pytest.raises(ValueError, match="retries"):
        dataclasses.replace(policy, retries=-2)  # replace validates too


def test_download_config_defaults_are_independent_values() -> None:
    a, b = DownloadConfig(), DownloadConfig()
    assert a == b
    assert isinstance(a.retry, RetryPolicy) and isinstance(a.segments, SegmentPolicy)
    assert a.rate.rate_bytes_per_s is None


@pytest.mark.parametrize(
    ("size", "connections", "expected"),
    [
        (0, 4, 4 * MiB),  # never below 4 MiB
        (10 * MiB, 4, 4 * MiB),
        (1024 * MiB, 4, 64 * MiB),  # 1 GiB / 16 = 64 MiB
        (1024 * MiB, 8, 32 * MiB),
        (10 * 1024 * MiB, 4, 64 * MiB),  # never above 64 MiB
        (100 * MiB + 12345, 1, 25 * MiB),  # rounded down to whole MiB
    ],
)
def test_chunk_for_table(size: int, connections: int, expected: int) -> None:
    assert SegmentPolicy().chunk_for(size, connections) == expected


def test_chunk_for_honours_a_fixed_chunk() -> None:
    assert SegmentPolicy(chunk_bytes=12345).chunk_for(10**12, 32) == 12345


@settings(max_examples=200, deadline=None)
@given(size=st.integers(0, 2**50), connections=st.integers(1, 64))
def test_chunk_for_is_whole_mib_within_bounds(size: int, connections: int) -> None:
    chunk = SegmentPolicy().chunk_for(size, connections)
    assert 4 * MiB <= chunk <= 64 * MiB
    assert chunk % MiB == 0
    assert chunk <= max(4 * MiB, size // (4 * connections))


@pytest.mark.parametrize(
    ("connections", "live_bytes", "live", "expected"),
    [
        (1, 0, 0, 4 * MiB),  # never above 4 MiB
        (12, 0, 0, 4 * MiB),  # 48 MiB / 12
        (16, 0, 0, 3 * MiB),
        (32, 0, 0, 1 * MiB),  # 1.5 MiB, rounded down to whole MiB
        (64, 0, 0, 1 * MiB),  # never below the write batch
        (16, 32 * MiB, 8, 2 * MiB),  # 16 MiB left for the 8 still to come
        (32, 48 * MiB, 12, 1 * MiB),  # budget spent: the floor
    ],
)
def test_recv_block_for_table(connections: int, live_bytes: int, live: int, expected: int) -> None:
    assert SegmentPolicy().recv_block_for(connections, live_bytes, live) == expected


@settings(max_examples=200, deadline=None)
@given(connections=st.integers(1, 64), budget_mib=st.integers(1, 512))
def test_recv_blocks_taken_one_by_one_stay_within_the_budget(
    connections: int, budget_mib: int
) -> None:
    policy = SegmentPolicy(recv_budget_bytes=budget_mib * MiB)
    live_bytes = 0
    for live in range(connections):
        block = policy.recv_block_for(connections, live_bytes, live)
        assert policy.write_batch_bytes <= block <= 4 * MiB
        live_bytes += block
    # All connections together stay within the budget unless each has only the minimum.
    floor = connections * policy.write_batch_bytes
    assert live_bytes <= max(policy.recv_budget_bytes, floor)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "category", "retryable"),
    [
        (400, "client_error", False),
        (401, "auth", False),
        (403, "auth", False),
        (404, "not_found", False),
        (410, "not_found", False),
        (405, "client_error", False),
        (416, "client_error", False),
        (408, "server_error", True),
        (425, "server_error", True),
        (429, "rate_limited", True),
        (500, "server_error", True),
        (501, "server_error", False),
        (502, "server_error", True),
        (503, "server_error", True),
        (504, "server_error", True),
        (505, "server_error", False),
        (599, "server_error", False),
        (302, "client_error", False),
    ],
)
def test_status_mapping(status: int, category: str, retryable: bool) -> None:
    got_category, got_retryable, hint = status_info(status)
    assert (got_category, got_retryable) == (category, retryable)
    assert hint
    exc = HTTPStatusError(status, "https://example.com/a.bin")
    assert (exc.category, exc.retryable) == (category, retryable)
    assert exc.hint == hint
    assert exc.status == status
    assert str(status) in exc.message and "https://example.com/a.bin" in exc.message
    assert isinstance(exc, errors.TransferError)


def test_status_hints_point_to_the_next_step() -> None:
    assert "HF_TOKEN" in status_info(401)[2]
    assert "licence" in status_info(403)[2]
    assert "URL" in status_info(404)[2]
    assert "fewer connections" in status_info(429)[2]


def test_a_hint_that_names_a_setting_is_worded_by_each_face() -> None:
    """The library's hint names its parameters; the CLI's words for the same remedy name its
    flags; an explicit hint is the raiser's own and every face shows it as given."""
    from modelhaul.cli.words import cli_error, cli_hint
    from modelhaul.remedies import Remedy

    rate = HTTPStatusError(429, "https://example.com/a.bin")
    assert rate.remedy is Remedy.FEWER_CONNECTIONS
    assert "SegmentPolicy.connections" in rate.hint and "-x" not in rate.hint
    assert "(-x)" in cli_hint(rate) and "(-x)" in cli_error(rate)["hint"]
    assert "-H 'Authorization" in cli_hint(HTTPStatusError(401, "u"))
    assert "headers=" in HTTPStatusError(401, "u").hint
    assert "--timeout" in cli_hint(RetriesExhausted(StallTimeout("x"), []))
    assert "(-d DIR)" in cli_hint(errors.DiskFull("x"))
    assert "--help" in cli_hint(InvalidInput("x"))
    own = InvalidInput("x", hint="Write headers as -H 'Name: value'.")
    assert own.remedy is None and cli_hint(own) == own.hint
    assert cli_hint(errors.TargetConflict("x")) == "Give each download its own destination file."
    assert cli_hint(HTTPStatusError(429, "u", hint="wait")) == "wait"


def test_the_service_words_its_refusals_for_its_api_and_page() -> None:
    """A model still downloading is refused removal: the CLI names --force, the web page (which
    offers no force for it) and the library do not."""
    from modelhaul.cli.words import cli_hint
    from modelhaul.server.words import SERVICE_WORDS
    from modelhaul.store.inventory import Busy

    busy = Busy("org/model is being downloaded")
    assert cli_hint(busy) == "Wait for the download to finish, or pass --force."
    assert (
        busy.to_dict(SERVICE_WORDS)["hint"]
        == "Wait for the download to finish, then remove the model."
    )
    assert busy.hint == "Wait for the download to finish, or remove it with force=True."


def test_the_netrc_path_is_read_from_the_environment_in_config_only() -> None:
    from modelhaul.config import default_netrc_path

    assert default_netrc_path({"NETRC": "/etc/n"}) == Path("/etc/n")
    assert default_netrc_path({}, home=Path("/h")) == Path("/h/.netrc")
    assert default_netrc_path({"NETRC": ""}, home=Path("/h")) == Path("/h/.netrc")


def test_http_status_error_keeps_server_details() -> None:
    exc = HTTPStatusError(
        429, "u", retry_after_s=12.0, message="slow down", hint="wait", error_code="RateLimit"
    )
    assert exc.retry_after_s == 12.0
    assert exc.error_code == "RateLimit"
    assert exc.to_dict() == {"category": "rate_limited", "message": "slow down", "hint": "wait"}


def all_error_classes() -> list[type[ModelhaulError]]:
    """Every class of the tree drawn in errors.py."""
    found: list[type[ModelhaulError]] = []
    todo: list[type[ModelhaulError]] = [ModelhaulError]
    while todo:
        cls = todo.pop()
        if cls.__module__ == errors.__name__:
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_error_class_has_a_known_category_and_a_hint() -> None:
    classes = all_error_classes()
    assert len(classes) >= 14
    for cls in classes:
        if cls in (HTTPStatusError, RetriesExhausted):
            continue  # category comes from the status / the last attempt
        assert cls.category in CATEGORIES, cls
        if cls is not ModelhaulError:
            exc = cls("boom")
            assert exc.hint, cls
            assert exc.to_dict() == {"category": cls.category, "message": "boom", "hint": exc.hint}


@pytest.mark.parametrize(
    ("cls", "category", "retryable", "bases"),
    [
        (InvalidInput, "invalid_input", False, (ValueError,)),
        (NetworkError, "network", True, (errors.TransferError,)),
        (StallTimeout, "timeout", True, (errors.TransferError,)),
        (errors.TruncatedBody, "network", True, ()),
        (errors.RemoteChanged, "network", True, ()),
        (errors.RangeNotHonoured, "network", True, ()),
        (errors.RedirectRefused, "client_error", False, ()),
        (errors.IntegrityError, "integrity", False, ()),
        (errors.DiskFull, "disk_full", False, (OSError,)),
        (errors.PermissionDenied, "permission", False, (OSError,)),
        (errors.Cancelled, "cancelled", False, ()),
    ],
)
def test_error_categories(
    cls: type[ModelhaulError], category: str, retryable: bool, bases: tuple[type, ...]
) -> None:
    exc = cls("x")
    assert exc.category == category
    assert exc.retryable is retryable
    assert isinstance(exc, ModelhaulError)
    for base in bases:
        assert isinstance(exc, base)


def test_explicit_hint_overrides_the_default() -> None:
    assert NetworkError("x", hint="try the mirror").hint == "try the mirror"
    assert NetworkError("x", hint="").hint == ""  # an explicit empty hint is kept
    assert "HTTPS_PROXY" in NetworkError("x").hint


def test_retries_exhausted_keeps_history_and_takes_the_last_category() -> None:
    first = NetworkError("connection reset")
    second = StallTimeout("no byte for 30 s")
    last = HTTPStatusError(503, "https://h/f")
    attempts: list[ModelhaulError] = [first, second, last]
    exc = RetriesExhausted(last, attempts)
    assert exc.attempts == [first, second, last]
    assert exc.last is last
    assert exc.category == "server_error"
    assert exc.retryable is False  # giving up is final, even though 503 was retryable
    assert exc.hint == last.hint
    assert last.message in exc.message and "3 attempts" in exc.message
    assert exc.to_dict()["category"] == "server_error"
    assert isinstance(exc, errors.TransferError)


@pytest.mark.parametrize(
    ("last", "category"),
    [
        (StallTimeout("stalled"), "timeout"),
        (HTTPStatusError(429, "u"), "rate_limited"),
        (HTTPStatusError(403, "u"), "auth"),
        (NetworkError("reset"), "network"),
    ],
)
def test_retries_exhausted_category_follows_last(last: ModelhaulError, category: str) -> None:
    exc = RetriesExhausted(last, [NetworkError("earlier"), last])
    assert exc.category == category


def test_retries_exhausted_counts_one_attempt_in_the_singular() -> None:
    last = NetworkError("reset")
    assert RetriesExhausted(last, [last]).message.endswith("(gave up after 1 attempt)")


def test_categories_keep_their_json_strings() -> None:
    """Scripts match on these strings: the enum must not change a single one."""
    assert [str(c) for c in errors.Category] == [
        "network",
        "timeout",
        "not_found",
        "auth",
        "rate_limited",
        "server_error",
        "client_error",
        "integrity",
        "disk_full",
        "permission",
        "invalid_input",
        "cancelled",
    ]
    out = json.loads(json.dumps(errors.DiskFull("x").to_dict()))
    assert out["category"] == "disk_full"
    assert type(errors.DiskFull("x").to_dict()["category"]) is str


def test_errors_carry_their_facts_as_fields() -> None:
    full = errors.DiskFull("no room", need_bytes=5 * MiB, free_bytes=2 * MiB, path="/srv/hub")
    assert (full.need_bytes, full.free_bytes, full.path) == (5 * MiB, 2 * MiB, "/srv/hub")
    assert full.short_bytes == 3 * MiB
    assert errors.DiskFull("the disk is full while writing x").short_bytes is None
    status = HTTPStatusError(429, "https://h/f", retry_after_s=7, error_code="X")
    assert (status.status, status.url, status.retry_after_s, status.error_code) == (
        429,
        "https://h/f",
        7,
        "X",
    )
    assert NetworkError("x", kind="dns").kind is errors.NetworkKind.DNS
    with pytest.raises(ValueError, match="kind"):
        NetworkError("x", kind="gremlins")
    refused = errors.RedirectRefused("no", reason="downgrade")
    assert refused.reason is errors.RedirectReason.DOWNGRADE
    size = errors.IntegrityError("short", expected_size=10, actual_size=9)
    assert (size.expected_size, size.actual_size) == (10, 9)
    assert RetriesExhausted(status, [status]).url == "https://h/f"


def _chained(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except Exception as exc:
        return exc


class ConnectError(Exception):
    """Stands for a library's wrapper (httpx.ConnectError) around the socket's error."""


class ProxyError(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "dns"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "refused"),
        (ConnectionResetError(errno.ECONNRESET, "reset"), "reset"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "unreachable"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "tls"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "tls_handshake"),
        (
            _chained(ConnectError("[Errno 111] name resolution failed"), socket.gaierror(-2, "x")),
            "dns",
        ),
        (_chained(ConnectError("ssl handshake"), ConnectionRefusedError(111, "x")), "refused"),
        (ProxyError("502 from the proxy"), "proxy"),
        (ConnectError("Connection refused, certificate, DNS"), None),  # words are not facts
    ],
)
def test_network_kind_reads_types_never_words(exc: BaseException, kind: str | None) -> None:
    assert errors.network_kind(exc) == kind


def test_human_bytes() -> None:
    assert errors.human_bytes(0) == "0 B"
    assert errors.human_bytes(1023) == "1023 B"
    assert errors.human_bytes(1536) == "1.5 KiB"
    assert errors.human_bytes(5 * MiB) == "5.0 MiB"
    assert errors.human_bytes(3 * 1024**4) == "3.0 TiB"
    assert errors.human_bytes(3 * 1024**5) == "3072.0 TiB"


# ---------------------------------------------------------------- journal JSON


def state(**kw: Any) -> JournalState:
    base: dict[str, Any] = {
        "url": "https://h/org/repo/resolve/main/model.bin",
        "size": 1000,
        "etag": '"abc"',
        "last_modified": "Wed, 01 May 2024 12:00:00 GMT",
        "sha256": "0" * 64,
        "done": RangeSet([(0, 100), (500, 600)]),
    }
    base.update(kw)
    return JournalState(**base)


@pytest.mark.parametrize(
    "st_",
    [
        state(),
        state(size=None, etag=None, last_modified=None, sha256=None, done=RangeSet()),
        state(size=0, done=RangeSet()),
        state(done=RangeSet([(0, 1000)])),
    ],
)
def test_journal_round_trip(st_: JournalState) -> None:
    data = st_.to_json()
    assert data["version"] == VERSION
    assert JournalState.from_json(data) == st_
    assert JournalState.from_json(json.loads(json.dumps(data))) == st_  # through real JSON


@settings(max_examples=200, deadline=None)
@given(
    size=st.one_of(st.none(), st.integers(0, 10**15)),
    ranges=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), max_size=8),
    etag=st.one_of(st.none(), st.text(max_size=20)),
)
def test_journal_round_trip_fuzz(
    size: int | None, ranges: list[tuple[int, int]], etag: str | None
) -> None:
    done = RangeSet()
    for a, n in ranges:
        end = a + n if size is None else min(size, a + n)
        done.add(min(a, end), end)
    st_ = state(size=size, done=done, etag=etag)
    assert JournalState.from_json(json.loads(json.dumps(st_.to_json()))) == st_


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "journal",
        42,
        {},
        {"version": 2, "url": "u", "size": 1, "done": []},
        {"version": 1},
        {"version": 1, "url": "u", "size": 10},  # no done
        {"version": 1, "url": "u", "done": []},  # no size
        {"version": 1, "size": 10, "done": []},  # no url
        {"version": 1, "url": "u", "size": -1, "done": []},
        {"version": 1, "url": "u", "size": "10", "done": []},
        {"version": 1, "url": "u", "size": 10.5, "done": []},
        {"version": 1, "url": "u", "size": 10, "done": [[0, 11]]},  # past the end
        {"version": 1, "url": "u", "size": 10, "done": [[5, 2]]},  # backwards
        {"version": 1, "url": "u", "size": 10, "done": [[-2, 2]]},
        {"version": 1, "url": "u", "size": None, "done": [[-5, -1]]},
        {"version": 1, "url": "u", "size": 10, "done": [[0, 1, 2]]},
        {"version": 1, "url": "u", "size": 10, "done": [[0]]},
        {"version": 1, "url": "u", "size": 10, "done": [["0", "5"]]},
        {"version": 1, "url": "u", "size": 10, "done": [[0.0, 5.0]]},
        {"version": 1, "url": "u", "size": 10, "done": [5]},
        {"version": 1, "url": "u", "size": 10, "done": 5},
        {"version": 1, "url": "u", "size": 10, "done": None},
        {"version": 1, "url": "u", "size": 10, "done": [None]},
    ],
)
def test_journal_rejects_malformed(data: Any) -> None:
    assert JournalState.from_json(data) is None


@pytest.mark.parametrize(
    "field, value",
    [
        ("etag", 5),
        ("etag", ["x"]),
        ("etag", {"a": 1}),
        ("last_modified", 7),
        ("sha256", 123),
    ],
)
def test_journal_with_mistyped_strings_is_rejected(field: str, value: Any) -> None:
    """A journal whose text fields are not text is malformed: None, not a state that later
    crashes (``validator()`` calls ``.startswith`` on the ETag) or sends ``['x']`` as If-Range."""
    data = state().to_json()
    data[field] = value
    assert JournalState.from_json(data) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def journal_like(draw: st.DrawFn) -> Any:
    """Mostly-valid journals with one part replaced by an arbitrary JSON value."""
    data: dict[str, Any] = state().to_json()
    for key in draw(st.lists(st.sampled_from([*data, "extra"]), max_size=3, unique=True)):
        if draw(st.booleans()):
            data.pop(key, None)
        else:
            data[key] = draw(json_values)
    return data


@settings(max_examples=200, deadline=None)
@given(st.one_of(json_values, journal_like()))
def test_journal_from_json_fuzz_never_raises(data: Any) -> None:
    got = JournalState.from_json(data)
    assert got is None or isinstance(got, JournalState)


@settings(max_examples=200, deadline=None)
@given(journal_like())
def test_journal_from_json_fuzz_accepted_state_is_usable(data: Any) -> None:
    got = JournalState.from_json(data)
    if got is None:
        return
    # Whatever is accepted is a usable state: typed fields, ranges inside the file, round trip.
    assert isinstance(got.url, str)
    assert got.size is None or (isinstance(got.size, int) and got.size >= 0)
    for s, e in got.done:
        assert 0 <= s < e
        assert got.size is None or e <= got.size
    got.validator()
    assert JournalState.from_json(json.loads(json.dumps(got.to_json()))) == got


# ---------------------------------------------------------------- the one state directory


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"MODELHAUL_STATE_DIR": "/s", "XDG_CACHE_HOME": "/x"}, "/s"),
        ({"XDG_CACHE_HOME": "/x"}, "/x/modelhaul"),
        ({"MODELHAUL_STATE_DIR": "", "XDG_CACHE_HOME": ""}, "/home/u/.cache/modelhaul"),
        ({}, "/home/u/.cache/modelhaul"),
    ],
)
def test_default_state_dir_rule(environ: dict[str, str], expected: str) -> None:
    assert default_state_dir(environ, home=Path("/home/u")) == Path(expected)


@pytest.mark.parametrize("variable", ["XDG_CACHE_HOME", "MODELHAUL_STATE_DIR"])
async def test_library_and_cli_keep_state_in_one_place(
    variable: str, origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library download with no state_dir and the CLI lock and record in the same folder."""
    monkeypatch.delenv("MODELHAUL_STATE_DIR", raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "elsewhere"))
    origin.add_file("s.bin", b"x" * 4096)
    async with Downloader() as dl:
        await dl.download(origin.url("s.bin"), tmp_path / "s.bin")
    cli = state_dir()
    assert cli.is_relative_to(tmp_path / "elsewhere")
    assert list((cli / "done").iterdir())  # the completion record is where the CLI looks
    assert not (Path.home() / ".cache" / "modelhaul").exists()


# ---------------------------------------------------------------- typed events


def test_file_events_are_values_not_strings() -> None:
    queued = FileEvent(path="a.bin", phase=FilePhase.QUEUED, download_id="7")
    assert queued.download_id == "7"
    with pytest.raises(dataclasses.FrozenInstanceError):
        queued.path = "b.bin"  # type: ignore[misc]
    with pytest.raises(ValueError, match="download_id"):
        FileEvent(path="a.bin", phase=FilePhase.QUEUED)
    with pytest.raises(ValueError, match="download_id"):
        FileEvent(path="a.bin", phase=FilePhase.DONE, download_id="7")
    mirror = FileEvent(path="a.bin", phase=FilePhase.MIRROR, reason="HTTP 503")
    assert mirror.reason == "HTTP 503" and mirror.download_id is None
    # The engine's phases keep the words its callers printed before they were an enum.
    assert [str(p) for p in Phase] == ["probed", "verifying"]
