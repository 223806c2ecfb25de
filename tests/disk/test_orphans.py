"""Private partial files (one process's small download) never outlive a killed process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from helpers import blob, sha
from modelhaul.disk.partials import hold_private, private_part, sweep_orphans
from modelhaul.engine.downloader import Downloader
from origin import Origin

_HOLD = """
import os, sys, time
from pathlib import Path
from modelhaul.disk.partials import hold_private, private_part
p = private_part(Path(sys.argv[1]))
fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
hold_private(fd)
os.write(fd, b"x" * 1000)
print(p, flush=True)
time.sleep(60)
"""


def test_a_file_its_owner_holds_is_left_and_a_dead_owners_file_goes(tmp_path: Path) -> None:
    part = tmp_path / "config.json.modelhaul.part"
    mine = private_part(part)
    fd = os.open(mine, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    hold_private(fd)
    os.write(fd, b"y" * 10)

    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(part)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        theirs = Path(proc.stdout.readline().strip())
        assert theirs.exists() and theirs != mine
        assert sweep_orphans(tmp_path) == 0  # both owners alive
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    unrelated = tmp_path / "other.bin.modelhaul.part"  # a shared partial file: resumable
    unrelated.write_bytes(b"z")

    assert sweep_orphans(tmp_path) == 1
    assert not theirs.exists()
    assert mine.exists() and unrelated.exists()
    os.close(fd)


def test_an_owner_whose_new_file_was_swept_before_its_lock_knows(tmp_path: Path) -> None:
    # A process killed at once leaves an empty file: a sweep takes it. The same sweep may
    # meet a live owner's new file before its lock; that owner must see the loss.
    empty = private_part(tmp_path / "a.bin.modelhaul.part")
    fd = os.open(empty, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        assert sweep_orphans(tmp_path) == 1
        assert not empty.exists()
        assert hold_private(fd) is False
    finally:
        os.close(fd)


def test_a_download_clears_what_a_killed_download_left_in_its_folder(
    origin: Origin, tmp_path: Path, isolated_home: Path
) -> None:
    data = blob(5_000, seed=11)
    origin.add_file("config.json", data)
    out = tmp_path / "out"
    out.mkdir()
    orphan = private_part(out / "config.json.modelhaul.part")
    orphan.write_bytes(b"half of it")  # as a process killed mid-download leaves it

    async def go() -> None:
        async with Downloader(state_dir=tmp_path / "state") as dl:
            await dl.download(origin.url("config.json"), out / "config.json", sha256=sha(data))

    asyncio.run(asyncio.wait_for(go(), 30))
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    assert (out / "config.json").read_bytes() == data
