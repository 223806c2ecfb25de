"""What to tell a user when a download fails for good: what happened, why, and what to try.

Pure: no I/O, no environment reads. Everything specific (the endpoint, the model, the cache root)
is passed in by the caller, and everything else is read from the error's fields (its category,
HTTP status, the Hub's ``X-Error-Code``, ``Retry-After``, how and where a connection failed,
a ``DiskFull``'s sizes), never from its message's wording. Advice about HF_ENDPOINT, HF_TOKEN
or HF_HUB_OFFLINE is given only when the Hub was involved: a plain URL's failure is about that
URL.
A ``RetriesExhausted`` is explained by the error that ended it.

The package: this module dispatches by category; ``answers`` explains a server's answers,
``connection`` failed connections, ``local`` the disk, integrity and the user's input;
``context`` holds what is known besides the error. A step that names a setting is a
:class:`~modelhaul.remedies.Remedy`, worded by the face that shows it (``words``).

    >>> g = explain(HTTPStatusError(429, "https://huggingface.co/api/models/x", retry_after_s=30))
    >>> g.steps[0]
    'Wait 30 s (the server asked for that in Retry-After), then run the same command again.'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import Category, ModelhaulError, RedirectRefused, RetriesExhausted, TransferError
from ..remedies import LIBRARY_WORDS, Words
from . import answers, connection, local
from .context import (
    DEFAULT_ENDPOINT,
    DOCTOR_COMMAND,
    TOKENS_PAGE,
    Context,
    Explainer,
    model_id,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "DOCTOR_COMMAND",
    "TOKENS_PAGE",
    "Guidance",
    "explain",
    "format_guidance",
]


@dataclass(frozen=True, slots=True)
class Guidance:
    """What happened, why it is likely, and the steps to fix it, in the order to try them.

    ``why`` is None when nothing specific can be said beyond the error's own message and hint
    (a model not in the store, a download the service does not know): a vague reason would
    only be filler.
    """

    what: str
    why: str | None
    steps: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"what": self.what}
        if self.why:
            out["why"] = self.why
        out["steps"] = list(self.steps)
        return out


# Categories that describe a server's answer; an error in one of them that did not come from a
# request (a model not in the store, an unknown download ID) is explained by its own hint.
_WIRE_CATEGORIES = frozenset(
    {
        Category.NOT_FOUND,
        Category.AUTH,
        Category.RATE_LIMITED,
        Category.SERVER_ERROR,
        Category.CLIENT_ERROR,
    }
)


def explain(
    err: ModelhaulError,
    *,
    endpoint: str | None = None,
    model: str | None = None,
    cache_root: str | None = None,
    store_bytes: int | None = None,
    words: Words = LIBRARY_WORDS,
) -> Guidance:
    """Guidance for an error that ended a download.

    Args:
        err: the error; a ``RetriesExhausted`` is explained by its last attempt.
        endpoint: the Hub endpoint in use (``HF_ENDPOINT``); default https://huggingface.co.
        model: ``ORG/NAME`` (``hf://`` and ``@REVISION`` are dropped) for model pages and
            ``modelhaul verify``.
        cache_root: the cache directory, for disk and permission advice.
        store_bytes: the cache's current size, if known, to give the exact size to ``gc``
            that frees enough when the disk is full.
        words: how the face that shows the steps words each Remedy (default: the library's;
            the CLI passes its flags, ``cli/words.py``).
    """
    cause = err
    while isinstance(cause, RetriesExhausted):
        cause = cause.last
    ctx = Context(
        endpoint=(endpoint or DEFAULT_ENDPOINT).rstrip("/"),
        model=model_id(model),
        cache_root=cache_root,
        store_bytes=store_bytes,
        words=words,
    )
    if cause.category in _WIRE_CATEGORIES and not isinstance(
        cause, TransferError | RedirectRefused
    ):
        return Guidance(what=err.message, why=None, steps=())
    explainer = _BY_CATEGORY.get(cause.category, answers.client_error)
    why, steps = explainer(cause, ctx)
    return Guidance(what=err.message, why=why, steps=tuple(steps))


def format_guidance(g: Guidance) -> list[str]:
    """The lines to print under ``modelhaul: error: ...`` and its hint (no trailing newlines).

    ::

          why: the model is gated: ...
          try: 1. Open https://huggingface.co/org/name ...
               2. Create a token ...
    """
    lines = [f"  why: {g.why}"] if g.why else []
    for i, step in enumerate(g.steps, 1):
        lead = "  try: " if i == 1 else "       "
        lines.append(f"{lead}{i}. {step}")
    return lines


_BY_CATEGORY: dict[Category, Explainer] = {
    Category.AUTH: answers.auth,
    Category.NOT_FOUND: answers.not_found,
    Category.RATE_LIMITED: answers.rate_limited,
    Category.SERVER_ERROR: answers.server_error,
    Category.CLIENT_ERROR: answers.client_error,
    Category.NETWORK: connection.network,
    Category.TIMEOUT: connection.timeout,
    Category.INTEGRITY: local.integrity,
    Category.DISK_FULL: local.disk_full,
    Category.PERMISSION: local.permission,
    Category.INVALID_INPUT: local.invalid_input,
    Category.CANCELLED: local.cancelled,
}
