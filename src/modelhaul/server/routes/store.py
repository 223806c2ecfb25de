"""/api/models: the models in the store, pin and unpin, remove, and gc."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ...policy.units import parse_size
from ..schemas import ERROR_RESPONSES, Gc, ModelRef, RemoveModel, Store
from .deps import ServiceDep

router = APIRouter()


@router.get("/api/models", response_model=Store, tags=["store"])
async def list_models(service: ServiceDep) -> dict[str, Any]:
    """The models in the store with sizes and status, and the disk's free space."""
    return await service.refresh_store()


@router.post("/api/models/pin", responses=ERROR_RESPONSES, tags=["store"])
async def pin(body: ModelRef, service: ServiceDep) -> dict[str, Any]:
    """Never evict this model in gc."""
    return await service.store.set_pinned(body.name, True, body.repo_type)


@router.post("/api/models/unpin", responses=ERROR_RESPONSES, tags=["store"])
async def unpin(body: ModelRef, service: ServiceDep) -> dict[str, Any]:
    return await service.store.set_pinned(body.name, False, body.repo_type)


@router.post("/api/models/remove", responses=ERROR_RESPONSES, tags=["store"])
async def remove_model(body: RemoveModel, service: ServiceDep) -> dict[str, Any]:
    """Remove a model, or one revision, with the blobs nothing else uses."""
    return await service.store.remove_model(
        body.name, revision=body.revision, repo_type=body.repo_type, force=body.force
    )


@router.post("/api/models/gc", responses=ERROR_RESPONSES, tags=["store"])
async def gc(body: Gc, service: ServiceDep) -> dict[str, Any]:
    """Evict least recently used unpinned models until the store fits max_size; drop
    partial downloads untouched for partial_age_s."""
    max_size = None if body.max_size is None else parse_size(body.max_size, what="max_size")
    return await service.gc(max_size, dry_run=body.dry_run, partial_age_s=body.partial_age_s)
