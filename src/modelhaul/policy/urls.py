"""URLs as values: which are acceptable, whose they are, and where a redirect may lead.

Pure (no I/O): the HTTP client (``http/redirects.py``) asks these functions what to send to each
hop, and the faces check a URL before any request. Credentials (Authorization, Cookie,
Proxy-Authorization) go only to the scheme, host and port the user named: a presigned CDN URL
needs none, and a malicious redirect must not harvest them. Redirect loops, non-HTTP schemes and
https->http downgrades are refused.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping
from urllib.parse import unquote, urljoin, urlsplit

from ..errors import InvalidInput, RedirectRefused
from ..remedies import Remedy

SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def check_url(url: str) -> str:
    """Return ``url`` if it is an absolute http(s) URL with a usable host and port.

    The list reader, the manager and the engine each check a URL; a good URL's answer is
    remembered (for the last few thousand), so a list of small files pays for one check each.

    Checked before any request: a malformed host would otherwise go to DNS and be retried as a
    network failure, for seconds, although no attempt can ever succeed.

    Raises:
        InvalidInput: the URL has a control character, another scheme, no host, a host with
            characters no host name has, or a port that is not one.
    """
    return _check_url_once(url)


# Pure, so a good URL's answer can be kept (a refused one raises and is not).
@functools.lru_cache(maxsize=4096)
def _check_url_once(url: str) -> str:
    if _CONTROL.search(url):
        # urlsplit silently drops tabs and newlines, so it cannot be left to see them.
        raise InvalidInput(f"bad URL {url!r}: it contains a control character", hint=_URL_HINT)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidInput(f"bad URL {url!r}: {exc}", hint=_URL_HINT) from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput(
            f"unsupported URL scheme in {url!r}",
            hint="Use an http:// or https:// URL (hf://ORG/NAME goes to 'modelhaul pull').",
        )
    if not parts.hostname:
        raise InvalidInput(f"bad URL {url!r}: no host", hint=_URL_HINT)
    # Percent-decoded first, as a client would before resolving: h%20x is "h x" too. An IPv6
    # literal ([...]) urlsplit has checked already.
    bad = next((ch for ch in unquote(parts.hostname) if not _host_char(ch)), None)
    if bad is not None and "[" not in parts.netloc:
        raise InvalidInput(
            f"bad URL {url!r}: the host {parts.hostname!r} contains {_describe(bad)}",
            hint=_URL_HINT,
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"bad URL {url!r}: {exc}", hint=_URL_HINT) from exc
    if port == 0:
        raise InvalidInput(f"bad URL {url!r}: port 0 is not a port to connect to", hint=_URL_HINT)
    return url


_URL_HINT = (
    "Check the URL for a typo: the host is a name or address without spaces, and a port is a "
    "number from 1 to 65535."
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # one search per URL: lists check thousands
# RFC 3986 reg-name once decoded: unreserved and sub-delims; no other ASCII belongs there.
_HOST_ASCII = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;="
)


def _host_char(ch: str) -> bool:
    """Whether ``ch`` may appear in a host name (non-ASCII letters: internationalised names)."""
    if ch.isascii():
        return ch in _HOST_ASCII
    return ch.isprintable() and not ch.isspace()


def _describe(ch: str) -> str:
    return "a space" if ch.isspace() else f"the character {ch!r}"


def origin_of(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, lower-cased: what decides who may see credentials."""
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def same_host(a: str, b: str) -> bool:
    """Credentials may go to b if it is the same scheme, host and port as a."""
    return origin_of(a) == origin_of(b)


def host_of(url: str) -> str:
    """The host (and port) of ``url`` as messages name it; the URL itself when it has none."""
    return urlsplit(url).netloc or url


def strip_sensitive(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` without the credentials in SENSITIVE_HEADERS."""
    return {k: v for k, v in headers.items() if k.lower() not in SENSITIVE_HEADERS}


def headers_for_hop(headers: Mapping[str, str], url: str, *, trusted: str) -> dict[str, str]:
    """The headers a request to ``url`` carries: all of them on ``trusted``'s scheme, host and
    port, and none of the credentials anywhere else."""
    send = dict(headers)
    # The first hop is the trusted URL itself: no parsing for the request of every file.
    return send if url == trusted or same_host(trusted, url) else strip_sensitive(send)


def next_hop(
    current: str, location: str, seen: Collection[str], *, allow_downgrade: bool = False
) -> str:
    """The URL a redirect from ``current`` to ``location`` leads to, once it is allowed.

    Args:
        current: the URL that answered with the redirect.
        location: its Location header, absolute or relative to ``current``.
        seen: every URL already requested in this chain.
        allow_downgrade: follow https -> http (the user trusts this server).

    Raises:
        RedirectRefused: a non-HTTP target, an https -> http downgrade not allowed, or a loop.
    """
    target = urljoin(current, location)
    scheme = urlsplit(target).scheme.lower()
    if scheme not in ("http", "https"):
        raise RedirectRefused(
            f"refusing a redirect to a non-HTTP URL: {target[:200]}", reason="scheme"
        )
    downgrade = scheme == "http" and urlsplit(current).scheme.lower() == "https"
    if downgrade and not allow_downgrade:
        raise RedirectRefused(
            f"refusing an https -> http downgrade redirect to {host_of(target)}",
            reason="downgrade",
            remedy=Remedy.ALLOW_DOWNGRADE,
        )
    if target in seen:
        raise RedirectRefused(f"redirect loop at {target[:200]}", reason="loop")
    return target
