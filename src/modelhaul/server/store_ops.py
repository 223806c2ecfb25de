"""The service's store operations: scan (``ls``), pin, remove and gc through the store's
``Inventory``, in the one thread that owns its SQLite connection; subscribers hear of changes.

``Service`` (service.py) holds one and tells its subscribers what changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import InvalidInput
from ..policy.validate import REPO_TYPES, check_repo_id
from ..store.inventory import GcResult, Inventory

T = TypeVar("T")


class StoreOperations:
    """The store's models, sizes and free space, and the changes clients ask for.

    Every method runs on the serving loop; the inventory's work runs in one dedicated thread,
    because it walks directories and its SQLite connection belongs to the thread that opened it.
    ``on_change`` hears of every new view (``refresh``).
    """

    def __init__(self, inventory: Inventory, on_change: Callable[[dict[str, Any]], None]) -> None:
        self._inventory = inventory
        self._on_change = on_change
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelhaul-store")
        self._lock: asyncio.Lock | None = None
        self.view: dict[str, Any] | None = None  # the last scan's

    def start(self) -> None:
        """Bind to the running loop (the lock belongs to it)."""
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        """Close the inventory's database in its own thread, and let the thread go."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._inventory.db.close)
        self._pool.shutdown(wait=False)

    async def _in_store_thread(self, fn: Callable[[Inventory], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, self._inventory)

    async def refresh(self) -> dict[str, Any]:
        """Scan the store; tell ``on_change`` if anything changed."""
        assert self._lock is not None
        async with self._lock:
            view = await self._in_store_thread(_store_view)
        if view != self.view:
            self.view = view
            self._on_change(view)
        return view

    async def set_pinned(self, name: str, pinned: bool, repo_type: str = "model") -> dict[str, Any]:
        _check_model_ref(name, repo_type)
        await self._in_store_thread(lambda inv: inv.set_pinned(name, pinned, repo_type))
        view = await self.refresh()
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
        await self.refresh()
        return {"name": name, "repo_type": repo_type, "revision": revision, "freed": freed}

    async def gc(
        self, max_size: int | None, *, dry_run: bool, partial_age_s: float, keep: list[str]
    ) -> dict[str, Any]:
        """Evict least recently used unpinned models to fit ``max_size``, never those in
        ``keep``; drop partial downloads untouched for ``partial_age_s``."""

        def run(inv: Inventory) -> GcResult:
            return inv.gc(max_size, dry_run=dry_run, partial_age_s=partial_age_s, keep=keep)

        result = await self._in_store_thread(run)
        await self.refresh()
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
