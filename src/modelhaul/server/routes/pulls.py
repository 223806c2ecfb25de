"""/api/pulls: queue a model pull into the store."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from ..schemas import PullModel
from .deps import ServiceDep, TrustedDep, queue_route, queued

router = APIRouter()


# Alike add_download in shape only: each route takes its own body and queues its own job.
@queue_route(router, "/api/pulls")
async def pull_model(
    body: PullModel, response: Response, service: ServiceDep, local: TrustedDep
) -> dict[str, Any]:
    """Queue a model pull into the store (only missing or bad files are fetched)."""
    added = service.add_model(
        source=body.source,
        manifest=body.manifest,
        include=body.include,
        exclude=body.exclude,
        priority=body.priority,
        paused=body.paused,
        local=local,
    )
    return queued(response, added)
