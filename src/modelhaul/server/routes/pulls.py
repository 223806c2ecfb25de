"""/api/pulls: queue a model pull into the store."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from ..schemas import ERROR_RESPONSES, Download, PullModel
from .deps import ServiceDep, TrustedDep

router = APIRouter()


@router.post(
    "/api/pulls",
    response_model=Download,
    status_code=201,
    responses=ERROR_RESPONSES,
    tags=["downloads"],
)
async def pull_model(
    body: PullModel, response: Response, service: ServiceDep, local: TrustedDep
) -> dict[str, Any]:
    """Queue a model pull into the store (only missing or bad files are fetched)."""
    view, created = service.add_model(
        source=body.source,
        manifest=body.manifest,
        include=body.include,
        exclude=body.exclude,
        priority=body.priority,
        paused=body.paused,
        local=local,
    )
    response.status_code = 201 if created else 200
    return view
