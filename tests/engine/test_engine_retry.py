"""Engine tests for retries and errors: what is retried, how often, how long it waits, and what
the user is told when it gives up.

Retry delays are kept tiny (RetryPolicy(initial_delay_s=0.01)) except where a test checks that
the server's Retry-After is honoured.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import blob, sha
from helpers import download_config as config
from modelhaul.cli.words import CLI_WORDS
from modelhaul.config import MiB
from modelhaul.engine.downloader import Downloader
from modelhaul.errors import HTTPStatusError, ModelhaulError, RetriesExhausted
from origin import Fault, Origin

KiB = 1024

# ---------------------------------------------------------------------- transient faults


@pytest.mark.parametrize(
    "fault",
    [
        Fault(drop_after=0),
        Fault(drop_after=1234567),
        Fault(truncate_after=0),
        Fault(truncate_after=2 * MiB + 1),
        Fault(stall_after=0),
        Fault(stall_after=MiB),
        Fault(delay_s=5),  # headers never come within the stall timeout
    ],
    ids=lambda f: ",".join(
        f"{k}={v}"
        for k, v in (
            ("drop", f.drop_after),
            ("trunc", f.truncate_after),
            ("stall", f.stall_after),
            ("delay", f.delay_s or None),
        )
        if v is not None
    ),
)
@pytest.mark.parametrize("connections", [1, 4])
async def test_transient_faults_are_retried(
    origin: Origin, tmp_path: Path, state_dir: Path, fault: Fault, connections: int
) -> None:
    data = blob(24 * MiB, seed=1)
    origin.add_file("t.bin", data)
    origin.plan("t.bin", [fault])
    started = time.monotonic()
    async with Downloader(config(stall_s=0.5, connections=connections), state_dir=state_dir) as dl:
        result = await asyncio.wait_for(dl.download(origin.url("t.bin"), tmp_path / "t.bin"), 30)
    assert (tmp_path / "t.bin").read_bytes() == data
    assert result.sha256 == sha(data)
    assert time.monotonic() - started < 15
    # Only the bytes delivered by the broken response's tail can come twice.
    assert origin.bytes_served("t.bin") <= len(data) + 8 * MiB


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retryable_statuses_on_the_probe(
    origin: Origin, tmp_path: Path, state_dir: Path, status: int
) -> None:
    data = blob(100 * KiB, seed=2)
    origin.add_file("s.bin", data)
    origin.plan("s.bin", [Fault(status=status), Fault(status=status)])
    async with Downloader(config(), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("s.bin"), tmp_path / "s.bin")
    assert (tmp_path / "s.bin").read_bytes() == data
    assert [r.status for r in origin.requests_for("s.bin")] == [status, status, 206]
    assert result.attempts == 3


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retryable_statuses_on_a_segment(
    origin: Origin, tmp_path: Path, state_dir: Path, status: int
) -> None:
    data = blob(24 * MiB, seed=3)
    origin.add_file("g.bin", data)
    origin.plan("g.bin", [Fault(), Fault(status=status), Fault(status=status)])
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("g.bin"), tmp_path / "g.bin")
    assert (tmp_path / "g.bin").read_bytes() == data
    assert result.sha256 == sha(data)
    # Work stealing may fetch the tail of a segment that was already on its way (a few MiB).
    assert origin.bytes_served("g.bin") <= len(data) + 4 * MiB
    assert [r.status for r in origin.requests_for("g.bin")].count(status) == 2


async def test_retry_after_is_honoured_on_the_probe(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(1000, seed=4)
    origin.add_file("ra.bin", data)
    origin.plan("ra.bin", [Fault(status=503, headers={"Retry-After": "1"})])
    async with Downloader(config(), state_dir=state_dir) as dl:
        task = asyncio.create_task(dl.download(origin.url("ra.bin"), tmp_path / "ra.bin"))
        await origin.wait_requests_async("ra.bin", 1, timeout=10)
        first = time.monotonic()
        await origin.wait_requests_async("ra.bin", 2, timeout=10)
        gap = time.monotonic() - first
        await asyncio.wait_for(task, 10)
    assert gap >= 0.8  # the backoff alone would be ~0.01 s
    assert (tmp_path / "ra.bin").read_bytes() == data


async def test_retry_after_is_honoured_on_a_segment(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(4 * MiB, seed=5)
    origin.add_file("rs.bin", data)
    # The probe breaks after 1 MiB; the resuming request is told to come back in a second.
    retry_later = Fault(status=429, headers={"Retry-After": "1"})
    origin.plan("rs.bin", [Fault(drop_after=MiB), retry_later])
    async with Downloader(config(connections=1), state_dir=state_dir) as dl:
        task = asyncio.create_task(dl.download(origin.url("rs.bin"), tmp_path / "rs.bin"))
        await origin.wait_requests_async("rs.bin", 2, timeout=10)
        limited = time.monotonic()
        await origin.wait_requests_async("rs.bin", 3, timeout=10)
        gap = time.monotonic() - limited
        await asyncio.wait_for(task, 10)
    assert gap >= 0.8
    assert [r.status for r in origin.requests_for("rs.bin")] == [206, 429, 206]
    (_, first), (resumed, end) = origin.ranges_served("rs.bin")
    assert first == MiB and 0 < resumed <= MiB and end == len(data)
    assert (tmp_path / "rs.bin").read_bytes() == data


async def test_retry_after_as_an_http_date(origin: Origin, tmp_path: Path, state_dir: Path) -> None:
    from email.utils import formatdate

    data = blob(1000, seed=6)
    origin.add_file("rd.bin", data)
    when = formatdate(time.time() + 2, usegmt=True)
    origin.plan("rd.bin", [Fault(status=503, headers={"Retry-After": when})])
    started = time.monotonic()
    async with Downloader(config(), state_dir=state_dir) as dl:
        await dl.download(origin.url("rd.bin"), tmp_path / "rd.bin")
    # The date has one-second resolution: at least ~1 s of the 2 remain.
    assert time.monotonic() - started >= 0.9


# ---------------------------------------------------------------------- giving up


@pytest.mark.parametrize(
    ("status", "category"),
    [(400, "client_error"), (401, "auth"), (403, "auth"), (404, "not_found"), (410, "not_found")],
)
async def test_permanent_statuses_fail_at_once(
    origin: Origin, tmp_path: Path, state_dir: Path, status: int, category: str
) -> None:
    origin.add_file("p.bin", b"x" * 1000)
    origin.set_default("p.bin", Fault(status=status))
    dest = tmp_path / "out" / "p.bin"
    async with Downloader(config(retries=5), state_dir=state_dir) as dl:
        with pytest.raises(HTTPStatusError) as info:
            await dl.download(origin.url("p.bin"), dest)
    err = info.value
    assert err.category == category
    assert not err.retryable
    assert str(status) in err.message and "127.0.0.1" in err.message
    assert err.hint
    assert len(origin.requests_for("p.bin")) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_errors_say_how_to_pass_credentials(
    origin: Origin, tmp_path: Path, state_dir: Path, status: int
) -> None:
    origin.add_file("a.bin", b"x")
    origin.set_default("a.bin", Fault(status=status))
    async with Downloader(config(), state_dir=state_dir) as dl:
        with pytest.raises(ModelhaulError) as info:
            await dl.download(origin.url("a.bin"), tmp_path / "a.bin")
    assert info.value.category == "auth"
    # The library's words name its parameter; the CLI words the same remedy with its flag.
    assert "headers" in info.value.hint and "HF_TOKEN" in info.value.hint
    assert "-H" in info.value.hint_in(CLI_WORDS)
    assert info.value.to_dict()["category"] == "auth"


async def test_a_permanent_status_on_a_segment_fails_the_download(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(24 * MiB, seed=7)
    origin.add_file("ps.bin", data)
    origin.plan("ps.bin", [Fault(rate_bytes_per_s=8 * MiB), Fault(status=404)])
    async with Downloader(config(connections=2), state_dir=state_dir) as dl:
        with pytest.raises(ModelhaulError) as info:
            await asyncio.wait_for(dl.download(origin.url("ps.bin"), tmp_path / "ps.bin"), 20)
    assert info.value.category == "not_found"
    assert not (tmp_path / "ps.bin").exists()
    assert len(origin.requests_for("ps.bin")) == 2


@pytest.mark.parametrize(("status", "category"), [(503, "server_error"), (429, "rate_limited")])
async def test_retries_3_means_exactly_4_attempts(
    origin: Origin, tmp_path: Path, state_dir: Path, status: int, category: str
) -> None:
    origin.add_file("d.bin", b"x" * 1000)
    origin.set_default("d.bin", Fault(status=status))
    async with Downloader(config(retries=3), state_dir=state_dir) as dl:
        with pytest.raises(RetriesExhausted) as info:
            await dl.download(origin.url("d.bin"), tmp_path / "d.bin")
    err = info.value
    assert len(origin.requests_for("d.bin")) == 4
    assert err.category == category
    assert len(err.attempts) == 4
    assert "4 attempts" in err.message
    assert err.hint
    assert not (tmp_path / "d.bin").exists()


@contextlib.contextmanager
def slamming_port() -> Iterator[tuple[str, list[int]]]:
    """A port that accepts each connection and closes it at once; yields (url, [accepts])."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    accepts = [0]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepts[0] += 1
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/f.bin", accepts
    finally:
        stop.set()
        thread.join(5)
        listener.close()


