"""What ``get`` shows a person: the terminal bars and the lines that end a run.

The rich renderer is driven in-process on a Console that believes it is a terminal; what a real
terminal shows at the end of a run is read from a pseudo-terminal around a real subprocess.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from conftest import modelhaul_cmd
from helpers import blob, sha
from modelhaul.cli.bars import RichRenderer
from modelhaul.cli.render import PlainRenderer
from modelhaul.events import Progress
from origin import Origin

MiB = 1024 * 1024
_ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][A-Z0-9])")


def terminal_renderer(files: int | None) -> tuple[RichRenderer, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system="standard")
    return RichRenderer(files=files, console=console), out


def shown(out: io.StringIO) -> str:
    return _ANSI.sub("", out.getvalue())


def progress(name: str, done: int, total: int, speed: float) -> Progress:
    return Progress(
        url=f"http://127.0.0.1/{name}",
        path=f"/tmp/{name}",
        bytes_done=done,
        total=total,
        speed_bytes_per_s=speed,
        eta_s=(total - done) / speed,
        connections=4,
        attempts=1,
        resumed_from=0,
        elapsed_s=1.0,
    )


def completed(name: str, size: int) -> dict[str, Any]:
    return {
        "event": "result",
        "status": "completed",
        "path": f"/tmp/{name}",
        "size": size,
        "sha256": "ab" * 32,
        "elapsed": 1.0,
        "bytes_transferred": size,
        "error": None,
    }


def failed(name: str) -> dict[str, Any]:
    return {
        "event": "result",
        "status": "failed",
        "path": None,
        "size": None,
        "sha256": None,
        "error": {"category": "not_found", "message": f"HTTP 404 for {name}"},
    }


def test_the_total_line_counts_failed_files_apart_and_in_red() -> None:
    renderer, out = terminal_renderer(files=5)
    renderer.start()
    names = [f"f{i}.bin" for i in range(5)]
    for name in names:
        renderer.progress(name, progress(name, MiB, 4 * MiB, 2 * MiB))
    for name in names[:3]:
        renderer.file_done(name, completed(name, 4 * MiB))
    for name in names[3:]:
        renderer.file_done(name, failed(name))
    renderer.stop()

    text = shown(out)
    assert "total 3/5 files, 2 failed" in text
    assert "5/5" not in text
    assert re.search(r"\x1b\[[0-9;]*31m2 failed", out.getvalue())  # in red


def test_piped_output_of_a_list_ends_with_the_same_count(capsys: Any) -> None:
    renderer = PlainRenderer()
    records = [completed("a.bin", MiB), completed("b.bin", MiB), failed("c.bin")]
    renderer.result({"event": "result", "status": "failed", "files": records})
    assert "total 2/3 files, 1 failed" in capsys.readouterr().err
    renderer.result({"event": "result", "status": "completed", "files": 3})  # a pull's count
    assert capsys.readouterr().err == ""


def test_bars_show_sizes_and_speeds_in_one_unit_family_and_label_the_eta() -> None:
    renderer, out = terminal_renderer(files=2)
    renderer.start()
    renderer.progress("a.bin", progress("a.bin", 3 * MiB, 10 * MiB, 3.5 * MiB))
    renderer.progress("b.bin", progress("b.bin", MiB, 10 * MiB, 1.5 * MiB))
    renderer.stop()

    text = shown(out)
    assert "3.0/10.0 MiB" in text
    assert "3.5 MiB/s" in text and "5.0 MiB/s" in text  # a file's and the total's
    assert "ETA 0:00:02" in text  # 7 MiB left at 3.5 MiB/s
    assert "MB/s" not in text and "MB" not in text.replace("MiB", "")


def test_a_file_whose_bytes_all_arrived_says_verifying_not_a_speed() -> None:
    # Between the last byte and the rename (hash tail, fsync) the bar must not look finished.
    renderer, out = terminal_renderer(files=1)
    renderer.start()
    renderer.progress("a.bin", progress("a.bin", 10 * MiB, 10 * MiB, 3.5 * MiB))
    renderer.verifying("a.bin")
    renderer.stop()

    last_frame = shown(out).rsplit("\r", 1)[-1]
    assert "verifying" in last_frame
    assert "MiB/s" not in last_frame

    renderer, out = terminal_renderer(files=1)
    renderer.start()
    renderer.progress("a.bin", progress("a.bin", 10 * MiB, 10 * MiB, 3.5 * MiB))
    renderer.verifying("a.bin")
    renderer.file_done("a.bin", completed("a.bin", 10 * MiB))
    renderer.stop()
    assert "verifying" not in shown(out).rsplit("\r", 1)[-1]  # done: no longer verifying


def run_on_a_terminal(*args: str, timeout_s: float = 60) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal for stdin, stdout and stderr; all it wrote, decoded."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="200")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(modelhaul_cmd(*args), stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        else:
            raise TimeoutError(f"the CLI ran longer than {timeout_s}s")
        code = proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, _ANSI.sub("", b"".join(chunks).decode(errors="replace"))


def test_a_terminal_gets_the_path_and_sha256_of_a_finished_file(
    origin: Origin, tmp_path: Path
) -> None:
    data = blob(3 * MiB, seed=70)
    origin.add_file("t.bin", data)
    out = tmp_path / "t.bin"

    code, text = run_on_a_terminal("get", origin.url("t.bin"), "-o", str(out))

    assert code == 0, text
    assert out.read_bytes() == data
    last = [line for line in text.replace("\r", "\n").splitlines() if line.strip()][-1]
    assert str(out) in last and sha(data) in last, text


def test_no_path_line_for_a_file_that_is_not_kept() -> None:
    renderer, out = terminal_renderer(files=1)
    record = completed("demo.bin", MiB) | {"path": None}  # the demo's file is removed
    renderer.result(record)
    assert shown(out) == ""
    renderer.result(completed("kept.bin", MiB))
    assert shown(out).startswith("✓ /tmp/kept.bin 1.0 MiB sha256 " + "ab" * 32)
