"""What guidance knows besides the error: the endpoint, the model, the cache, and the facts
read from an error's fields (its URL and host, the Hub's error code, the model page)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import HTTPStatusError, ModelhaulError, TransferError
from ..remedies import Remedy, Words, say

DEFAULT_ENDPOINT = "https://huggingface.co"
DOCTOR_COMMAND = "modelhaul doctor"
TOKENS_PAGE = "https://huggingface.co/settings/tokens"
SET_TOKEN = (
    "Set it for modelhaul: export HF_TOKEN=hf_... (or save it with 'hf auth login', which "
    "huggingface_hub and modelhaul both read), then run the same command again."
)


@dataclass(frozen=True, slots=True)
class Context:
    """What the caller of ``explain`` knows: the endpoint, the model, the cache, and the words
    of the face that shows the steps (a step that names a setting is a Remedy it words)."""

    endpoint: str
    model: str | None
    cache_root: str | None
    store_bytes: int | None
    words: Words

    # Tokens come from huggingface.co even when HF_ENDPOINT names a mirror, which forwards them.
    tokens_page: str = TOKENS_PAGE

    def say(self, remedy: Remedy, /, **fields: object) -> str:
        """The step ``remedy`` in the face's words."""
        return say(self.words, remedy, **fields)


# (why, steps) for one category; why None: nothing to add to the error's own hint.
Explainer = Callable[[ModelhaulError, Context], tuple[str | None, list[str]]]


def error_code(err: ModelhaulError) -> str | None:
    return err.error_code if isinstance(err, HTTPStatusError) else None


def url_of(err: ModelhaulError) -> str | None:
    return err.url if isinstance(err, TransferError) else None


def host_of(err: ModelhaulError) -> str:
    url = url_of(err)
    if url:
        host = urlsplit(url).netloc
        if host:
            return host
    return "the server"


def is_hub(err: ModelhaulError, ctx: Context) -> bool:
    """Did the error come from the Hub (the endpoint, or huggingface.co itself)?"""
    if error_code(err):
        return True
    url = url_of(err)
    if not url:
        return ctx.model is not None
    host = (urlsplit(url).hostname or "").lower()
    endpoint_host = (urlsplit(ctx.endpoint).hostname or "").lower()
    # The Hub's own hosts and its CDNs (cdn-lfs.huggingface.co, cas-bridge.xethub.hf.co).
    return host == endpoint_host or any(
        host == hub or host.endswith("." + hub) for hub in ("huggingface.co", "hf.co")
    )


def model_id(model: str | None) -> str | None:
    if not model:
        return None
    text = model.removeprefix("hf://")
    return text.partition("@")[0].strip("/") or None


def page_of(err: ModelhaulError, ctx: Context) -> str:
    """The model's page on the Hub, from the model name or the failing URL."""
    if ctx.model:
        return f"{ctx.endpoint}/{ctx.model}"
    url = url_of(err)
    if url:
        parts = urlsplit(url)
        base = f"{parts.scheme}://{parts.netloc}"
        path = parts.path
        if "/resolve/" in path:
            return base + path.split("/resolve/", 1)[0]
        m = re.match(r"/api/(models|datasets|spaces)/([^/]+(?:/[^/]+)?)", path)
        if m:
            kind, repo = m.groups()
            repo = repo.split("/revision", 1)[0].split("/tree", 1)[0]
            return f"{base}/{'' if kind == 'models' else kind + '/'}{repo}"
        if path.strip("/"):
            return base + path.rstrip("/")
    return f"{ctx.endpoint}/ORG/NAME"
