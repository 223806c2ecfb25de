"""The store's state database: a missing or corrupt file is rebuilt, never fatal."""

from __future__ import annotations

from pathlib import Path

from modelhaul.store.statedb import StateDB


def test_facts_round_trip(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.sqlite")
    db.touch("model", "org/a", when=100.0)
    db.set_pinned("model", "org/a", True)
    db.set_corrupt("model", "org/b", True)
    facts = db.facts()
    assert facts[("model", "org/a")].pinned and facts[("model", "org/a")].last_used == 100.0
    assert facts[("model", "org/b")].corrupt
    db.forget("model", "org/a")
    assert ("model", "org/a") not in db.facts()
    db.close()


def test_a_corrupt_database_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    db = StateDB(path)
    assert db.facts() == {}  # rebuilt empty, no error
    db.touch("model", "org/a")
    assert ("model", "org/a") in db.facts()
    db.close()
    kept = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert kept and kept[0].startswith("s.sqlite.corrupt-")  # the bad file kept for a look


def test_a_missing_directory_is_created(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "deep" / "er" / "s.sqlite")
    db.set_pinned("dataset", "org/d", True)
    assert db.get("dataset", "org/d").pinned
    db.close()
