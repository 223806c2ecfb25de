"""The client session: Transport owns aiohttp's pooled session, sets up each request, and reads
netrc once.

``Transport.request`` is the one way the library sends an HTTP request: redirects are followed
by ``redirects.py``, errors translated by ``errors.py``, and the answer is a ``Response``.
"""

from __future__ import annotations

import asyncio
import netrc
import os
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Self

import aiohttp

from ..config import DownloadConfig, default_netrc_path
from . import aiohttp_internals as internals
from .redirects import follow_redirects
from .response import Response


class Transport:
    """A pooled aiohttp session plus the redirect and error policy."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 30.0,
        stall_timeout_s: float = 30.0,
        verify_tls: bool = True,
        trust_env: bool = True,
        read_buffer_bytes: int = 4 * 1024 * 1024,
        limit: int = 0,
        limit_per_host: int = 0,
        max_redirects: int = 10,
        allow_https_downgrade: bool = False,
        user_agent: str = "modelhaul",
        netrc_path: str | os.PathLike[str] | None = None,  # None: config.default_netrc_path()
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._stall_timeout_s = stall_timeout_s
        self._verify_tls = verify_tls
        self._trust_env = trust_env
        self._read_buffer_bytes = read_buffer_bytes
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._max_redirects = max_redirects
        self._allow_downgrade = allow_https_downgrade
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._netrc_on = False
        self._netrc: netrc.netrc | bool | None = None  # None: not read yet; False: none
        self._netrc_path = default_netrc_path() if netrc_path is None else netrc_path

    @classmethod
    def for_config(cls, cfg: DownloadConfig, *, limit: int = 0, limit_per_host: int = 0) -> Self:
        """A transport with a download configuration's timeouts, TLS, proxy and redirect policy."""
        return cls(
            connect_timeout_s=cfg.timeouts.connect_s,
            stall_timeout_s=cfg.timeouts.stall_s,
            verify_tls=cfg.verify_tls,
            trust_env=cfg.trust_env,
            read_buffer_bytes=cfg.segments.read_buffer_bytes,
            limit=limit,
            limit_per_host=limit_per_host,
            max_redirects=cfg.max_redirects,
            allow_https_downgrade=cfg.allow_https_downgrade,
            user_agent=cfg.user_agent,
        )

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is not None:
            return
        # True: aiohttp's verified default context, built once at import from the system store
        # (SSL_CERT_FILE / SSL_CERT_DIR honoured); building our own costs ~30 ms per start.
        ssl_ctx: ssl.SSLContext | bool = self._verify_tls
        connector = aiohttp.TCPConnector(
            limit=self._limit,
            limit_per_host=self._limit_per_host,
            ssl=ssl_ctx,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=self._trust_env,
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self._connect_timeout_s,
                sock_read=self._stall_timeout_s,
            ),
            read_bufsize=self._read_buffer_bytes,
            auto_decompress=True,
            headers={"User-Agent": self._user_agent, "Accept-Encoding": "identity"},
        )
        # The engine owns retries: aiohttp's silent resend of a request would bypass them.
        internals.disable_connection_retry(self._session)
        # Read once here, and an entry added only to a hop that has no Authorization of its own
        # (aiohttp would refuse a token alongside a netrc entry).
        if self._trust_env:
            self._netrc_on = internals.disable_netrc_lookup(self._session)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        credential_url: str | None = None,
    ) -> Response:
        """Send a request, following redirects by hand; raise HTTPStatusError for >= 400.

        ``credential_url`` is the URL whose host may see sensitive headers (default: ``url``).
        """
        if self._session is None:
            await self.open()
        assert self._session is not None
        resp, final_url = await follow_redirects(
            self._session,
            method,
            url,
            headers=headers,
            credential_url=credential_url,
            max_redirects=self._max_redirects,
            allow_downgrade=self._allow_downgrade,
            login_for=self._netrc_login if self._netrc_on else None,
        )
        return Response(resp, final_url, self._stall_timeout_s)

    async def _netrc_login(self, host: str) -> str | None:
        """The Basic Authorization value ~/.netrc (or $NETRC) gives ``host``, if any."""
        if self._netrc is None:
            self._netrc = await asyncio.to_thread(_load_netrc, self._netrc_path)
        if self._netrc is False:
            return None
        entry = self._netrc.authenticators(host)
        if entry is None:
            return None
        login, account, password = entry
        return aiohttp.BasicAuth(login or account or "", password or "").encode()


def _load_netrc(path: str | os.PathLike[str]) -> netrc.netrc | bool:
    """The netrc file at ``path``, or False when there is none (or it does not parse), as curl
    --netrc-optional and requests treat it."""
    try:
        return netrc.netrc(path)
    except (OSError, netrc.NetrcParseError):
        return False


async def sleep_s(seconds: float) -> None:
    """Backoff sleeps live here so tests can see every wait goes through one place."""
    await asyncio.sleep(seconds)
