"""What a route needs from the app it runs in: the service and the access policy, set on
``app.state`` by ``create_app``, so the routers are module-level values shared by every app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..security import AccessPolicy
from ..service import Service


# Coroutines, not plain functions: FastAPI would run a plain dependency in a worker thread.
async def service_of(request: Request) -> Service:
    """The service behind the app that received ``request``."""
    service: Service = request.app.state.service
    return service


async def policy_of(request: Request) -> AccessPolicy:
    """The access policy of the app that received ``request``."""
    policy: AccessPolicy = request.app.state.policy
    return policy


async def trusted(request: Request) -> bool:
    """Whether this caller may name absolute paths (see ``AccessPolicy.trusts_paths_of``)."""
    policy: AccessPolicy = request.app.state.policy
    return policy.trusts_paths_of(request.client, request.scope.get("server"))


ServiceDep = Annotated[Service, Depends(service_of)]
PolicyDep = Annotated[AccessPolicy, Depends(policy_of)]
TrustedDep = Annotated[bool, Depends(trusted)]
