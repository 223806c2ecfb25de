"""Following redirects by hand, so that credentials never follow to another host.

aiohttp would follow a redirect with the request's headers intact; here every hop is one request
without redirects, and ``policy.urls`` decides what the next hop carries (credentials only to the
scheme, host and port the user named) and whether it may be followed at all (no loops, no
non-HTTP schemes, no https->http downgrade unless allowed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

import aiohttp

from ..errors import RedirectRefused
from ..policy.urls import REDIRECT_STATUSES, headers_for_hop, next_hop
from .errors import map_error, status_error

# The Authorization value a host's netrc entry gives it, if any.
LoginLookup = Callable[[str], Awaitable[str | None]]
# The proxy (and its credentials) a request to a URL goes through; (None, None): direct.
ProxyLookup = Callable[[str], Awaitable[tuple[str | None, aiohttp.BasicAuth | None]]]


async def follow_redirects(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None,
    credential_url: str | None,
    max_redirects: int,
    allow_downgrade: bool,
    login_for: LoginLookup | None,
    proxy_for: ProxyLookup | None = None,
) -> tuple[aiohttp.ClientResponse, str]:
    """Send a request, following redirects: (the final response, its URL).

    ``credential_url`` is the URL whose host may see sensitive headers (default: ``url``);
    ``login_for`` gives a hop that carries no Authorization of its own the netrc login of its
    host; ``proxy_for`` gives each hop its proxy.

    Raises:
        HTTPStatusError: the final response's status is 400 or more.
        RedirectRefused: a redirect leads where it may not, or there are too many.
        ModelhaulError: the request failed (translated from aiohttp's or the OS's error).
    """
    trusted = credential_url or url
    seen: set[str] = set()
    current = url
    for _hop in range(max_redirects + 1):
        send = headers_for_hop(headers or {}, current, trusted=trusted)
        if login_for is not None and not any(k.lower() == "authorization" for k in send):
            login = await login_for(urlsplit(current).hostname or "")
            if login is not None:
                send["Authorization"] = login
        proxy, proxy_auth = await proxy_for(current) if proxy_for is not None else (None, None)
        try:
            resp = await session.request(
                method,
                current,
                headers=send,
                allow_redirects=False,
                proxy=proxy,
                proxy_auth=proxy_auth,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise map_error(exc, current) from exc
        if resp.status in REDIRECT_STATUSES and "Location" in resp.headers:
            location = resp.headers["Location"]
            resp.release()
            seen.add(current)
            current = next_hop(current, location, seen, allow_downgrade=allow_downgrade)
            continue
        if resp.status >= 400:
            raise await status_error(resp, current)
        return resp, current
    raise RedirectRefused(f"more than {max_redirects} redirects from {url}", reason="too_many")
