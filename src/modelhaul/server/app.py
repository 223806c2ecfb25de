"""The HTTP face of the service: ``create_app`` assembles the routers of ``routes/`` (REST under
``/api``, live events on ``/ws`` and ``/events``, the web page at ``/``), the guard in front of
them and the error handlers behind them.

FastAPI is imported here, in ``routes/``, ``schemas.py``, ``guard.py``, ``error_handlers.py``
(and uvicorn in ``runner.py``) only; ``modelhaul serve`` imports this module lazily, so the core
CLI works without the ``server`` extra. Request bodies are pydantic models with limits
(``schemas.py``); every request passes ``Guard`` first (Host, Origin, token, body size, see
``security.py``). Errors are ``{"error": {"category", "message", "hint"}}`` with a status that
matches the category (``error_handlers.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ..mirror.core import HubMirror
from .error_handlers import install_error_handlers
from .guard import Guard
from .routes import downloads, events, health, hf, page, pulls, store
from .security import AccessPolicy
from .service import Service

# The order of the routes in /openapi.json.
ROUTERS = (
    health.router,
    downloads.router,
    pulls.router,
    store.router,
    events.router,
    page.router,
    hf.router,
)


def create_app(service: Service, policy: AccessPolicy, *, version: str = "0.1.0") -> FastAPI:
    """The ASGI app for ``service``; its lifespan starts and stops the service."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        mirror.start_nowait()  # fetches a killed mirror left under way go on
        try:
            yield
        finally:
            await mirror.close()  # its fetches first: they run in the service's manager
            await service.close()

    app = FastAPI(
        title="modelhaul",
        version=version,
        description="Downloads, model pulls and the model store of one modelhaul service.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    # What the routes take (routes/deps.py): the routers are shared, the service is this app's.
    app.state.service = service
    app.state.policy = policy
    mirror = HubMirror(
        upstream=service.config.upstream,
        store_root=service.config.store_root,
        manager_of=lambda: service.manager,
        symlinks=service.config.symlinks,
        on_traffic=service.publish_mirror_traffic,  # the page's mirror table, live
        on_store_change=service.refresh_store,  # and mirrored models in its store table
        slices_dir=service.config.state_dir / "mirror-slices",
    )
    app.state.mirror = mirror  # the Hugging Face mirror under /hf (routes/hf.py)
    app.add_middleware(Guard, policy=policy)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    return app
