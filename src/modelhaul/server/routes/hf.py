"""/hf: the service as a Hugging Face Hub endpoint (``HF_ENDPOINT=http://HOST:PORT/hf``).

``GET /hf/api/{models|datasets|spaces}/{repo}[/revision/{rev}]`` and ``.../tree/{rev}[/{path}]``
relay the upstream Hub's answers; ``HEAD|GET /hf/[datasets/]{repo}/resolve/{rev}/{path}`` serve
files from the store with the Hub's header contract (X-Repo-Commit, quoted ETag, X-Linked-Etag
and X-Linked-Size for LFS files, Accept-Ranges, Content-Length; a Range gives 206 and
Content-Range, an unsatisfiable one 416). The work is ``mirror.core.HubMirror``'s; this module
only reads requests and writes responses. Paths are parsed from the raw, still-quoted path: a
revision such as ``refs/pr/1`` arrives as one ``%2F``-quoted segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.types import Receive, Scope, Send

from ...errors import InvalidInput, ModelhaulError
from ...mirror.answers import Relay, file_headers, hub_error
from ...mirror.bodies import FileSpan, span_bytes
from ...mirror.core import HubMirror, ServedFile
from ...mirror.slices import slice_bytes_of
from ...policy.hubpaths import parse_api_path, parse_resolve_path, requested_range, split_raw
from ...policy.slices import SLICE_HEADER
from ..security import AccessPolicy
from ..uvicorn_internals import ZERO_COPY

router = APIRouter()
log = logging.getLogger("modelhaul.mirror")
PREFIX = "/hf/"


async def mirror_of(request: Request) -> HubMirror:
    """The mirror of the app that received ``request`` (set by ``create_app``)."""
    mirror: HubMirror = request.app.state.mirror
    return mirror


MirrorDep = Annotated[HubMirror, Depends(mirror_of)]


def _segments(request: Request) -> list[str]:
    raw = request.scope.get("raw_path") or request.url.path.encode()
    return split_raw(raw.decode("latin-1").split("?", 1)[0].removeprefix(PREFIX))


def _caller_auth(request: Request) -> str | None:
    """The caller's Authorization for the Hub: never the service's own access token, which a
    caller may send out of habit and which must not leave for the upstream."""
    auth = request.headers.get("authorization")
    policy: AccessPolicy = request.app.state.policy
    if auth is None or (policy.token_required and policy.token_ok(auth, None)):
        return None
    return auth


def _relayed(answer: Relay) -> Response:
    return Response(answer.body, status_code=answer.status, headers=answer.headers)


@router.get("/api/mirror", summary="The Hub mirror's traffic per model")
async def mirror_traffic(mirror: MirrorDep) -> dict[str, list[dict[str, object]]]:
    """Bytes served to clients and fetched upstream, per model, since the service started (the
    event stream's ``mirror`` events carry the same, live)."""
    return {"models": mirror.traffic.view()}


@router.get("/api/mirror/totals", summary="All the Hub mirror fetched upstream")
async def mirror_totals(mirror: MirrorDep) -> dict[str, int]:
    """``upstream_bytes``: all the mirror fetched since the service started, the slices it
    fetched for peers (``slice_upstream_bytes``, issue 17) included."""
    sliced = mirror.slices.fetched_bytes if mirror.slices is not None else 0
    whole = sum(int(str(m["upstream_bytes"])) for m in mirror.traffic.view())
    return {"upstream_bytes": whole + sliced, "slice_upstream_bytes": sliced}


@router.get("/hf/api/{rest:path}", include_in_schema=False)
async def hub_api(rest: str, request: Request, mirror: MirrorDep) -> Response:
    """Repo info and tree pages, relayed from the upstream Hub with the caller's token."""
    try:
        hp = parse_api_path(_segments(request)[1:])
    except InvalidInput as exc:
        return _relayed(hub_error(404, exc.message))
    base = str(request.base_url).rstrip("/") + PREFIX.rstrip("/")
    answer = await mirror.api(hp, request.url.query, _caller_auth(request), base)
    return _relayed(answer)


@router.api_route("/hf/{rest:path}", methods=["GET", "HEAD"], include_in_schema=False)
async def hub_resolve(rest: str, request: Request, mirror: MirrorDep) -> Response:
    """A file, by branch, tag or commit: from the store, fetched upstream once if missing."""
    try:
        hp = parse_resolve_path(_segments(request))
    except InvalidInput as exc:
        return _relayed(hub_error(404, exc.message, code="EntryNotFound"))
    head = request.method == "HEAD"
    slice_bytes = slice_bytes_of(request.headers.get(SLICE_HEADER))  # a peer's (issue 17)
    answer = await mirror.resolve(
        hp, _caller_auth(request), fetch=not head, slice_bytes=slice_bytes
    )
    if isinstance(answer, Relay):
        return _relayed(answer)
    return _file_response(answer, request, head=head)


def _file_response(served: ServedFile, request: Request, *, head: bool) -> Response:
    facts = served.facts
    headers = file_headers(facts)
    if_range = request.headers.get("if-range")
    asked = request.headers.get("range")
    if if_range is not None and if_range.strip() != headers["ETag"]:
        asked = None  # another version's validator: the whole, current file (RFC 9110 13.1.5)
    span = requested_range(asked, facts.size)
    if span == "bad":
        headers["Content-Range"] = f"bytes */{facts.size}"
        return Response(status_code=416, headers=headers)
    start, end = span if span is not None else (0, facts.size)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{facts.size}"
    headers["Content-Length"] = str(end - start)
    body = None if head else served.chunks(start, end)
    return StreamedBody(206 if span is not None else 200, headers, body)


class StreamedBody(Response):
    """A response whose body comes span by span, possibly still arriving from upstream.

    Each span goes out with the ASGI zero-copy extension where the server offers it (the
    kernel sends the file's bytes, see ``uvicorn_internals``), else read chunk by chunk.

    A body that cannot be completed (the download failed, the partial file was replaced) ends
    the response early: the connection closes short of Content-Length, the client's size check
    fails and it asks again. A client that goes away stops the reading.
    """

    def __init__(self, status: int, headers: dict[str, str], body: AsyncIterator[FileSpan] | None):
        super().__init__(status_code=status, headers=headers)
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        }
        await send(start)
        if self._body is None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        zero_copy = ZERO_COPY in scope.get("extensions", {})
        sender = asyncio.ensure_future(self._send_body(send, zero_copy=zero_copy))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, watcher):
                task.cancel()
            outcomes = await asyncio.gather(sender, watcher, return_exceptions=True)
            with contextlib.suppress(RuntimeError):
                await self._body.aclose()  # type: ignore[attr-defined]
        if isinstance(outcomes[0], Exception):
            log.error("mirror: response failed: %r", outcomes[0])

    async def _send_body(self, send: Send, *, zero_copy: bool) -> None:
        assert self._body is not None
        try:
            async for span in self._body:
                if zero_copy:
                    await _send_span(send, span)
                    continue
                async for chunk in span_bytes(span):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ModelhaulError as exc:
            # Returning without the last message makes the server close the connection.
            log.warning("mirror: response cut short: %s", exc.message)
            return
        except OSError as exc:
            log.warning("mirror: response cut short: %s", exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_span(send: Send, span: FileSpan) -> None:
    # The file object only lends the span's descriptor to sendfile, which wants one.
    with open(span.fd, "rb", buffering=0, closefd=False) as file:
        message = {"type": ZERO_COPY, "file": file, "offset": span.offset, "count": span.count}
        await send({**message, "more_body": True})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


__all__ = ["mirror_of", "router"]
