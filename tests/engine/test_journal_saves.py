"""Journal saves run off the event loop: a rename that waits on the file system's commit
(0.1-0.2 s on a busy ext4 disk) must not stop every other transfer of the process."""

from __future__ import annotations

import asyncio
import errno
import threading
from pathlib import Path

import pytest

from helpers import blob, sha
from helpers import download_config as config
from modelhaul.config import MiB
from modelhaul.disk.journal import Journal
from modelhaul.engine.downloader import Downloader
from modelhaul.errors import PermissionDenied
from origin import Fault, Origin


async def test_a_slow_journal_save_does_not_hold_up_the_download(
    origin: Origin, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = blob(24 * MiB, seed=11)
    origin.add_file("s.bin", data)
    origin.set_default("s.bin", Fault(rate_bytes_per_s=8 * MiB))
    blocked, release = threading.Event(), threading.Event()
    released: list[bool] = []
    real_write = Journal.write

    def slow_write(self: Journal, raw: bytes) -> None:
        if not blocked.is_set():
            blocked.set()
            # On the loop, this wait would stop the download and the test alike: it would
            # end by its timeout, not by the test's release.
            released.append(release.wait(timeout=10))
        real_write(self, raw)

    monkeypatch.setattr(Journal, "write", slow_write)
    dest = tmp_path / "s.bin"
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        task = asyncio.create_task(dl.download(origin.url("s.bin"), dest))
        assert await asyncio.to_thread(blocked.wait, 10)
        at = origin.bytes_served("s.bin")
        await origin.wait_bytes_async("s.bin", at + 4 * MiB, timeout=10)
        release.set()
        result = await task
    assert released == [True]
    assert dest.read_bytes() == data and result.sha256 == sha(data)
    # The journal written last is removed after the rename, not brought back by a late save.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "s.bin"]


async def test_a_journal_that_cannot_be_written_fails_the_download(
    origin: Origin, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = blob(12 * MiB, seed=12)
    origin.add_file("p.bin", data)

    def refused(self: Journal, raw: bytes) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(self.path))

    monkeypatch.setattr(Journal, "write", refused)
    dest = tmp_path / "p.bin"
    async with Downloader(config(connections=4), state_dir=state_dir) as dl:
        with pytest.raises(PermissionDenied, match=r"cannot write .*p\.bin"):
            await dl.download(origin.url("p.bin"), dest)
    # Not published unrecorded: a file the journal could not follow is not called done.
    assert not dest.exists()
