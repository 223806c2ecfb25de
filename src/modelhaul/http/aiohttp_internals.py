"""Every use of aiohttp's (and asyncio's transport's) private internals, each behind one function.

modelhaul leans on a few things aiohttp does not promise: switching off its silent resend and its
per-request netrc lookup, widening the socket reads, taking a connection's socket or transport
over once a response's headers are parsed (the zero-copy receive in ``bodies.py``), and giving
such a connection back to aiohttp's pool once the body was received to its end.
Each is touched here and nowhere else, so a new aiohttp release is checked in one place:
``tests/http/test_aiohttp_canary.py`` probes every name in INTERNALS against the installed
aiohttp and fails naming the one that changed. Where one is missing at run time the callers take
the slow, public path, which is correct but slower; the canary is what notices.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import aiohttp
from aiohttp.client_proto import ResponseHandler

# aiohttp's protocol for a client connection: parses responses, owns flow control and the
# sock_read timer.
ResponseProtocol = ResponseHandler

# The internals relied on, by the name the canary test reports.
INTERNALS: tuple[str, ...] = (
    "ClientSession._retry_connection",
    "ClientSession._get_netrc_auth",
    "Connection.transport/protocol",
    "asyncio transport max_size",
    "ResponseHandler._tail",
    "ResponseHandler.pause_reading",
    "ResponseHandler.transport (protocol swap)",
    "StreamReader.read_nowait drain",
    "ResponseHandler hand back after a takeover",
    "asyncio SSLProtocol layer (_ssl_protocol, _sslobj, _incoming, _transport)",
)


def disable_connection_retry(session: aiohttp.ClientSession) -> bool:
    """Stop aiohttp resending an idempotent request when the connection drops before the
    response; whether the switch exists.

    Left on, RetryPolicy(retries=3) became 8 requests, the extra ones without backoff. The engine
    owns retries; this private switch is the only way to turn aiohttp's off (its own test_utils
    does the same).
    """
    if not hasattr(session, "_retry_connection"):
        return False
    session._retry_connection = False
    return True


def disable_netrc_lookup(session: aiohttp.ClientSession) -> bool:
    """Stop aiohttp reading netrc for every request; whether the hook exists.

    With trust_env aiohttp reads ~/.netrc for every request (in an executor) and, when the file
    has an entry for the host, refuses a request that carries its own Authorization header (a
    token) with a ValueError. The session reads the file once itself instead.
    """
    if not hasattr(session, "_get_netrc_auth"):
        return False
    session._get_netrc_auth = _no_netrc  # type: ignore[method-assign]
    return True


def _no_netrc(host: str) -> None:
    return None


def set_recv_size(resp: aiohttp.ClientResponse, n: int) -> bool:
    """Make one recv() on ``resp``'s connection take at most ``n`` bytes; whether it could.

    The attribute is asyncio's selector transport's; other event loops lack it.
    """
    conn = resp.connection
    transport = conn.transport if conn is not None else None
    if transport is not None and hasattr(transport, "max_size"):
        transport.max_size = n
        return True
    return False


def connection_of(resp: aiohttp.ClientResponse) -> tuple[asyncio.Transport, ResponseHandler] | None:
    """(transport, aiohttp's protocol) of the connection carrying ``resp``, if its transport can
    switch protocols; None otherwise."""
    conn = resp.connection
    if conn is None:
        return None
    transport, proto = conn.transport, conn.protocol
    if transport is None or proto is None or not hasattr(transport, "set_protocol"):
        return None
    return transport, proto


def holds_unparsed_bytes(proto: ResponseHandler) -> bool:
    """Whether aiohttp's parser holds bytes back unparsed (then the body cannot be taken over)."""
    return bool(getattr(proto, "_tail", b""))


def drain_buffered(content: aiohttp.StreamReader) -> bytes:
    """Every byte of the body aiohttp has received and nobody has read yet.

    Emptying its buffer lets aiohttp resume a paused parser on the spot, which feeds bytes it
    had held back into the buffer again (read_nowait re-enters the parser); so read until
    nothing comes. The event loop cannot run meanwhile, so nothing new arrives from the socket
    and this ends. aiohttp's and OS errors propagate untranslated.
    """
    parts: list[bytes] = []
    while chunk := content.read_nowait(-1):
        parts.append(chunk)
    return b"".join(parts)


def stop_parser(proto: ResponseHandler) -> None:
    """Stop aiohttp reading the connection: its parser, flow control and sock_read timer."""
    proto.pause_reading()


def swap_protocol(
    transport: asyncio.Transport, proto: ResponseHandler, new: asyncio.BaseProtocol
) -> None:
    """Hand ``transport`` to ``new``; aiohttp's protocol loses its hold on it.

    An earlier response on this pooled connection may still pause or resume reading through
    aiohttp's protocol; without a transport it cannot. restore_protocol gives it back.
    """
    transport.set_protocol(new)
    proto.transport = None


def restore_protocol(transport: asyncio.Transport, proto: ResponseHandler) -> None:
    """Give ``transport`` back to aiohttp's protocol, which must see the connection end or its
    pool waits for it forever."""
    proto.transport = transport
    transport.set_protocol(proto)


def hand_back(
    transport: asyncio.Transport, proto: ResponseHandler, content: aiohttp.StreamReader
) -> None:
    """Give a connection whose taken-over body was received exactly to its end back to aiohttp,
    which pools it for the next request.

    aiohttp's parser saw only the headers: it is paused mid-body and would take the next
    response for body bytes. A new connection has no parser until its first request sets one
    (set_response_params); dropping the stale one leaves the protocol in that state. Ending the
    response's stream then does what aiohttp does at the end of a body it parsed itself: resume
    reading, drop the sock_read timer, and release the connection to the pool, which keeps it
    unless it is marked to close (``Connection: close``, an error).
    """
    restore_protocol(transport, proto)
    proto._parser = None
    content.feed_eof()


@dataclass(frozen=True, slots=True)
class TlsLayer:
    """The parts of an asyncio TLS connection a worker thread decrypts with (tlsbody.py).

    Attributes:
        transport: The TLS transport aiohttp holds.
        raw: The TCP transport under it, whose reading is paused while a thread decrypts.
        sslobj: The connection's TLS state; SSLObject.read releases the GIL while OpenSSL
            decrypts, so a worker thread can decrypt straight into a block.
        incoming: The memory BIO the TLS state reads ciphertext from. What a thread feeds it
            and does not decrypt stays there for asyncio, as if the loop had received it.
    """

    transport: asyncio.Transport
    raw: asyncio.Transport
    sslobj: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO


def tls_layer_of(transport: asyncio.Transport) -> TlsLayer | None:
    """The TLS layer of ``transport`` if it is asyncio's TLS transport with an established
    session and nothing waiting to be sent; None otherwise (a plain transport, another event
    loop, a changed asyncio)."""
    proto = getattr(transport, "_ssl_protocol", None)
    if proto is None:
        return None
    raw = getattr(proto, "_transport", None)
    sslobj = getattr(proto, "_sslobj", None)
    incoming = getattr(proto, "_incoming", None)
    outgoing = getattr(proto, "_outgoing", None)
    state = getattr(getattr(proto, "_state", None), "name", "")
    if (
        not isinstance(sslobj, ssl.SSLObject)
        or not isinstance(incoming, ssl.MemoryBIO)
        or not isinstance(outgoing, ssl.MemoryBIO)
        or raw is None
        or not hasattr(raw, "is_reading")
        or state != "WRAPPED"
        or getattr(proto, "_write_backlog", True)
        or outgoing.pending
    ):
        return None
    return TlsLayer(transport, raw, sslobj, incoming, outgoing)
