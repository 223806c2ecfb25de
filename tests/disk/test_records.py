"""Completion records: written in place without a truncate unless the old one was longer, so a
record rewritten shorter must still read back as the new one, and a touched file as none."""

from __future__ import annotations

import os
from pathlib import Path

from modelhaul.disk.records import Completed, CompletionRecords

URL = "http://127.0.0.1:9/model.bin"


def test_a_stored_record_reads_back_while_the_file_is_untouched(tmp_path: Path) -> None:
    records = CompletionRecords(tmp_path / "state" / "done")
    dest = tmp_path / "model.bin"
    dest.write_bytes(b"x" * 10)
    part = tmp_path / "model.bin.modelhaul.part"

    records.store(URL, part, dest, size=10, sha256="a" * 64, etag='"e1"')

    assert records.lookup(URL, part) == Completed(dest, 10, "a" * 64, '"e1"')
    assert records.lookup(URL + "?other", part) is None


def test_a_record_rewritten_shorter_reads_back_as_the_new_one(tmp_path: Path) -> None:
    records = CompletionRecords(tmp_path / "done")
    dest = tmp_path / "model.bin"
    dest.write_bytes(b"x" * 10)
    part = tmp_path / "model.bin.modelhaul.part"
    records.store(URL, part, dest, size=10, sha256="a" * 64, etag='"' + "e" * 200 + '"')

    records.store(URL, part, dest, size=10, sha256="b" * 64, etag=None)

    assert records.lookup(URL, part) == Completed(dest, 10, "b" * 64, None)


def test_a_file_changed_since_its_record_is_not_complete(tmp_path: Path) -> None:
    records = CompletionRecords(tmp_path / "done")
    dest = tmp_path / "model.bin"
    dest.write_bytes(b"x" * 10)
    part = tmp_path / "model.bin.modelhaul.part"
    records.store(URL, part, dest, size=10, sha256="a" * 64, etag=None)

    st = dest.stat()
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    assert records.lookup(URL, part) is None
