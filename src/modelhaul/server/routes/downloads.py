"""/api/downloads: list the downloads, queue a URL, and steer one (pause, resume, retry, cancel,
priority, forget)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Response
from fastapi.types import DecoratedCallable

from ..schemas import ERROR_RESPONSES, AddDownload, Download, DownloadId, DownloadList, SetPriority
from .deps import ServiceDep, TrustedDep, queue_route, queued

router = APIRouter()


def _steer(action: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """The route of one steering action on a download, answered with the download's view.

    The actions below repeat one shape on purpose: each is its own route function, whose name
    and docstring are its operation and description in /openapi.json.
    """
    return router.post(
        f"/api/downloads/{{download_id}}/{action}",
        response_model=Download,
        responses=ERROR_RESPONSES,
        tags=["downloads"],
    )


@router.get("/api/downloads", response_model=DownloadList, tags=["downloads"])
async def list_downloads(service: ServiceDep) -> dict[str, Any]:
    return {"downloads": service.downloads()}


@queue_route(router, "/api/downloads")
async def add_download(
    body: AddDownload, response: Response, service: ServiceDep, local: TrustedDep
) -> dict[str, Any]:
    """Queue a URL; the same URL and place still queued returns that download (200)."""
    added = service.add_url(
        body.url,
        out=body.out,
        folder=body.dir,
        sha256=body.sha256,
        priority=body.priority,
        paused=body.paused,
        local=local,
    )
    return queued(response, added)


@router.get(
    "/api/downloads/{download_id}",
    response_model=Download,
    responses=ERROR_RESPONSES,
    tags=["downloads"],
)
async def get_download(download_id: DownloadId, service: ServiceDep) -> dict[str, Any]:
    return service.download(download_id)


# One function a route, not a loop over a table: FastAPI takes each docstring as the
# route's OpenAPI description, and each calls its own service method.
@_steer("pause")
async def pause(download_id: DownloadId, service: ServiceDep) -> dict[str, Any]:
    """Stop fetching, keep the partial data."""
    return service.pause(download_id)


@_steer("resume")
async def resume(download_id: DownloadId, service: ServiceDep) -> dict[str, Any]:
    """Resume a paused download, or retry a failed one."""
    return service.resume(download_id)


@_steer("retry")
async def retry(download_id: DownloadId, service: ServiceDep) -> dict[str, Any]:
    """Run a failed download again (same source and destination); 409 if it has not failed."""
    return service.retry(download_id)


@_steer("cancel")
async def cancel(download_id: DownloadId, service: ServiceDep) -> dict[str, Any]:
    """Stop for good and delete the partial data; answers once that is done (within
    seconds: a transfer still winding down after that shows its state of the moment)."""
    return await service.cancel(download_id)


@router.put(
    "/api/downloads/{download_id}/priority",
    response_model=Download,
    responses=ERROR_RESPONSES,
    tags=["downloads"],
)
async def set_priority(
    download_id: DownloadId, body: SetPriority, service: ServiceDep
) -> dict[str, Any]:
    """Higher runs first; a started file goes before a new one of the same priority."""
    return service.set_priority(download_id, body.priority)


@router.delete(
    "/api/downloads/{download_id}", status_code=204, responses=ERROR_RESPONSES, tags=["downloads"]
)
async def forget(download_id: DownloadId, service: ServiceDep) -> Response:
    """Remove a finished download from the list (its file stays)."""
    service.forget(download_id)
    return Response(status_code=204)
