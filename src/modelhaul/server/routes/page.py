"""The web page: ``/`` (which trades the token the ``serve`` banner prints for a cookie) and
``/favicon.ico``; the page's files are mounted at ``/static`` by the app."""

from __future__ import annotations

import pathlib

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from ..security import TOKEN_COOKIE, token_matches
from .deps import PolicyDep

STATIC_DIR = pathlib.Path(__file__).parent.parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False, response_model=None)
async def index(request: Request, policy: PolicyDep) -> Response:
    token = request.query_params.get("token")
    if token is not None and policy.token is not None:
        # The URL 'modelhaul serve' prints: trade the token for a cookie, drop it from
        # the address bar (and from history) at once.
        response: Response = RedirectResponse("/", status_code=303)
        if token_matches(token, policy.token):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
        return response
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    return Response(status_code=204)