async def test_retries_3_against_a_dead_server_is_4_connections(
    tmp_path: Path, state_dir: Path
) -> None:
    with slamming_port() as (url, accepts):
        async with Downloader(config(retries=3), state_dir=state_dir) as dl:
            with pytest.raises(RetriesExhausted) as info:
                await asyncio.wait_for(dl.download(url, tmp_path / "f.bin"), 20)
        assert accepts[0] == 4
    assert info.value.category == "network"
    assert len(info.value.attempts) == 4


async def test_a_refused_connection_is_a_network_error(tmp_path: Path, state_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with Downloader(config(retries=1), state_dir=state_dir) as dl:
        with pytest.raises(ModelhaulError) as info:
            await asyncio.wait_for(dl.download(f"http://127.0.0.1:{port}/x", tmp_path / "x"), 20)
    assert info.value.category == "network"
    assert info.value.hint
    assert not (tmp_path / "x").exists()


async def test_attempts_that_make_progress_do_not_spend_the_budget(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(7 * MiB, seed=8)
    origin.add_file("pr.bin", data)
    step = MiB
    origin.plan("pr.bin", [Fault(drop_after=step)] * 6)
    async with Downloader(config(retries=2, connections=1), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("pr.bin"), tmp_path / "pr.bin")
    assert (tmp_path / "pr.bin").read_bytes() == data
    assert result.attempts == 7
    served = origin.ranges_served("pr.bin")
    assert [end - start for start, end in served[:6]] == [step] * 6
    # Each attempt resumed where the last one got to (less what a reset lost in buffers).
    for (prev_start, prev_end), (start, _) in itertools.pairwise(served):
        assert prev_start < start <= prev_end


async def test_consecutive_attempts_without_progress_spend_the_budget(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(4 * MiB, seed=9)
    origin.add_file("np.bin", data)
    origin.plan("np.bin", [Fault(drop_after=MiB), *[Fault(drop_after=0)] * 5])
    dest = tmp_path / "np.bin"
    async with Downloader(config(retries=2, connections=1), state_dir=state_dir) as dl:
        with pytest.raises(RetriesExhausted) as info:
            await dl.download(origin.url("np.bin"), dest)
    # The probe made progress; then three attempts in a row gained nothing.
    assert len(origin.requests_for("np.bin")) == 4
    assert info.value.category == "network"
    assert not dest.exists()
    assert (tmp_path / "np.bin.modelhaul.journal").exists()


async def test_a_stall_that_never_ends_is_a_timeout(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    origin.add_file("st.bin", blob(MiB, seed=10))
    origin.set_default("st.bin", Fault(stall_after=0))
    started = time.monotonic()
    async with Downloader(config(retries=1, stall_s=0.3, connections=1), state_dir=state_dir) as dl:
        with pytest.raises(ModelhaulError) as info:
            await asyncio.wait_for(dl.download(origin.url("st.bin"), tmp_path / "st.bin"), 20)
    assert info.value.category == "timeout"
    assert time.monotonic() - started < 10
    assert len(origin.requests_for("st.bin")) == 2


async def test_an_expired_redirect_target_is_resolved_again(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(24 * MiB, seed=11)
    origin.add_file("blob.bin", data)
    origin.add_redirect("resolve", origin.url("blob.bin", alt=True))
    # The presigned target starts refusing after the probe.
    origin.plan("blob.bin", [Fault(), Fault(status=403)])
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("resolve"), tmp_path / "m.bin")
    assert (tmp_path / "m.bin").read_bytes() == data
    assert result.sha256 == sha(data)
    assert len(origin.requests_for("resolve")) >= 2


# ---------------------------------------------------------------------- origins without ranges


@pytest.mark.parametrize(
    "fault", [Fault(drop_after=MiB), Fault(truncate_after=MiB), Fault(stall_after=MiB)]
)
async def test_without_ranges_a_broken_transfer_starts_over(
    origin: Origin, tmp_path: Path, state_dir: Path, fault: Fault
) -> None:
    data = blob(4 * MiB, seed=12)
    origin.add_file("nr.bin", data, accept_ranges=False)
    origin.plan("nr.bin", [fault])
    async with Downloader(config(stall_s=0.5), state_dir=state_dir) as dl:
        result = await asyncio.wait_for(dl.download(origin.url("nr.bin"), tmp_path / "nr.bin"), 20)
    assert (tmp_path / "nr.bin").read_bytes() == data
    assert result.sha256 == sha(data)
    assert origin.ranges_served("nr.bin") == [(0, MiB), (0, len(data))]


@pytest.mark.parametrize(
    ("fault", "category"), [(Fault(drop_after=MiB), "network"), (Fault(stall_after=0), "timeout")]
)
async def test_without_ranges_giving_up_is_bounded(
    origin: Origin, tmp_path: Path, state_dir: Path, fault: Fault, category: str
) -> None:
    origin.add_file("nr.bin", blob(4 * MiB, seed=13), accept_ranges=False)
    origin.set_default("nr.bin", fault)
    dest = tmp_path / "nr.bin"
    async with Downloader(config(stall_s=0.3), state_dir=state_dir) as dl:
        with pytest.raises(RetriesExhausted) as info:
            await asyncio.wait_for(dl.download(origin.url("nr.bin"), dest), 30)
    assert info.value.category == category
    # RetryPolicy.max_restarts=3: the first pass and three fresh starts.
    assert len(origin.requests_for("nr.bin")) == 4
    assert not dest.exists()


@pytest.mark.parametrize("status", [202, 204, 300, 302])
async def test_a_success_or_redirect_without_the_file_is_an_error(
    origin: Origin, tmp_path: Path, state_dir: Path, status: int
) -> None:
    # A redirect without Location, or a 2xx that is not 200/206, carries no file.
    origin.add_file("n.bin", blob(1000, seed=14))
    origin.set_default("n.bin", Fault(status=status))
    dest = tmp_path / "n.bin"
    async with Downloader(config(), state_dir=state_dir) as dl:
        with pytest.raises(HTTPStatusError) as info:
            await dl.download(origin.url("n.bin"), dest)
    assert info.value.status == status
    assert info.value.category == "client_error"
    assert len(origin.requests_for("n.bin")) == 1
    assert not dest.exists()
