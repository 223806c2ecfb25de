"""A file that came through peers says so in the human output, as --json does per file."""

from __future__ import annotations

import pytest

from modelhaul.cli.render import PlainRenderer, sources_note

MiB = 1024 * 1024


def _record(**extra: object) -> dict[str, object]:
    return {"status": "completed", "path": "/c/model.safetensors", "size": 96 * MiB} | {
        "sha256": "ab" * 32,
        **extra,
    }


def test_a_file_without_peers_says_nothing_more() -> None:
    assert sources_note(_record()) == ""
    assert sources_note(_record(bytes_from_peers=0, bytes_from_upstream=96 * MiB)) == ""


def test_peer_bytes_and_dropped_peers_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    record = _record(
        bytes_from_peers=64 * MiB,
        bytes_from_upstream=32 * MiB,
        dropped_peers=[{"peer": "http://127.0.0.3:8080", "reason": "lied", "detail": "x"}],
    )
    PlainRenderer().file_done("model.safetensors", record)
    line = capsys.readouterr().err
    assert "64.0 MiB from peers, 32.0 MiB from upstream" in line, line
    assert "dropped http://127.0.0.3:8080: lied" in line, line
