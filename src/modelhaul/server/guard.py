"""``Guard``, the ASGI middleware in front of every request and WebSocket: Host, Origin, token
and body size are checked before any route runs (the rules are in ``security.py``), and page
responses get their security headers."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..remedies import Remedy, say
from .error_handlers import category_of, json_response
from .security import AccessPolicy
from .words import SERVICE_WORDS

MAX_BODY_BYTES = 1024 * 1024
_PUBLIC_PATHS = frozenset({"/", "/api/health", "/openapi.json", "/favicon.ico"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
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
            body = {"error": {"category": category_of(status), "message": message, "hint": hint}}
            response = json_response(body, status)
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
        # The Hub mirror reads with the caller's own Hub token, which upstream judges.
        public = public or (path.startswith("/hf/") and method in ("GET", "HEAD"))
        if not public and not policy.token_ok(headers.get("authorization"), headers.get("cookie")):
            return (
                401,
                "this service needs its access token",
                say(SERVICE_WORDS, Remedy.SERVICE_TOKEN),
            )
        if scope["type"] == "http" and method not in _SAFE_METHODS:
            length = headers.get("content-length")
            if length is None and "chunked" in headers.get("transfer-encoding", "").lower():
                return 411, "a request body needs a Content-Length", ""
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                return 413, f"request body larger than {MAX_BODY_BYTES} bytes", ""
        return None


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
