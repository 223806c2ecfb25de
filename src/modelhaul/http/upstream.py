"""Small requests to an upstream API, answered as they come: the Hub mirror's metadata calls.

The transport (``session.py``) raises on error statuses and follows redirects, as a download
wants; a mirror instead relays the Hub's own answer (a 404 with its ``X-Error-Code``, a 302 to
the CDN) to its client, so here every request is one exchange, read whole (up to a bound), and
only a failure to get any answer is an error.

    >>> async with UpstreamSession(timeout_s=10) as up:  # doctest: +SKIP
    ...     answer = await up.fetch("GET", "https://huggingface.co/api/models/gpt2")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import aiohttp
from multidict import CIMultiDict

from ..errors import InvalidInput
from . import aiohttp_internals as internals
from .errors import map_error

# Metadata answers (a repo's info, a page of its tree) are small; a bigger one is refused
# rather than held in memory.
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """One HTTP answer, whatever its status; ``headers`` look names up case-insensitively."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class UpstreamSession:
    """A pooled session for metadata requests: no redirects followed, no retries, proxies from
    the environment, each request bounded by ``timeout_s``."""

    def __init__(self, *, timeout_s: float = 30.0, user_agent: str = "modelhaul-mirror") -> None:
        self._timeout_s = timeout_s
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                trust_env=True,
                timeout=aiohttp.ClientTimeout(
                    total=self._timeout_s * 2,
                    sock_connect=self._timeout_s,
                    sock_read=self._timeout_s,
                ),
                headers={"User-Agent": self._user_agent, "Accept-Encoding": "identity"},
            )
            # No silent resend: a caller that wants a retry decides so itself.
            internals.disable_connection_retry(self._session)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None
    ) -> UpstreamAnswer:
        """One request, redirects not followed; the body read whole (never for HEAD).

        Raises:
            NetworkError, StallTimeout: no answer (translated by ``errors.map_error``).
            InvalidInput: an answer larger than ``MAX_BODY_BYTES``.
        """
        session = self._open()
        try:
            async with session.request(
                method, url, headers=dict(headers or {}), allow_redirects=False
            ) as resp:
                body = b""
                if method != "HEAD":
                    if (resp.content_length or 0) > MAX_BODY_BYTES:
                        raise InvalidInput(f"the answer from {url} is too large")
                    body = await resp.content.read(MAX_BODY_BYTES + 1)
                    while len(body) <= MAX_BODY_BYTES and not resp.content.at_eof():
                        more = await resp.content.read(MAX_BODY_BYTES + 1 - len(body))
                        if not more:
                            break
                        body += more
                    if len(body) > MAX_BODY_BYTES:
                        raise InvalidInput(f"the answer from {url} is too large")
                return UpstreamAnswer(resp.status, CIMultiDict(resp.headers), body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise map_error(exc, url) from exc


__all__ = ["MAX_BODY_BYTES", "UpstreamAnswer", "UpstreamSession"]
