"""The service's queue on disk: one SQLite row per download, so unfinished ones resume after a
restart or a crash.

A row records what the client asked for and what the user last decided (paused or not, the
priority), plus the outcome once there is one. Progress is not stored here: the engine's journal
beside each partial file already records which bytes are held, so a resumed download fetches
only the rest. Each change is one autocommitted statement in WAL mode, so a ``kill -9`` leaves
either the old row or the new one.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..store.statedb import connect_wal, move_aside

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    request    TEXT NOT NULL,
    label      TEXT NOT NULL,
    priority   INTEGER NOT NULL DEFAULT 0,
    created    REAL NOT NULL,
    paused     INTEGER NOT NULL DEFAULT 0,
    outcome    TEXT,
    error      TEXT,
    result     TEXT,
    bytes_done INTEGER NOT NULL DEFAULT 0,
    total      INTEGER
);
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
_COLUMNS = (
    "kind",
    "request",
    "label",
    "priority",
    "created",
    "paused",
    "outcome",
    "error",
    "result",
    "bytes_done",
    "total",
)
_JSON_COLUMNS = frozenset({"request", "error", "result"})


@dataclass(slots=True)
class JobRow:
    """One queued download as stored."""

    kind: str  # "url" | "model"
    request: dict[str, Any]
    label: str
    priority: int = 0
    created: float = field(default_factory=time.time)
    paused: bool = False
    outcome: str | None = None  # completed | failed | cancelled; None while unfinished
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    bytes_done: int = 0
    total: int | None = None
    id: int | None = None


class QueueDB:
    """The jobs table and a few settings (the global speed limit)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = self._connect()
        except sqlite3.DatabaseError as exc:
            # The queue is worth less than a service that starts: keep the bad file for a
            # post-mortem and begin with an empty queue.
            log.warning("modelhaul queue database %s is unreadable (%s); starting empty", path, exc)
            self._move_aside()
            self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        # Used from the event loop thread only; check_same_thread=False lets close() run from
        # whichever thread shuts the service down.
        return connect_wal(self.path, _SCHEMA, probe_table="jobs", check_same_thread=False)

    def _move_aside(self) -> None:
        move_aside(self.path)

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------------ jobs

    def insert(self, row: JobRow) -> int:
        values = [_encode(c, getattr(row, c)) for c in _COLUMNS]
        cur = self._conn.execute(
            f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            values,
        )
        row.id = int(cur.lastrowid or 0)
        return row.id

    def update(self, job_id: int, **fields: Any) -> None:
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job columns: {sorted(unknown)}")
        if not fields:
            return
        sets = ", ".join(f"{c} = ?" for c in fields)
        values = [_encode(c, v) for c, v in fields.items()]
        self._conn.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*values, job_id])

    def delete(self, job_id: int) -> None:
        self._conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def load(self) -> list[JobRow]:
        """Every stored job, oldest first; rows that no longer parse are skipped."""
        rows = self._conn.execute(
            f"SELECT id, {', '.join(_COLUMNS)} FROM jobs ORDER BY id"
        ).fetchall()
        out = []
        for raw in rows:
            try:
                values = {c: _decode(c, v) for c, v in zip(_COLUMNS, raw[1:], strict=True)}
                out.append(JobRow(id=int(raw[0]), **values))
            except (TypeError, ValueError) as exc:
                log.warning("skipping unreadable queue row %s: %s", raw[0], exc)
        return out

    def prune_finished(self, keep: int) -> list[int]:
        """Forget all but the ``keep`` newest finished jobs; returns the ids removed."""
        ids = [
            int(r[0])
            for r in self._conn.execute(
                "SELECT id FROM jobs WHERE outcome IS NOT NULL ORDER BY id DESC LIMIT -1 OFFSET ?",
                (keep,),
            ).fetchall()
        ]
        for job_id in ids:
            self.delete(job_id)
        return ids

    # ------------------------------------------------------------------ settings

    def get_setting(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str | None) -> None:
        if value is None:
            self._conn.execute("DELETE FROM settings WHERE key = ?", (key,))
        else:
            self._conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )


def _encode(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS:
        return None if value is None else json.dumps(value, separators=(",", ":"))
    if column == "paused":
        return int(bool(value))
    return value


def _decode(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS:
        if value is None:
            return None
        data = json.loads(value)
        if not isinstance(data, dict):
            raise ValueError(f"{column} is not an object")
        return data
    if column == "paused":
        return bool(value)
    return value
