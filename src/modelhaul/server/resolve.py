"""Where a model pull's files come from: an inline manifest, a manifest URL, or the Hub."""

from __future__ import annotations

from typing import Any

from ..config import Timeouts
from ..errors import InvalidInput
from ..sources.hf import HubSource, parse_hf_uri
from ..sources.manifest import (
    MAX_MANIFEST_BYTES,
    format_of,
    manifest_from_data,
    parse_manifest_text,
    sniff_format,
)
from ..sources.model import ModelSpec
from ..transport import Transport


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
    async with Transport(
        connect_timeout_s=timeouts.connect_s, stall_timeout_s=timeouts.stall_s
    ) as tr:
        resp = await tr.request("GET", url)
        chunks: list[bytes] = []
        size = 0
        try:
            while chunk := await resp.read_chunk():
                size += len(chunk)
                if size > MAX_MANIFEST_BYTES:
                    raise InvalidInput(f"manifest {url} is larger than 16 MiB")
                chunks.append(chunk)
        finally:
            resp.close()
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"manifest {url} is not UTF-8 text") from None
    return parse_manifest_text(text, fmt=format_of(url) or sniff_format(text), source=url)


def parse_inline_manifest(data: dict[str, Any]) -> ModelSpec:
    try:
        return manifest_from_data(data, source="manifest")
    except UnicodeEncodeError:
        # Lone surrogates are valid JSON escapes but no file name; the path checks below
        # manifest_from_data encode to UTF-8 and would crash on them.
        raise InvalidInput("manifest: a text field is not valid Unicode") from None
