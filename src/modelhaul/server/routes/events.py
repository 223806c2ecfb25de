"""The live events: ``/ws`` (WebSocket) and ``/events`` (Server-Sent Events), each a snapshot
and then every event the service publishes, as JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.responses import StreamingResponse

from ..service import Service
from ..stream import Subscription
from .deps import ServiceDep

SSE_KEEPALIVE_S = 15.0

router = APIRouter()


@router.websocket("/ws")
async def ws(websocket: WebSocket) -> None:
    """A snapshot, then every event, one JSON text message each."""
    await websocket.accept()
    # A WebSocket route cannot take Request-based dependencies: the service from its app.
    service: Service = websocket.app.state.service
    sub = service.subscribe()
    try:
        await _pump_websocket(websocket, sub)
    finally:
        sub.close()


@router.get(
    "/events",
    tags=["service"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "the stream"}},
)
async def events(service: ServiceDep) -> StreamingResponse:
    """Server-Sent Events: a snapshot, then every event (``data:`` JSON, ``id:`` seq)."""
    sub = service.subscribe()
    return StreamingResponse(
        _sse(sub),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _pump_websocket(websocket: WebSocket, sub: Subscription) -> None:
    async def send_all() -> None:
        await websocket.send_text(_dumps(sub.snapshot))
        while (event := await sub.next()) is not None:
            await websocket.send_text(_dumps(event))
        # 1013 "try again later": the client reconnects and starts from a new snapshot.
        await websocket.close(code=1013 if sub.lagged else 1001)

    async def until_gone() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return

    sender = asyncio.create_task(send_all())
    receiver = asyncio.create_task(until_gone())
    try:
        await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, receiver):
            task.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)


async def _sse(sub: Subscription) -> AsyncIterator[str]:
    try:
        yield _sse_frame(sub.snapshot)
        while True:
            try:
                event = await asyncio.wait_for(sub.next(), SSE_KEEPALIVE_S)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if event is None:
                return
            yield _sse_frame(event)
    finally:
        sub.close()


def _sse_frame(event: dict[str, Any]) -> str:
    return f"id: {event.get('seq', 0)}\ndata: {_dumps(event)}\n\n"


def _dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))
