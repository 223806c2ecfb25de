"""The HTTP face of the service: REST under ``/api``, live events on ``/ws`` and ``/events``,
and the web page at ``/``.

FastAPI is imported here (and in ``runner.py``) only; ``modelhaul serve`` imports this module
lazily, so the core CLI works without the ``server`` extra. Request bodies are pydantic models
with limits; every request passes ``Guard`` first (Host, Origin, token, body size, see
``security.py``). Errors are ``{"error": {"category", "message", "hint"}}`` with a status
that matches the category.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ModelhaulError
from ..policy.units import parse_rate, parse_size
from .jobs import PRIORITY_MAX, PRIORITY_MIN
from .security import TOKEN_COOKIE, AccessPolicy, token_matches
from .service import Service
from .stream import Subscription

STATIC_DIR = pathlib.Path(__file__).with_name("static")
MAX_BODY_BYTES = 1024 * 1024
SSE_KEEPALIVE_S = 15.0
_PUBLIC_PATHS = frozenset({"/", "/api/health", "/openapi.json", "/favicon.ico"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_HTTP_HINT = "The API's routes are listed in /openapi.json."
_STATUS_BY_CATEGORY = {
    "invalid_input": 400,
    "not_found": 404,
    "client_error": 409,
    "disk_full": 507,
    "permission": 500,
}
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Priority = Annotated[int, Field(ge=PRIORITY_MIN, le=PRIORITY_MAX)]
DownloadId = Annotated[str, Path(pattern=r"^[0-9]{1,18}$", description="a download's id")]
Glob = Annotated[str, StringConstraints(min_length=1, max_length=256)]
RepoType = Literal["model", "dataset", "space"]
SizeText = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=32,
        pattern=r"^\s*[0-9]+(\.[0-9]+)?\s*[kKmMgGtT]?([iI]?[bB])?\s*(/s)?\s*$",
    ),
]
RepoName = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=192,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$",
    ),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AddDownload(_Body):
    """A URL to fetch into the download directory."""

    url: str = Field(
        min_length=8,
        max_length=8192,
        pattern=r"^[hH][tT][tT][pP][sS]?://",
        description="http(s) URL",
    )
    out: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="the file, relative to 'dir' or the download directory (default: named "
        "by the server); absolute only from the service's own user on loopback",
    )
    dir: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="the folder, relative to the download directory (default: that "
        "directory); absolute only from the service's own user on loopback",
    )
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    priority: Priority = 0
    paused: bool = False


class PullModel(_Body):
    """A model to pull into the store: a source (hf://ORG/NAME[@REV], ORG/NAME, a manifest URL,
    or from the service's own user on loopback an absolute manifest path) or an inline manifest
    object."""

    source: str | None = Field(None, min_length=1, max_length=2048)
    manifest: dict[str, Any] | None = None
    include: list[Glob] = Field(default_factory=list, max_length=256)
    exclude: list[Glob] = Field(default_factory=list, max_length=256)
    priority: Priority = 0
    paused: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> PullModel:
        if (self.source is None) == (self.manifest is None):
            raise ValueError("give exactly one of 'source' and 'manifest'")
        return self


class SetPriority(_Body):
    priority: Priority


class SetLimit(_Body):
    """``rate``: bytes per second, or text like "20M" (1024-based); null or 0: unlimited."""

    rate: Annotated[int, Field(ge=0, le=2**40)] | SizeText | None = None


class ModelRef(_Body):
    name: RepoName = Field(description="ORG/NAME as on the Hub")
    repo_type: RepoType = "model"


class RemoveModel(ModelRef):
    revision: str | None = Field(None, min_length=1, max_length=255)
    force: bool = False


class Gc(_Body):
    max_size: Annotated[int, Field(ge=0, le=2**62)] | SizeText | None = None
    dry_run: bool = False
    partial_age_s: float = Field(7 * 86400, ge=0, le=100 * 365 * 86400, allow_inf_nan=False)


class Download(BaseModel):
    id: str
    kind: Literal["url", "model"]
    source: str
    name: str
    path: str | None
    state: Literal["queued", "running", "paused", "verifying", "completed", "failed", "cancelled"]
    priority: int
    bytes_done: int
    total: int | None
    speed: float = Field(description="bytes per second")
    eta: float | None = Field(description="seconds")
    connections: int = Field(description="connections open right now")
    files: int
    created: float
    paused: bool
    error: dict[str, Any] | None
    permanent: bool = Field(
        description="failed for a reason another attempt cannot fix alone (not found, auth)"
    )
    already_present: bool = Field(description="completed without fetching: all was in the store")
    result: dict[str, Any] | None


class DownloadList(BaseModel):
    downloads: list[Download]


class Limit(BaseModel):
    rate_bytes_per_s: int | None


class Store(BaseModel):
    root: str
    models: list[dict[str, Any]]
    used: int
    free: int


class Health(BaseModel):
    service: Literal["modelhaul"]
    version: str
    token_required: bool
    local_paths: bool = Field(
        description="whether this caller may name absolute paths (the service's own user, "
        "on loopback)"
    )


class ErrorBody(BaseModel):
    error: dict[str, str]


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody},
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    422: {"model": ErrorBody, "description": "the request does not match this schema"},
}


class Guard:
    """ASGI middleware in front of everything: Host, Origin, token, body size, page headers."""

    def __init__(self, app: ASGIApp, *, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, message, hint = refusal
            if scope["type"] == "websocket":
                # Closing before accept makes the server answer the upgrade with 403.
                await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
                return
            extra = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
            body = {"error": {"category": _category(status), "message": message, "hint": hint}}
            response = _json(body, status)
            response.headers.update(extra)
            await response(scope, receive, send)
            return
        if scope["type"] == "http":
            send = _with_page_headers(send)
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: Headers) -> tuple[int, str, str] | None:
        policy = self.policy
        if not policy.host_ok(headers.get("host")):
            return (
                403,
                "unexpected Host header",
                "The service answers to loopback names only (DNS rebinding protection); "
                "open it as http://127.0.0.1:PORT/ or http://localhost:PORT/.",
            )
        method = scope.get("method", "GET")
        changing = scope["type"] == "websocket" or method not in _SAFE_METHODS
        if changing and not policy.origin_ok(
            headers.get("origin"), headers.get("host"), headers.get("sec-fetch-site")
        ):
            return (
                403,
                "cross-origin request refused",
                "Use the page the service itself serves, or a non-browser client.",
            )
        path = scope.get("path", "/")
        public = path in _PUBLIC_PATHS or path.startswith("/static/")
        if not public and not policy.token_ok(headers.get("authorization"), headers.get("cookie")):
            return (
                401,
                "this service needs its access token",
                "Send 'Authorization: Bearer TOKEN' (modelhaul reads it from --token or "
                "MODELHAUL_TOKEN); the token is in the server-token file of the service's "
                "state directory.",
            )
        if scope["type"] == "http" and method not in _SAFE_METHODS:
            length = headers.get("content-length")
            if length is None and "chunked" in headers.get("transfer-encoding", "").lower():
                return 411, "a request body needs a Content-Length", ""
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                return 413, f"request body larger than {MAX_BODY_BYTES} bytes", ""
        return None


def _json(body: Any, status: int, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def validation_error(errors: Sequence[Any]) -> dict[str, str]:
    """FastAPI's validation errors as the API's error: the fields named in the message."""
    problems = []
    fields = []
    for e in errors[:5]:
        loc = [str(p) for p in e.get("loc", ())]
        where = ".".join(loc[1:]) or (loc[0] if loc else "request")
        fields.append(where)
        problems.append(f"{where}: {e.get('msg', 'invalid')}")
    if len(errors) > 5:
        problems.append(f"and {len(errors) - 5} more")
    error = {
        "category": "invalid_input",
        "message": "; ".join(problems) or "invalid request",
        "hint": "The request's schema is in /openapi.json.",
    }
    if fields:
        error["field"] = fields[0]
    return error


def http_error_body(status: int, detail: str, method: str, path: str) -> dict[str, str]:
    """An HTTP error of the framework (unknown route, method not allowed) in the API's shape."""
    if status == 404:
        message = f"no such route: {path}" if detail == "Not Found" else detail
    elif status == 405:
        message = f"{method} is not allowed on {path}"
    else:
        message = detail
    return {"category": _category(status), "message": message, "hint": _HTTP_HINT}


def _category(status: int) -> str:
    if status >= 500:
        return "server_error"
    return {401: "auth", 403: "auth", 404: "not_found"}.get(status, "client_error")


def _with_page_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            raw = list(message.get("headers", []))
            present = {k.lower() for k, _ in raw}
            for name, value in _PAGE_HEADERS.items():
                key = name.lower().encode()
                if key not in present:
                    raw.append((key, value.encode()))
            message = {**message, "headers": raw}
        await send(message)

    return wrapped


def create_app(service: Service, policy: AccessPolicy, *, version: str = "0.1.0") -> FastAPI:
    """The ASGI app for ``service``; its lifespan starts and stops the service."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(
        title="modelhaul",
        version=version,
        description="Downloads, model pulls and the model store of one modelhaul service.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(Guard, policy=policy)

    @app.exception_handler(ModelhaulError)
    async def modelhaul_error(request: Request, exc: ModelhaulError) -> Response:
        status = _STATUS_BY_CATEGORY.get(exc.category, 500)
        return _json({"error": exc.to_dict()}, status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # One error shape for every answer. (FastAPI's own handler also echoed the input as
        # UTF-8 and failed with 500 on a lone surrogate, which JSON allows.)
        return _json({"error": validation_error(exc.errors())}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        error = http_error_body(exc.status_code, str(exc.detail), request.method, request.url.path)
        return _json({"error": error}, exc.status_code, headers=exc.headers)

    # ------------------------------------------------------------------ service

    def trusted(request: Request) -> bool:
        return policy.trusts_paths_of(request.client, request.scope.get("server"))

    @app.get("/api/health", response_model=Health, tags=["service"])
    async def health(request: Request) -> dict[str, Any]:
        """Whether a modelhaul service answers here; needs no token."""
        return {
            "service": "modelhaul",
            "version": version,
            "token_required": policy.token_required,
            "local_paths": trusted(request),
        }

    @app.get("/api/state", tags=["service"])
    async def state() -> dict[str, Any]:
        """Everything at once: what a live event stream starts with."""
        return service.snapshot()

    # ------------------------------------------------------------------ downloads

    @app.get("/api/downloads", response_model=DownloadList, tags=["downloads"])
    async def list_downloads() -> dict[str, Any]:
        return {"downloads": service.downloads()}

    @app.post(
        "/api/downloads",
        response_model=Download,
        status_code=201,
        responses=_ERRORS,
        tags=["downloads"],
    )
    async def add_download(
        body: AddDownload, request: Request, response: Response
    ) -> dict[str, Any]:
        """Queue a URL; the same URL and place still queued returns that download (200)."""
        view, created = service.add_url(
            body.url,
            out=body.out,
            folder=body.dir,
            sha256=body.sha256,
            priority=body.priority,
            paused=body.paused,
            local=trusted(request),
        )
        response.status_code = 201 if created else 200
        return view

    @app.post(
        "/api/pulls",
        response_model=Download,
        status_code=201,
        responses=_ERRORS,
        tags=["downloads"],
    )
    async def pull_model(body: PullModel, request: Request, response: Response) -> dict[str, Any]:
        """Queue a model pull into the store (only missing or bad files are fetched)."""
        view, created = service.add_model(
            source=body.source,
            manifest=body.manifest,
            include=body.include,
            exclude=body.exclude,
            priority=body.priority,
            paused=body.paused,
            local=trusted(request),
        )
        response.status_code = 201 if created else 200
        return view

    @app.get(
        "/api/downloads/{download_id}",
        response_model=Download,
        responses=_ERRORS,
        tags=["downloads"],
    )
    async def get_download(download_id: DownloadId) -> dict[str, Any]:
        return service.download(download_id)

    @app.post(
        "/api/downloads/{download_id}/pause",
        response_model=Download,
        responses=_ERRORS,
        tags=["downloads"],
    )
    async def pause(download_id: DownloadId) -> dict[str, Any]:
        """Stop fetching, keep the partial data."""
        return service.pause(download_id)

    @app.post(
        "/api/downloads/{download_id}/resume",
        response_model=Download,
        responses=_ERRORS,
        tags=["downloads"],
    )
    async def resume(download_id: DownloadId) -> dict[str, Any]:
        """Resume a paused download, or retry a failed one."""
        return service.resume(download_id)

    @app.post(
        "/api/downloads/{download_id}/retry",
        response_model=Download,
        responses=_ERRORS,
        tags=["downloads"],
    )
    async def retry(download_id: DownloadId) -> dict[str, Any]:
        """Run a failed download again (same source and destination); 409 if it has not failed."""
        return service.retry(download_id)

    @app.post(
        "/api/downloads/{download_id}/cancel",
        response_model=Download,
        responses=_ERRORS,
        tags=["downloads"],
    )
    async def cancel(download_id: DownloadId) -> dict[str, Any]:
        """Stop for good and delete the partial data; answers once that is done (within
        seconds: a transfer still winding down after that shows its state of the moment)."""
        return await service.cancel(download_id)

    @app.put(
        "/api/downloads/{download_id}/priority",
        response_model=Download,
        responses=_ERRORS,
        tags=["downloads"],
    )
    async def set_priority(download_id: DownloadId, body: SetPriority) -> dict[str, Any]:
        """Higher runs first; a started file goes before a new one of the same priority."""
        return service.set_priority(download_id, body.priority)

    @app.delete(
        "/api/downloads/{download_id}", status_code=204, responses=_ERRORS, tags=["downloads"]
    )
    async def forget(download_id: DownloadId) -> Response:
        """Remove a finished download from the list (its file stays)."""
        service.forget(download_id)
        return Response(status_code=204)

    @app.get("/api/limit", response_model=Limit, tags=["downloads"])
    async def get_limit() -> dict[str, Any]:
        return service.limit_view()

    @app.put("/api/limit", response_model=Limit, responses=_ERRORS, tags=["downloads"])
    async def set_limit(body: SetLimit) -> dict[str, Any]:
        """Set the global speed limit (applies to running downloads within a second)."""
        return service.set_limit(parse_rate(body.rate))

    # ------------------------------------------------------------------ the store

    @app.get("/api/models", response_model=Store, tags=["store"])
    async def list_models() -> dict[str, Any]:
        """The models in the store with sizes and status, and the disk's free space."""
        return await service.refresh_store()

    @app.post("/api/models/pin", responses=_ERRORS, tags=["store"])
    async def pin(body: ModelRef) -> dict[str, Any]:
        """Never evict this model in gc."""
        return await service.set_pinned(body.name, True, body.repo_type)

    @app.post("/api/models/unpin", responses=_ERRORS, tags=["store"])
    async def unpin(body: ModelRef) -> dict[str, Any]:
        return await service.set_pinned(body.name, False, body.repo_type)

    @app.post("/api/models/remove", responses=_ERRORS, tags=["store"])
    async def remove_model(body: RemoveModel) -> dict[str, Any]:
        """Remove a model, or one revision, with the blobs nothing else uses."""
        return await service.remove_model(
            body.name, revision=body.revision, repo_type=body.repo_type, force=body.force
        )

    @app.post("/api/models/gc", responses=_ERRORS, tags=["store"])
    async def gc(body: Gc) -> dict[str, Any]:
        """Evict least recently used unpinned models until the store fits max_size; drop
        partial downloads untouched for partial_age_s."""
        max_size = None if body.max_size is None else parse_size(body.max_size, what="max_size")
        return await service.gc(max_size, dry_run=body.dry_run, partial_age_s=body.partial_age_s)

    # ------------------------------------------------------------------ live events

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        """A snapshot, then every event, one JSON text message each."""
        await websocket.accept()
        sub = service.subscribe()
        try:
            await _pump_websocket(websocket, sub)
        finally:
            sub.close()

    @app.get(
        "/events",
        tags=["service"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "the stream"}},
    )
    async def events() -> StreamingResponse:
        """Server-Sent Events: a snapshot, then every event (``data:`` JSON, ``id:`` seq)."""
        sub = service.subscribe()
        return StreamingResponse(
            _sse(sub),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # ------------------------------------------------------------------ the page

    @app.get("/", include_in_schema=False, response_model=None)
    async def index(request: Request) -> Response:
        token = request.query_params.get("token")
        if token is not None and policy.token is not None:
            # The URL 'modelhaul serve' prints: trade the token for a cookie, drop it from
            # the address bar (and from history) at once.
            response: Response = RedirectResponse("/", status_code=303)
            if token_matches(token, policy.token):
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
            return response
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


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
