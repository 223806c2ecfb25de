"""The canary: does the installed uvicorn still have every internal the zero-copy send relies on?

``server/uvicorn_internals.py`` lists them in INTERNALS. At run time a missing one only sends the
mirror's files through Python (correct, and three times the CPU: no one would notice). Here each
is probed against the installed uvicorn, and a real uvicorn server sends a file by the extension;
a change fails naming the internal. Run this file first against a new uvicorn release.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from modelhaul.server import uvicorn_internals as internals
from modelhaul.server.runner import bind_socket, bound_url
from server_harness import wait_until

MiB = 1024 * 1024


def check(name: str, ok: object, what: str) -> None:
    """Fail loudly, naming the internal, unless ``ok``."""
    assert name in internals.INTERNALS
    if not ok:
        pytest.fail(
            f"uvicorn {uvicorn.__version__} changed the internal {name!r}: {what}. The mirror "
            "would silently send files through Python; adapt server/uvicorn_internals.py.",
            pytrace=False,
        )


def test_every_internal_is_where_it_was() -> None:
    check(
        "uvicorn.protocols.http.h11_impl.H11Protocol",
        internals.H11Protocol is not None,
        "the h11 protocol cannot be imported",
    )
    from uvicorn.protocols.http import h11_impl

    events = inspect.getsource(h11_impl.H11Protocol.handle_events)
    check(
        "H11Protocol.handle_events sets .cycle",
        "self.cycle = RequestResponseCycle(" in events and "run_asgi" in events,
        "handle_events no longer creates the request's cycle",
    )
    cycle = inspect.getsource(h11_impl.RequestResponseCycle)
    for attr in ("conn", "transport", "flow", "scope"):
        check(
            "RequestResponseCycle.conn/transport/flow/scope/send",
            f"self.{attr} = " in cycle,
            f"the cycle has no .{attr}",
        )
    check(
        "RequestResponseCycle.conn/transport/flow/scope/send",
        "self.send" in inspect.getsource(h11_impl.RequestResponseCycle.run_asgi),
        "run_asgi no longer hands the app the cycle's send",
    )
    for attr in ("disconnected", "response_started", "response_complete"):
        check(
            "RequestResponseCycle.disconnected/response_started/response_complete",
            f"self.{attr} = " in cycle,
            f"the cycle has no .{attr}",
        )


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, bytes, list[Any]]]:
    """A bare uvicorn with the zero-copy protocol; its app sends a file by the extension."""
    data = os.urandom(3 * MiB + 17)
    path = tmp_path / "blob"
    path.write_bytes(data)
    scopes: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        scopes.append(scope)
        headers = [(b"content-length", str(len(data) - 100).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with path.open("rb", buffering=0) as f:
            for offset, count in ((100, MiB), (100 + MiB, len(data) - 100 - MiB)):
                message = {"type": internals.ZERO_COPY, "file": f, "offset": offset}
                await send({**message, "count": count, "more_body": offset == 100})

    sock = bind_socket("127.0.0.1", 0)
    config = uvicorn.Config(app, http=internals.http_protocol(), lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "uvicorn to start")
        yield bound_url(sock), data, scopes
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
    assert not thread.is_alive()


def test_a_file_goes_out_by_sendfile_on_a_kept_alive_connection(
    file_server: tuple[str, bytes, list[Any]],
) -> None:
    url, data, scopes = file_server
    before = internals.zero_copy_bytes()
    with httpx.Client(base_url=url, timeout=20) as c:
        bodies = [c.get("/").content for _ in range(2)]  # the second on the same connection
    check(
        "H11Protocol.handle_events sets .cycle",
        all(internals.ZERO_COPY in s.get("extensions", {}) for s in scopes),
        "the request's scope does not offer the zero-copy extension",
    )
    assert bodies == [data[100:]] * 2
    assert internals.zero_copy_bytes() - before == 2 * (len(data) - 100)
