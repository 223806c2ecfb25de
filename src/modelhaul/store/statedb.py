"""modelhaul's own facts about stored models (pinned, last used, known corrupt), in SQLite.

The database is an index, not the truth: the cache folders are. So a missing or corrupt
database is rebuilt empty (the corrupt file is moved aside) rather than failing a command, and
models it has never seen fall back to file access times. WAL mode keeps it consistent across
crashes and lets readers run beside a writer.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    repo_type TEXT NOT NULL,
    repo_id   TEXT NOT NULL,
    pinned    INTEGER NOT NULL DEFAULT 0,
    last_used REAL,
    corrupt   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (repo_type, repo_id)
);
"""


def connect_wal(
    path: Path, schema: str, *, probe_table: str, check_same_thread: bool = True
) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with ``schema`` applied; raise sqlite3.DatabaseError if the
    file is not a usable database (the caller decides whether to move it aside)."""
    conn = sqlite3.connect(
        path, timeout=10, isolation_level=None, check_same_thread=check_same_thread
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(schema)
        conn.execute(f"SELECT count(*) FROM {probe_table}").fetchone()
    except sqlite3.DatabaseError:
        conn.close()
        raise
    return conn


def move_aside(path: Path) -> None:
    """Rename a corrupt database and its WAL files out of the way, kept for a post-mortem."""
    stamp = int(time.time())
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            with contextlib.suppress(OSError):
                p.replace(p.with_name(f"{p.name}.corrupt-{stamp}"))


@dataclass(frozen=True, slots=True)
class ModelFacts:
    pinned: bool = False
    last_used: float | None = None
    corrupt: bool = False


class StateDB:
    """A tiny key-value store per (repo_type, repo_id)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._connect()
        except sqlite3.DatabaseError as exc:
            log.warning(
                "modelhaul state database %s is unreadable (%s); rebuilding", self.path, exc
            )
            self._move_aside()
            conn = self._connect()
        self._conn = conn
        return conn

    def _connect(self) -> sqlite3.Connection:
        return connect_wal(self.path, _SCHEMA, probe_table="models")

    def _move_aside(self) -> None:
        move_aside(self.path)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _execute(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            return self._open().execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            # Corruption found mid-use: rebuild once and retry.
            log.warning("modelhaul state database error (%s); rebuilding", exc)
            self.close()
            self._move_aside()
            return self._open().execute(sql, args).fetchall()

    def facts(self) -> dict[tuple[str, str], ModelFacts]:
        rows = self._execute("SELECT repo_type, repo_id, pinned, last_used, corrupt FROM models")
        return {
            (str(t), str(r)): ModelFacts(bool(p), None if u is None else float(u), bool(c))  # type: ignore[arg-type]
            for t, r, p, u, c in rows
        }

    def get(self, repo_type: str, repo_id: str) -> ModelFacts:
        return self.facts().get((repo_type, repo_id), ModelFacts())

    def touch(self, repo_type: str, repo_id: str, when: float | None = None) -> None:
        self._execute(
            "INSERT INTO models (repo_type, repo_id, last_used) VALUES (?, ?, ?) "
            "ON CONFLICT(repo_type, repo_id) DO UPDATE SET last_used = excluded.last_used",
            (repo_type, repo_id, when if when is not None else time.time()),
        )

    def set_pinned(self, repo_type: str, repo_id: str, pinned: bool) -> None:
        self._execute(
            "INSERT INTO models (repo_type, repo_id, pinned) VALUES (?, ?, ?) "
            "ON CONFLICT(repo_type, repo_id) DO UPDATE SET pinned = excluded.pinned",
            (repo_type, repo_id, int(pinned)),
        )

    def set_corrupt(self, repo_type: str, repo_id: str, corrupt: bool) -> None:
        self._execute(
            "INSERT INTO models (repo_type, repo_id, corrupt) VALUES (?, ?, ?) "
            "ON CONFLICT(repo_type, repo_id) DO UPDATE SET corrupt = excluded.corrupt",
            (repo_type, repo_id, int(corrupt)),
        )

    def forget(self, repo_type: str, repo_id: str) -> None:
        self._execute(
            "DELETE FROM models WHERE repo_type = ? AND repo_id = ?", (repo_type, repo_id)
        )
