"""Diagnostic requests: one HTTP answer, whatever its status, or the stage that failed.

``modelhaul doctor`` reads the status and headers of whatever comes back (a 401, a 407, a 5xx)
and, when nothing comes back, says whether TLS, the proxy or the HTTP exchange failed. The
transport's ``request`` retries and raises on error statuses, so the doctor asks through this
module instead, and aiohttp stays inside ``http/``.

    >>> async with open_probe_session(timeout_s=5.0) as probe:  # doctest: +SKIP
    ...     answer = await probe.fetch("HEAD", "https://huggingface.co/", follow_redirects=False)
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp

from ..errors import ModelhaulError
from .errors import FailedStage, failed_stage, map_error

ProbeStage = FailedStage


@dataclass(frozen=True, slots=True)
class ProbeAnswer:
    """An HTTP answer: ``headers`` look names up case-insensitively; ``body`` is read only for
    a 2xx status, and only up to the ``body_bytes`` the caller asked for."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class ProbeFailure:
    """No HTTP answer: the error in modelhaul's words, and the stage that failed."""

    error: ModelhaulError
    stage: ProbeStage


class ProbeSession:
    """Requests that report, not retry: use ``open_probe_session`` to get one."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def fetch(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool = True,
        body_bytes: int = 0,
    ) -> ProbeAnswer | ProbeFailure:
        """One request; a ``ProbeFailure`` for network, TLS, proxy and timeout errors.

        Raises:
            ValueError: a URL or header aiohttp refuses to send.
        """
        try:
            async with self._session.request(
                method, url, headers=headers, allow_redirects=follow_redirects
            ) as resp:
                ok = 200 <= resp.status < 300
                body = await resp.content.read(body_bytes) if ok and body_bytes > 0 else b""
                return ProbeAnswer(resp.status, resp.headers, body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return ProbeFailure(map_error(exc, url), failed_stage(exc))


@contextlib.asynccontextmanager
async def open_probe_session(
    *, timeout_s: float, user_agent: str = "modelhaul-doctor"
) -> AsyncIterator[ProbeSession]:
    """A session as downloads make it: the default TLS context (SSL_CERT_FILE honoured) and the
    proxies from the environment. ``timeout_s`` bounds connecting and each read; a request as a
    whole gets twice that."""
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context())
    timeout = aiohttp.ClientTimeout(
        total=timeout_s * 2, sock_connect=timeout_s, sock_read=timeout_s
    )
    async with aiohttp.ClientSession(
        connector=connector,
        trust_env=True,
        timeout=timeout,
        headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
    ) as session:
        yield ProbeSession(session)


__all__ = ["ProbeAnswer", "ProbeFailure", "ProbeSession", "ProbeStage", "open_probe_session"]
