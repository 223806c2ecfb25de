"""Every error the API answers, in one shape: ``{"error": {"category", "message", "hint"}}`` with
a status that matches the category, whether the service, the request schema or the framework
(unknown route, method not allowed) refused."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import Category, ModelhaulError
from .words import SERVICE_WORDS

_HTTP_HINT = "The API's routes are listed in /openapi.json."
_STATUS_BY_CATEGORY = {
    Category.INVALID_INPUT: 400,
    Category.NOT_FOUND: 404,
    Category.CLIENT_ERROR: 409,
    Category.DISK_FULL: 507,
    Category.PERMISSION: 500,
}


def install_error_handlers(app: FastAPI) -> None:
    """Answer the service's errors, invalid requests and the framework's errors in the API's
    shape."""

    @app.exception_handler(ModelhaulError)
    async def modelhaul_error(request: Request, exc: ModelhaulError) -> Response:
        status = _STATUS_BY_CATEGORY.get(exc.category, 500)
        return json_response({"error": exc.to_dict(SERVICE_WORDS)}, status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # One error shape for every answer. (FastAPI's own handler also echoed the input as
        # UTF-8 and failed with 500 on a lone surrogate, which JSON allows.)
        return json_response({"error": validation_error(exc.errors())}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        error = http_error_body(exc.status_code, str(exc.detail), request.method, request.url.path)
        return json_response({"error": error}, exc.status_code, headers=exc.headers)


def json_response(body: Any, status: int, headers: Mapping[str, str] | None = None) -> Response:
    """``body`` as a JSON answer with ``status``."""
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
        "category": Category.INVALID_INPUT.value,
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
    return {"category": category_of(status), "message": message, "hint": _HTTP_HINT}


def category_of(status: int) -> str:
    """The error category an HTTP status the framework or the guard answers with stands for."""
    if status >= 500:
        return Category.SERVER_ERROR.value
    known = {401: Category.AUTH, 403: Category.AUTH, 404: Category.NOT_FOUND}
    return known.get(status, Category.CLIENT_ERROR).value
