"""The API's request and response bodies: pydantic models with limits, so a request that does
not fit is refused (422) before any route runs, and ``/openapi.json`` describes them all."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from .jobs import PRIORITY_MAX, PRIORITY_MIN

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


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody},
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    422: {"model": ErrorBody, "description": "the request does not match this schema"},
}
