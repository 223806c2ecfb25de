"""Where a model pull's files come from: an inline manifest, a manifest URL or path, or the
Hub."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from ..config import Timeouts
from ..errors import InvalidInput
from ..sources.hf import HubSource, parse_hf_uri
from ..sources.manifest import (
    fetch_manifest as fetch_manifest_url,
)
from ..sources.manifest import (
    format_of,
    load_manifest_file,
    manifest_from_data,
)
from ..sources.model import ModelSpec


async def resolve_spec(
    request: dict[str, Any], *, hf_endpoint: str, hf_token: str | None, timeouts: Timeouts
) -> ModelSpec:
    """The model a pull request names: an inline manifest, a manifest URL or path, or hf://."""
    if request.get("manifest") is not None:
        return parse_inline_manifest(request["manifest"])
    source = str(request["source"])
    if source.startswith(("http://", "https://")):
        return await fetch_manifest(source, timeouts)
    if is_manifest_path(source):  # absolute: checked by check_manifest_path when queued
        return await asyncio.to_thread(load_manifest_file, Path(source))
    hub = HubSource(endpoint=hf_endpoint, token=hf_token, timeouts=timeouts)
    return await hub.resolve(parse_hf_uri(source))


async def fetch_manifest(url: str, timeouts: Timeouts) -> ModelSpec:
    """A manifest from a URL (at most 16 MiB, UTF-8), parsed and validated."""
    return await fetch_manifest_url(url, timeouts=timeouts)


def parse_inline_manifest(data: dict[str, Any]) -> ModelSpec:
    try:
        return manifest_from_data(data, source="manifest")
    except UnicodeEncodeError:
        # Lone surrogates are valid JSON escapes but no file name; the path checks below
        # manifest_from_data encode to UTF-8 and would crash on them.
        raise InvalidInput("manifest: a text field is not valid Unicode") from None


def is_manifest_path(source: str) -> bool:
    """Whether ``source`` names a manifest file rather than a Hub model (as ``modelhaul pull``
    decides: a path, or a .toml/.json/.yaml name)."""
    if source.startswith("hf://"):
        return False
    return source.startswith(("/", "./", "../", "~")) or format_of(source) is not None


def check_manifest_path(source: str, *, local: bool) -> Path:
    """A manifest path the service may read for this caller: absolute, from the service's own
    user on loopback (``AccessPolicy.trusts_paths_of``), naming a readable file.

    Raises:
        InvalidInput: naming what is wrong and what to send instead.
    """
    instead = "Send the manifest inline ('manifest') or as an http(s) URL."
    if not local:
        raise InvalidInput(
            f"source: {source!r} is a manifest path; this service reads paths only from the "
            "user it runs as, on loopback",
            hint=instead,
        )
    if not os.path.isabs(source):
        raise InvalidInput(
            f"source: the manifest path {source!r} is not absolute",
            hint="Give the absolute path: the service does not share your working directory.",
        )
    path = Path(os.path.normpath(source))
    try:
        readable = path.is_file() and os.access(path, os.R_OK)
    except (OSError, ValueError):  # NUL, a lone surrogate, a name too long
        readable = False
    if not readable:
        raise InvalidInput(f"source: no readable manifest file at {source!r}", hint=instead)
    return path
