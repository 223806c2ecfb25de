"""What a route needs from the app it runs in: the service and the access policy, set on
``app.state`` by ``create_app``, so the routers are module-level values shared by every app;
and the one shape of a route that queues a download (a URL or a model pull)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.types import DecoratedCallable

from ..schemas import ERROR_RESPONSES, Download
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


def queue_route(router: APIRouter, path: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """The POST route at ``path`` that queues a download and answers with its view."""
    return router.post(
        path,
        response_model=Download,
        status_code=201,
        responses=ERROR_RESPONSES,
        tags=["downloads"],
    )


def queued(response: Response, added: tuple[dict[str, Any], bool]) -> dict[str, Any]:
    """The view of what was queued: 201 when it is new, 200 when the same was queued already."""
    view, created = added
    response.status_code = 201 if created else 200
    return view
