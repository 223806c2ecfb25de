"""The client session: Transport owns aiohttp's pooled session, sets up each request, and reads
netrc and the proxy settings once.

``Transport.request`` is the one way the library sends an HTTP request: redirects are followed
by ``redirects.py``, errors translated by ``errors.py``, and the answer is a ``Response``.
"""

from __future__ import annotations

import asyncio
import netrc
import os
import ssl
import urllib.request
from collections.abc import Mapping
from typing import Self
from urllib.parse import unquote, urlsplit

import aiohttp

from ..config import DownloadConfig, default_netrc_path
from ..policy.lifecycle import AsyncResource
from . import aiohttp_internals as internals
from .redirects import follow_redirects
from .response import Response

# A request's proxy and its credentials; (None, None) for a direct connection.
Proxy = tuple[str | None, aiohttp.BasicAuth | None]
# Origins whose proxy is remembered by their text (a Hub download meets three or four).
_ORIGINS_KEPT = 256


class Transport(AsyncResource):
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
        self._proxies: dict[tuple[str, str], asyncio.Future[Proxy]] = {}  # by (scheme, host)
        # The same answers by the URL's text up to its path ("http://host:port"): no parsing
        # of the URL of every file of a list (urlsplit's own cache keeps 128 URLs).
        self._proxy_by_origin: dict[str, Proxy] = {}

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
            # The environment is read here, once per host (proxy_for): with trust_env aiohttp
            # reads it, and stats ~/.netrc, in a worker thread for every request.
            trust_env=False,
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
        # netrc is read once here, and an entry added only to a hop that has no Authorization of
        # its own (aiohttp would refuse a token alongside a netrc entry).
        self._netrc_on = self._trust_env

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    aclose = close  # the name async with (AsyncResource) calls

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
            # Once netrc is known to be absent, no lookup per request.
            login_for=self._netrc_login if self._netrc_on and self._netrc is not False else None,
            proxy_for=self._proxy_for if self._trust_env else None,
        )
        return Response(resp, final_url, self._stall_timeout_s)

    async def _proxy_for(self, url: str) -> Proxy:
        """The proxy the environment names for ``url`` (HTTP(S)_PROXY, NO_PROXY), as aiohttp's
        trust_env picks it; worked out once per scheme and host."""
        origin = _origin_of(url)
        known = self._proxy_by_origin.get(origin) if origin is not None else None
        if known is not None:  # every request of a list but the first to its host
            return known
        proxy = await self._proxy_for_host(url)
        if origin is not None and len(self._proxy_by_origin) < _ORIGINS_KEPT:
            self._proxy_by_origin[origin] = proxy
        return proxy

    async def _proxy_for_host(self, url: str) -> Proxy:
        parts = urlsplit(url)
        key = (parts.scheme.lower(), (parts.hostname or "").lower())
        found = self._proxies.get(key)
        if found is None:
            # One lookup per host, shared by the requests that wait for it.
            found = self._proxies[key] = asyncio.ensure_future(self._look_up_proxy(*key))
        if found.done():  # every request but the first few: no shield and its callbacks
            return found.result()
        return await asyncio.shield(found)

    async def _look_up_proxy(self, scheme: str, host: str) -> Proxy:
        if self._netrc is None:
            self._netrc = await asyncio.to_thread(_load_netrc, self._netrc_path)
        rc = self._netrc if isinstance(self._netrc, netrc.netrc) else None
        # Off the loop: on macOS and Windows the bypass list is read from the system.
        return await asyncio.to_thread(_env_proxy, scheme, host, rc)

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


def _origin_of(url: str) -> str | None:
    """``url``'s text before its path ("http://user@host:port"), or None when that is not
    plain (no "//", or a query or fragment with no path before it)."""
    start = url.find("//")
    if start < 0:
        return None
    end = url.find("/", start + 2)
    origin = url if end < 0 else url[:end]
    return None if "?" in origin or "#" in origin else origin


def _env_proxy(scheme: str, host: str, rc: netrc.netrc | None) -> Proxy:
    """The proxy for ``scheme``://``host`` from the environment, as aiohttp's trust_env reads
    it: none when NO_PROXY names the host, HTTPS proxies ignored (aiohttp cannot use them),
    credentials from the proxy URL, else from netrc for the proxy's host."""
    if host and urllib.request.proxy_bypass(host):
        return None, None
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy:
        return None, None
    parts = urlsplit(proxy)
    if parts.scheme.lower() in ("https", "wss") or not parts.hostname:
        return None, None
    auth = None
    if parts.username is not None:
        auth = aiohttp.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
        proxy = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    elif rc is not None and (entry := rc.authenticators(parts.hostname)) is not None:
        login, account, password = entry
        auth = aiohttp.BasicAuth(login or account or "", password or "")
    return proxy, auth


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
