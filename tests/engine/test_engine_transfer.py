"""Engine tests, the happy path against a real origin: probe, redirects, segments, work
stealing, naming, hashing and the atomic publish.

Every test downloads from tests/support/origin.py over real sockets and asserts on what lands on disk,
what the origin saw and served, and the Result; nothing inside the engine is patched.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from helpers import blob, sha
from helpers import download_config as config
from modelhaul.config import MiB
from modelhaul.engine.downloader import Downloader
from modelhaul.errors import IntegrityError
from modelhaul.events import Progress
from modelhaul.policy.ranges import RangeSet
from origin import Fault, Origin

KiB = 1024
# Work stealing may fetch again the tail of a segment that was already on its way.
STEAL_SLACK = 4 * MiB


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------- probe and redirects


async def test_probe_is_a_ranged_get_and_never_a_head(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(3 * MiB)
    origin.add_file("m.bin", data)
    async with Downloader(config(), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("m.bin"), tmp_path / "m.bin")
    requests = origin.requests_for("m.bin")
    assert [r.method for r in requests] == ["GET"]
    assert requests[0].range_header is not None
    assert requests[0].range_header.startswith("bytes=0-")
    assert (tmp_path / "m.bin").read_bytes() == data
    assert result.sha256 == sha(data)
    assert result.size == len(data)
    assert result.bytes_transferred == len(data)


async def test_redirect_to_another_host_is_followed_and_segments_go_there(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(24 * MiB, seed=1)
    origin.add_file("real.bin", data)
    origin.add_redirect("short", origin.url("real.bin", alt=True))
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("short"), tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data
    assert result.sha256 == sha(data)
    # The redirect is resolved once; every range request goes straight to the target.
    assert len(origin.requests_for("short")) == 1
    targets = origin.requests_for("real.bin")
    assert len(targets) >= 2
    assert {r.local_addr for r in targets} == {"127.0.0.2"}


async def test_redirect_chain_on_the_same_host(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(100 * KiB, seed=2)
    origin.add_file("final.bin", data)
    origin.add_redirect("hop2", "/final.bin", status=307)
    origin.add_redirect("hop1", "/hop2", status=301)
    async with Downloader(config(), state_dir=state_dir) as dl:
        await dl.download(origin.url("hop1"), tmp_path / "f.bin")
    assert (tmp_path / "f.bin").read_bytes() == data


# ---------------------------------------------------------------------- segments


async def test_fixed_connections_fetch_disjoint_ranges_in_parallel(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(32 * MiB, seed=3)
    origin.add_file("big.bin", data)
    # Slow enough that all four connections are open at the same time.
    origin.set_default("big.bin", Fault(rate_bytes_per_s=16 * MiB))
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        task = asyncio.create_task(dl.download(origin.url("big.bin"), tmp_path / "big.bin"))
        await origin.wait_requests_async("big.bin", 4, timeout=20)
        in_flight = [r for r in origin.requests_for("big.bin") if not r.done]
        assert len(in_flight) == 4
        result = await asyncio.wait_for(task, 60)
    assert (tmp_path / "big.bin").read_bytes() == data
    assert result.sha256 == sha(data)
    served = sorted(origin.ranges_served("big.bin"))
    # Every request carried its own part of the file; only a steal from a connection whose
    # bytes were already on their way can bring a few twice.
    assert RangeSet(served) == RangeSet([(0, len(data))])
    assert sum(e - s for s, e in served) <= len(data) + STEAL_SLACK
    assert all(r.range_header for r in origin.requests_for("big.bin"))


async def test_one_fixed_connection_asks_for_the_whole_file_once(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(20 * MiB, seed=4)
    origin.add_file("one.bin", data)
    async with Downloader(config(connections=1), state_dir=state_dir) as dl:
        await dl.download(origin.url("one.bin"), tmp_path / "one.bin")
    requests = origin.requests_for("one.bin")
    assert [r.range_header for r in requests] == ["bytes=0-"]
    assert origin.ranges_served("one.bin") == [(0, len(data))]
    assert (tmp_path / "one.bin").read_bytes() == data


async def test_automatic_mode_uses_one_connection_for_a_small_file(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(5 * MiB, seed=5)
    origin.add_file("small.bin", data)
    async with Downloader(config(), state_dir=state_dir) as dl:
        await dl.download(origin.url("small.bin"), tmp_path / "small.bin")
    assert len(origin.requests_for("small.bin")) == 1
    assert (tmp_path / "small.bin").read_bytes() == data


async def test_automatic_mode_opens_several_connections_for_a_big_file(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(48 * MiB, seed=6)
    origin.add_file("auto.bin", data)
    origin.set_default("auto.bin", Fault(rate_bytes_per_s=16 * MiB))
    async with Downloader(config(initial_connections=4), state_dir=state_dir) as dl:
        task = asyncio.create_task(dl.download(origin.url("auto.bin"), tmp_path / "auto.bin"))
        await origin.wait_requests_async("auto.bin", 4, timeout=20)
        assert sum(not r.done for r in origin.requests_for("auto.bin")) >= 2
        await asyncio.wait_for(task, 60)
    assert (tmp_path / "auto.bin").read_bytes() == data
    assert origin.bytes_served("auto.bin") <= len(data) + STEAL_SLACK


async def test_idle_connections_steal_from_a_slow_one(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(32 * MiB, seed=7)
    origin.add_file("steal.bin", data)
    slow_rate = 256 * KiB
    # The probe is fast; the next request crawls; the rest are fast.
    origin.plan("steal.bin", [Fault(), Fault(rate_bytes_per_s=slow_rate)])
    cfg = config(connections=4, chunk_bytes=8 * MiB, min_steal_bytes=128 * KiB)
    started = time.monotonic()
    async with Downloader(cfg, state_dir=state_dir) as dl:
        result = await asyncio.wait_for(
            dl.download(origin.url("steal.bin"), tmp_path / "s.bin"), 30
        )
    elapsed = time.monotonic() - started
    assert (tmp_path / "s.bin").read_bytes() == data
    assert result.sha256 == sha(data)
    slow = origin.requests_for("steal.bin")[1]
    assert slow.fault is not None and slow.fault.rate_bytes_per_s == slow_rate
    # Its 8 MiB alone would take 32 s at that rate; the others took most of it over.
    assert slow.bytes_sent < 2 * MiB
    assert elapsed < 20
    assert origin.bytes_served("steal.bin") <= len(data) + 2 * STEAL_SLACK


# ---------------------------------------------------------------------- odd bodies and names


async def test_zero_byte_file(origin: Origin, tmp_path: Path, state_dir: Path) -> None:
    origin.add_file("empty.bin", b"")
    async with Downloader(config(), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("empty.bin"), tmp_path / "empty.bin")
    assert (tmp_path / "empty.bin").read_bytes() == b""
    assert result.size == 0
    assert result.sha256 == sha(b"")
    assert leftovers(tmp_path) == ["empty.bin", "home"]


async def test_gzip_encoded_response_is_saved_decoded(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(3 * MiB, seed=8)
    origin.add_file("z.bin", data)
    origin.set_default("z.bin", Fault(gzip=True))
    async with Downloader(config(), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("z.bin"), tmp_path / "z.bin", sha256=sha(data))
    assert (tmp_path / "z.bin").read_bytes() == data
    assert result.size == len(data)


async def test_directory_mode_names_the_file_from_content_disposition(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(10 * KiB, seed=9)
    origin.add_file(
        "download", data, content_disposition='attachment; filename="model.safetensors"'
    )
    out = tmp_path / "out"
    async with Downloader(config(), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("download"), directory=out)
    assert result.path == str(out / "model.safetensors")
    assert leftovers(out) == ["model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == data


@pytest.mark.parametrize(
    "disposition",
    [
        'attachment; filename="../../etc/passwd"',
        "attachment; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd",
        'attachment; filename="..\\\\..\\\\etc\\\\passwd"',
    ],
)
async def test_directory_mode_sanitises_a_hostile_name(
    origin: Origin, tmp_path: Path, state_dir: Path, disposition: str
) -> None:
    data = blob(1000, seed=10)
    origin.add_file("x", data, content_disposition=disposition)
    out = tmp_path / "a" / "b" / "out"
    async with Downloader(config(), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("x"), directory=out)
    assert Path(result.path).parent == out
    assert leftovers(out) == ["passwd"]
    assert (out / "passwd").read_bytes() == data
    assert not (tmp_path / "a" / "etc").exists()
    assert not (tmp_path / "etc").exists()


async def test_directory_mode_falls_back_to_the_url_name(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(1000, seed=11)
    origin.add_file("weights/model.bin", data)
    async with Downloader(config(), state_dir=state_dir) as dl:
        result = await dl.download(origin.url("weights/model.bin"), directory=tmp_path / "d")
    assert result.path == str(tmp_path / "d" / "model.bin")
    assert leftovers(tmp_path / "d") == ["model.bin"]


# ---------------------------------------------------------------------- integrity


@pytest.mark.parametrize(
    "size",
    [0, 1, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 9 * MiB + 7],
)
async def test_the_sha256_is_always_computed(
    origin: Origin, tmp_path: Path, state_dir: Path, size: int
) -> None:
    data = blob(size, seed=size)
    origin.add_file("h.bin", data)
    cfg = config(connections=3, chunk_bytes=1 * MiB, min_steal_bytes=256 * KiB)
    async with Downloader(cfg, state_dir=state_dir) as dl:
        result = await dl.download(origin.url("h.bin"), tmp_path / "h.bin")
    assert result.sha256 == sha(data)
    assert (tmp_path / "h.bin").read_bytes() == data


async def test_the_sha256_of_many_segments_out_of_order(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(40 * MiB + 12345, seed=12)
    origin.add_file("many.bin", data)
    # Small chunks over eight connections finish far out of file order.
    cfg = config(connections=8, chunk_bytes=1 * MiB + 3, min_steal_bytes=256 * KiB)
    async with Downloader(cfg, state_dir=state_dir) as dl:
        result = await dl.download(origin.url("many.bin"), tmp_path / "many.bin", sha256=sha(data))
    assert result.sha256 == sha(data)
    assert (tmp_path / "many.bin").read_bytes() == data


async def test_a_wrong_sha256_fails_and_leaves_nothing(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(6 * MiB, seed=13)
    origin.add_file("bad.bin", data)
    out = tmp_path / "out"
    wrong = sha(b"something else")
    async with Downloader(config(connections=2), state_dir=state_dir) as dl:
        with pytest.raises(IntegrityError) as info:
            await dl.download(origin.url("bad.bin"), out / "bad.bin", sha256=wrong)
    assert info.value.category == "integrity"
    assert wrong in info.value.message and sha(data) in info.value.message
    assert info.value.hint
    assert leftovers(out) == []


async def test_a_good_sha256_in_upper_case_is_accepted(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(1000, seed=14)
    origin.add_file("u.bin", data)
    async with Downloader(config(), state_dir=state_dir) as dl:
        result = await dl.download(
            origin.url("u.bin"), tmp_path / "u.bin", sha256=sha(data).upper()
        )
    assert result.sha256 == sha(data)


# ---------------------------------------------------------------------- atomic publish


async def test_the_output_path_appears_only_when_complete(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(4 * MiB, seed=15)
    origin.add_file("slow.bin", data)
    origin.set_default("slow.bin", Fault(rate_bytes_per_s=4 * MiB))
    out = tmp_path / "out"
    dest = out / "slow.bin"
    seen: list[tuple[bool, bool]] = []

    def on_progress(_: object) -> None:
        seen.append((dest.exists(), (out / "slow.bin.modelhaul.part").exists()))

    async with Downloader(config(connections=1), state_dir=state_dir) as dl:
        task = asyncio.create_task(
            dl.download(origin.url("slow.bin"), dest, on_progress=on_progress)
        )
        await origin.wait_bytes_async("slow.bin", MiB, timeout=20)
        assert not dest.exists()
        assert (out / "slow.bin.modelhaul.part").exists()
        assert (out / "slow.bin.modelhaul.journal").exists()
        await asyncio.wait_for(task, 30)
    assert seen and not any(exists for exists, _ in seen[:-1])
    assert dest.read_bytes() == data
    assert leftovers(out) == ["slow.bin"]


async def test_a_rerun_transfers_nothing(origin: Origin, tmp_path: Path, state_dir: Path) -> None:
    data = blob(2 * MiB, seed=16)
    origin.add_file("again.bin", data)
    dest = tmp_path / "again.bin"
    async with Downloader(config(), state_dir=state_dir) as dl:
        await dl.download(origin.url("again.bin"), dest, sha256=sha(data))
        before = len(origin.requests_for("again.bin"))
        again = await dl.download(origin.url("again.bin"), dest, sha256=sha(data))
        plain = await dl.download(origin.url("again.bin"), dest)
    assert len(origin.requests_for("again.bin")) == before == 1
    assert again.already_complete and plain.already_complete
    assert again.bytes_transferred == 0
    assert again.sha256 == sha(data)


async def test_a_rerun_with_sha256_and_a_fresh_state_dir_checks_the_file_only(
    origin: Origin, tmp_path: Path
) -> None:
    data = blob(2 * MiB, seed=17)
    origin.add_file("fresh.bin", data)
    dest = tmp_path / "fresh.bin"
    async with Downloader(config(), state_dir=tmp_path / "s1") as dl:
        await dl.download(origin.url("fresh.bin"), dest)
    async with Downloader(config(), state_dir=tmp_path / "s2") as dl:
        again = await dl.download(origin.url("fresh.bin"), dest, sha256=sha(data))
    assert again.already_complete
    assert len(origin.requests_for("fresh.bin")) == 1


async def test_a_changed_file_at_the_output_path_is_downloaded_again(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(100 * KiB, seed=18)
    origin.add_file("edit.bin", data)
    dest = tmp_path / "edit.bin"
    async with Downloader(config(), state_dir=state_dir) as dl:
        await dl.download(origin.url("edit.bin"), dest)
        dest.write_bytes(b"tampered")
        result = await dl.download(origin.url("edit.bin"), dest, sha256=sha(data))
    assert not result.already_complete
    assert dest.read_bytes() == data
    assert len(origin.requests_for("edit.bin")) == 2


async def test_an_unexpected_size_fails_before_the_transfer(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    data = blob(24 * MiB, seed=19)
    origin.add_file("sz.bin", data)
    out = tmp_path / "out"
    async with Downloader(config(connections=1), state_dir=state_dir) as dl:
        with pytest.raises(IntegrityError) as info:
            await dl.download(origin.url("sz.bin"), out / "sz.bin", expected_size=len(data) - 1)
        assert info.value.category == "integrity"
        assert len(origin.requests_for("sz.bin")) == 1
        assert leftovers(out) == []
        # The probe's connection was dropped, not left streaming 24 MiB into a buffer.
        await origin.wait_idle_async(timeout=10)
        assert origin.bytes_served("sz.bin") < len(data)


async def test_an_endless_body_stops_at_the_expected_size(
    origin: Origin, tmp_path: Path, state_dir: Path
) -> None:
    origin.add_file("e.bin", b"x")
    origin.set_default("e.bin", Fault(endless=True))
    out = tmp_path / "out"
    async with Downloader(config(), state_dir=state_dir) as dl:
        with pytest.raises(IntegrityError) as info:
            await asyncio.wait_for(
                dl.download(origin.url("e.bin"), out / "e.bin", expected_size=MiB), 20
            )
    assert "more than expected" in info.value.message
    assert leftovers(out) == []


# ---------------------------------------------------------------------- progress


async def test_progress_and_phases(origin: Origin, tmp_path: Path, state_dir: Path) -> None:
    data = blob(8 * MiB, seed=20)
    origin.add_file("pg.bin", data)
    origin.set_default("pg.bin", Fault(rate_bytes_per_s=16 * MiB))
    events: list[Progress] = []
    phases: list[tuple[str, int | None]] = []
    async with Downloader(config(connections=2), state_dir=state_dir) as dl:
        await dl.download(
            origin.url("pg.bin"),
            tmp_path / "pg.bin",
            on_progress=events.append,
            on_phase=lambda phase, size: phases.append((phase, size)),
        )
    assert phases == [("probed", len(data)), ("verifying", len(data))]
    assert len(events) >= 2
    done = [e.bytes_done for e in events]
    assert done == sorted(done)
    assert events[-1].bytes_done == events[-1].total == len(data)
    assert all(e.path == str(tmp_path / "pg.bin") for e in events)
