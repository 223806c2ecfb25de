"""The service's store operations: scan (``ls``), pin, remove and gc through the store's
``Inventory``, in the one thread that owns its SQLite connection; subscribers hear of changes.

``StoreOperations`` is a part of ``Service`` (service.py), which composes it with the job runner
and the event fan-out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import InvalidInput
from ..store.inventory import GcResult, Inventory
from ..store.repo import REPO_TYPES, check_repo_id
from .jobs import Job

T = TypeVar("T")


class StoreOperations:
    """The store's models, sizes and free space, and the changes clients ask for."""

    # State of the other parts (Service sets these up); EventFanout has _publish.
    _inventory: Inventory
    _store_pool: ThreadPoolExecutor
    _store_lock: asyncio.Lock | None
    _store: dict[str, Any] | None
    _jobs: dict[str, Job]
    _closing: bool

    async def _in_store_thread(self, fn: Callable[[Inventory], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store_pool, fn, self._inventory)

    async def refresh_store(self) -> dict[str, Any]:
        """Scan the store; tell subscribers if anything changed."""
        assert self._store_lock is not None
        async with self._store_lock:
            view = await self._in_store_thread(_store_view)
        if view != self._store:
            self._store = view
            if not self._closing:
                self._publish({"event": "store", "store": view})
        return view

    async def set_pinned(self, name: str, pinned: bool, repo_type: str = "model") -> dict[str, Any]:
        _check_model_ref(name, repo_type)
        await self._in_store_thread(lambda inv: inv.set_pinned(name, pinned, repo_type))
        view = await self.refresh_store()
        for m in view["models"]:
            if m["name"] == name and m["repo_type"] == repo_type:
                return dict(m)
        return {"name": name, "repo_type": repo_type, "pinned": pinned}

    async def remove_model(
        self,
        name: str,
        *,
        revision: str | None = None,
        repo_type: str = "model",
        force: bool = False,
    ) -> dict[str, Any]:
        _check_model_ref(name, repo_type)
        freed = await self._in_store_thread(
            lambda inv: inv.remove(name, revision, repo_type=repo_type, force=force)
        )
        await self.refresh_store()
        return {"name": name, "repo_type": repo_type, "revision": revision, "freed": freed}

    async def gc(
        self, max_size: int | None, *, dry_run: bool = False, partial_age_s: float = 7 * 86400
    ) -> dict[str, Any]:
        """Evict least recently used unpinned models to fit ``max_size``; never what a
        download in the queue is pulling."""
        keep = [j.label for j in self._jobs.values() if j.kind == "model" and j.outcome is None]

        def run(inv: Inventory) -> GcResult:
            return inv.gc(max_size, dry_run=dry_run, partial_age_s=partial_age_s, keep=keep)

        result = await self._in_store_thread(run)
        await self.refresh_store()
        return result.to_dict()


def _store_view(inv: Inventory) -> dict[str, Any]:
    models = inv.scan()
    return {
        "root": str(inv.root),
        "models": [m.to_dict() for m in models],
        "used": inv.total_size(models),
        "free": inv.disk_free(),
    }


def _check_model_ref(name: str, repo_type: str) -> None:
    check_repo_id(name)
    if repo_type not in REPO_TYPES:
        raise InvalidInput(f"repo_type must be one of {', '.join(REPO_TYPES)}")
