"""Where a model pull's files come from: an inline manifest, a manifest URL, or the Hub."""

from __future__ import annotations

from typing import Any

from ..config import Timeouts
from ..errors import InvalidInput
from ..sources.hf import HubSource, parse_hf_uri
from ..sources.manifest import (
    fetch_manifest as fetch_manifest_url,
)
from ..sources.manifest import (
    manifest_from_data,
)
from ..sources.model import ModelSpec


async def resolve_spec(
    request: dict[str, Any], *, hf_endpoint: str, hf_token: str | None, timeouts: Timeouts
) -> ModelSpec:
    """The model a pull request names: an inline manifest, a manifest URL, or hf://."""
    if request.get("manifest") is not None:
        return parse_inline_manifest(request["manifest"])
    source = str(request["source"])
    if source.startswith(("http://", "https://")):
        return await fetch_manifest(source, timeouts)
    hub = HubSource(endpoint=hf_endpoint, token=hf_token)
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
