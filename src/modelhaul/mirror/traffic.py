"""What the mirror moved, per model: bytes served to clients and bytes fetched upstream, for
the web page (live, through the service's event stream) and ``GET /api/mirror``.

The served side is counted as each chunk of a response is handed on (a chunk is up to 1 MiB,
so the count costs nothing beside the read); the upstream side from the engine's progress
events of the mirror's own downloads. A change is told to the listener at most every
``TELL_EVERY_S``, so a busy mirror sends a few events a second, not one per chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sized
from typing import Any, TypeVar

from ..store.repo import RepoStore

TELL_EVERY_S = 0.25
_MAX_MODELS = 10_000

Key = tuple[str, str]  # (repo type, repo id)
_Piece = TypeVar("_Piece", bound=Sized)  # bytes, or a span of a file: counted by len()
TrafficListener = Callable[[list[dict[str, Any]]], None]


class MirrorTraffic:
    """Bytes served and fetched per model since the service started."""

    def __init__(self, on_change: TrafficListener | None = None) -> None:
        self.on_change = on_change
        self._served: dict[Key, int] = {}
        self._fetched: dict[Key, int] = {}
        self._received: dict[str, int] = {}  # the engine's bytes_received per download
        self._telling: asyncio.TimerHandle | None = None

    @staticmethod
    def key(rs: RepoStore) -> Key:
        return (rs.repo_type, rs.repo_id)

    def served(self, key: Key, n: int) -> None:
        self._served[key] = self._served.get(key, 0) + n
        self._changed()

    def fetched(self, key: Key, task_id: str, received: int) -> None:
        """A progress report of the download ``task_id`` for this model: ``received`` is what
        its run has received so far (a new run counts from zero again)."""
        before = self._received.get(task_id, 0)
        delta = received - before if received >= before else received
        self._received[task_id] = received
        if delta > 0:
            self._fetched[key] = self._fetched.get(key, 0) + delta
            self._changed()

    def forget_task(self, task_id: str) -> None:
        self._received.pop(task_id, None)

    def view(self) -> list[dict[str, Any]]:
        """Every model the mirror moved bytes of, by name."""
        keys = sorted({*self._served, *self._fetched}, key=lambda k: (k[1], k[0]))
        return [
            {
                "name": repo_id,
                "repo_type": repo_type,
                "served_bytes": self._served.get((repo_type, repo_id), 0),
                "upstream_bytes": self._fetched.get((repo_type, repo_id), 0),
            }
            for repo_type, repo_id in keys
        ]

    async def counted(self, key: Key, chunks: AsyncIterator[_Piece]) -> AsyncIterator[_Piece]:
        """``chunks``, each counted as served once handed on."""
        try:
            async for chunk in chunks:
                yield chunk
                self.served(key, len(chunk))
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    def _changed(self) -> None:
        if len(self._served) + len(self._fetched) > 2 * _MAX_MODELS:
            self._served.clear()  # a bound on memory; the page starts counting again
            self._fetched.clear()
        if self.on_change is None or self._telling is not None:
            return
        self._telling = asyncio.get_running_loop().call_later(TELL_EVERY_S, self._tell)

    def _tell(self) -> None:
        self._telling = None
        if self.on_change is not None:
            self.on_change(self.view())

    def close(self) -> None:
        if self._telling is not None:
            self._telling.cancel()
            self._telling = None


__all__ = ["MirrorTraffic", "TrafficListener"]
