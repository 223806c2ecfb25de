"""Running the app under uvicorn: bind first (so the real port is known before serving), end
the live event streams when shutting down, and leave signal handling to the caller.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
from collections.abc import Callable, Iterator

import uvicorn
from fastapi import FastAPI

from .service import Service
from .uvicorn_internals import http_protocol

GRACEFUL_SHUTDOWN_S = 5


class ServiceServer(uvicorn.Server):
    """uvicorn.Server that ends the service's event streams before waiting for connections.

    An SSE response or a WebSocket never ends by itself, so without this a shutdown would
    wait out ``timeout_graceful_shutdown`` for each open page.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        service: Service,
        *,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.service = service
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    def request_exit(self) -> None:
        """Stop gracefully; asked twice, stop without waiting for open connections."""
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The CLI installs its own handlers (they set should_exit); uvicorn's would replace them
        # and re-raise the signal after shutdown, turning a clean stop into a killed process.
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.service.end_streams()
        await super().shutdown(sockets=sockets)


def websocket_impl() -> str:
    """uvicorn's WebSocket implementation: websockets' sans-I/O one if installed."""
    if importlib.util.find_spec("websockets") is not None:
        return "websockets-sansio"
    if importlib.util.find_spec("wsproto") is not None:
        return "wsproto"
    return "none"


async def run_service(server: ServiceServer, sock: socket.socket) -> None:
    """Start the service, serve on ``sock`` until asked to exit, then stop the service.

    The service starts before uvicorn does, so a failure to start (an unreadable store, say)
    surfaces as a modelhaul error instead of uvicorn's startup traceback.
    """
    await server.service.start()
    try:
        await server.serve(sockets=[sock])
    finally:
        await server.service.close()


def make_server(
    app: FastAPI,
    service: Service,
    *,
    log_level: str = "warning",
    on_started: Callable[[], None] | None = None,
) -> ServiceServer:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        http=http_protocol(),  # uvicorn's h11 protocol, offering zero-copy sends of files
        access_log=False,  # the page's login URL carries the token
        ws=websocket_impl(),
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
        proxy_headers=False,
    )
    return ServiceServer(config, service, on_started=on_started)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port`` (port 0: any free port).

    Raises:
        OSError: the address is taken or cannot be bound.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def bound_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"
