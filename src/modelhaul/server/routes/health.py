"""/api/health (needs no token), /api/state, and the global speed limit at /api/limit."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ...policy.units import parse_rate
from ..schemas import ERROR_RESPONSES, Health, Limit, SetLimit
from .deps import PolicyDep, ServiceDep, TrustedDep

router = APIRouter()


@router.get("/api/health", response_model=Health, tags=["service"])
async def health(request: Request, policy: PolicyDep, local_paths: TrustedDep) -> dict[str, Any]:
    """Whether a modelhaul service answers here; needs no token."""
    return {
        "service": "modelhaul",
        "version": request.app.version,
        "token_required": policy.token_required,
        "local_paths": local_paths,
    }


@router.get("/api/state", tags=["service"])
async def state(service: ServiceDep) -> dict[str, Any]:
    """Everything at once: what a live event stream starts with."""
    return service.snapshot()


@router.get("/api/limit", response_model=Limit, tags=["downloads"])
async def get_limit(service: ServiceDep) -> dict[str, Any]:
    return service.limit_view()


@router.put("/api/limit", response_model=Limit, responses=ERROR_RESPONSES, tags=["downloads"])
async def set_limit(body: SetLimit, service: ServiceDep) -> dict[str, Any]:
    """Set the global speed limit (applies to running downloads within a second)."""
    return service.set_limit(parse_rate(body.rate))
