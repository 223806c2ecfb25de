"""Every use of uvicorn's private internals: the ASGI zero-copy send extension on its h11 protocol.

uvicorn does not implement ``http.response.zerocopysend`` (the ASGI extension that sends a
file's bytes with ``sendfile``), and the mirror serves gigabytes to many clients: read into
Python and written again, each GiB cost the server about 0.6 CPU-s, on the machine its clients
share. ``ZeroCopyH11Protocol`` is uvicorn's h11 protocol that offers the extension: a message
``{"type": "http.response.zerocopysend", "file": f, "offset": o, "count": n, "more_body": b}``
sends ``n`` bytes of ``f`` from ``o`` with ``loop.sendfile`` (the kernel copies page cache to
socket). h11 still frames the body and counts it against Content-Length: its public
``send_with_data_passthrough`` hands back, in place of the bytes, the object it was given.

What is private (uvicorn promises none of it) is how the protocol is reached: the request's
``RequestResponseCycle`` on ``protocol.cycle`` (set by ``handle_events``), and that cycle's
``conn``, ``transport``, ``flow``, ``disconnected``, ``response_started``, ``response_complete``,
``scope`` and ``send``. They are touched here and nowhere else; ``INTERNALS`` names them for
``tests/server/test_uvicorn_canary.py``, which fails naming the one a new uvicorn changed. Where
one is missing at run time the extension is simply not offered, and the routes stream the file
through Python as before (also under TLS, where sendfile cannot apply).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import h11

try:
    from uvicorn.protocols.http.h11_impl import H11Protocol
except ImportError:  # pragma: no cover - a uvicorn without its h11 protocol
    H11Protocol = None  # type: ignore[assignment,misc]

ZERO_COPY = "http.response.zerocopysend"

INTERNALS: tuple[str, ...] = (
    "uvicorn.protocols.http.h11_impl.H11Protocol",
    "H11Protocol.handle_events sets .cycle",
    "RequestResponseCycle.conn/transport/flow/scope/send",
    "RequestResponseCycle.disconnected/response_started/response_complete",
)
_CYCLE_ATTRS = (
    "conn",
    "transport",
    "flow",
    "scope",
    "send",
    "disconnected",
    "response_started",
    "response_complete",
)


class _Sent:
    """Bytes sent by sendfile in this process (a test checks the zero-copy path is taken)."""

    native_bytes = 0


def zero_copy_bytes() -> int:
    """How many body bytes this process sent with sendfile (never through Python)."""
    return _Sent.native_bytes


class _Region:
    """What h11 frames in place of the bytes: only its length matters to h11."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


def offer_zero_copy(cycle: Any) -> bool:
    """Make ``cycle`` (uvicorn's h11 request/response cycle) accept zero-copy messages and say so
    in its scope's extensions; whether it could (not under TLS, on another event loop, nor on a
    changed uvicorn)."""
    if not all(hasattr(cycle, name) for name in _CYCLE_ATTRS):
        return False
    transport = cycle.transport
    if transport.get_extra_info("sslcontext") is not None or not isinstance(
        asyncio.get_running_loop(), asyncio.BaseEventLoop
    ):
        return False  # TLS; or a loop (uvloop) without asyncio's loop.sendfile
    send = cycle.send

    async def send_or_send_file(message: Any) -> None:
        if message["type"] == ZERO_COPY:
            await _send_file(cycle, message)
            if not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send(message)

    cycle.send = send_or_send_file
    cycle.scope.setdefault("extensions", {})[ZERO_COPY] = {}
    return True


async def _send_file(cycle: Any, message: Any) -> None:
    """One zero-copy message, as uvicorn sends a body message: after the headers, paced by the
    connection's flow control, nothing once the client went away."""
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    transport = cycle.transport
    if cycle.disconnected:
        return  # as uvicorn drops a body for a client that went away
    if not cycle.response_started or cycle.response_complete:
        raise RuntimeError(f"'{ZERO_COPY}' outside a response body")
    file = message["file"]
    offset = message.get("offset")
    offset = file.tell() if offset is None else offset
    count = message.get("count")
    count = os.fstat(file.fileno()).st_size - offset if count is None else count
    if count <= 0:
        return
    parts = cycle.conn.send_with_data_passthrough(h11.Data(data=_Region(count)))
    for part in parts or ():
        if transport.is_closing():  # going away (h11 counted the bytes: it may end the body)
            return
        if not isinstance(part, _Region):
            transport.write(part)  # chunked framing, if the response is chunked
            continue
        try:
            sent = await _sendfile(transport, file, offset, count)
        except ConnectionError:  # the client went away mid-file: as a write would, quietly
            transport.close()
            return
        if sent != count:  # the file is shorter: h11 counted bytes that will never come
            transport.close()
            raise OSError(f"sendfile sent {sent} of {count} bytes: the file ended")


async def _sendfile(transport: asyncio.Transport, file: Any, offset: int, count: int) -> int:
    """``loop.sendfile``: the kernel's sendfile where the transport allows it, else asyncio's
    own read-and-write fallback (counted apart)."""
    loop = asyncio.get_running_loop()
    try:
        sent = await loop.sendfile(transport, file, offset, count, fallback=False)
    except asyncio.SendfileNotAvailableError:
        return await loop.sendfile(transport, file, offset, count, fallback=True)
    _Sent.native_bytes += sent
    return sent


if H11Protocol is not None:

    class ZeroCopyH11Protocol(H11Protocol):  # type: ignore[misc,valid-type]
        """uvicorn's h11 protocol, each request offered the zero-copy send extension."""

        def handle_events(self) -> None:
            before = getattr(self, "cycle", None)
            super().handle_events()
            cycle = getattr(self, "cycle", None)
            if cycle is not None and cycle is not before:
                offer_zero_copy(cycle)  # before its task runs: the task reads cycle.send then


def http_protocol() -> Any:
    """The protocol (class) to give ``uvicorn.Config(http=...)``: zero-copy if uvicorn has the
    h11 protocol this knows, else uvicorn's own choice ("auto")."""
    return ZeroCopyH11Protocol if H11Protocol is not None else "auto"


__all__ = ["INTERNALS", "ZERO_COPY", "http_protocol", "offer_zero_copy", "zero_copy_bytes"]
