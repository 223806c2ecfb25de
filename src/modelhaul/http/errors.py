"""Where third-party errors become modelhaul errors: the one place aiohttp, OS and SSL errors
(and error statuses) are translated. Callers chain the result ``from exc``.

Messages say what happened in the user's words ("cannot connect to 127.0.0.1:9 (connection
refused)"); aiohttp's own text describes its internals and stays in the chained ``__cause__``.
"""

from __future__ import annotations

import errno as _errno
import os
import socket
import ssl
from typing import Literal

import aiohttp

from ..errors import (
    HTTPStatusError,
    InvalidInput,
    ModelhaulError,
    NetworkError,
    NetworkKind,
    StallTimeout,
    TruncatedBody,
    network_kind,
)
from ..policy.backoff import parse_retry_after
from ..policy.urls import host_of


def map_error(exc: Exception, url: str) -> ModelhaulError:
    """The one place where aiohttp/OS errors become modelhaul errors.

    Messages say what happened in the user's words ("cannot connect to 127.0.0.1:9 (connection
    refused)"); aiohttp's own text ("Cannot connect to host ... ssl:default [...]") describes
    its internals and stays in the chained ``__cause__``. How the connection failed goes in
    ``NetworkError.kind``, so guidance need not read the message.
    """
    if isinstance(exc, ModelhaulError):
        return exc
    host = host_of(url)
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return StallTimeout(f"no data from {host} within the timeout")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TruncatedBody(f"the connection to {host} ended early, before the whole response")
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return _tls_error(exc, url, host)
    if isinstance(exc, aiohttp.InvalidURL):
        return InvalidInput(f"bad URL {url!r}")
    if isinstance(exc, aiohttp.ClientHttpProxyError | aiohttp.ClientProxyConnectionError):
        return _proxy_error(exc, url, host)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return NetworkError(
            f"{host} closed the connection unexpectedly", hint=_RESUME, url=url, kind="closed"
        )
    if isinstance(exc, OSError):
        return _connection_error(exc, url, host)
    if isinstance(exc, aiohttp.ClientError):
        return NetworkError(f"the request to {host} failed ({type(exc).__name__})", url=url)
    return NetworkError(f"{type(exc).__name__}: {exc}", url=url)


_RESUME = "Run the same command again: it resumes from the data already received."
_CONNECT_HINTS = {
    "dns": "Check the host name and the network's DNS (or HTTPS_PROXY, where only a proxy "
    "reaches out), then run again.",
    "refused": "Check that the server is running and the host and port are right, then run again.",
    "unreachable": "Check the network connection (and HTTPS_PROXY, where only a proxy reaches "
    "out), then run again.",
    "reset": _RESUME,
}


def _tls_error(exc: Exception, url: str, host: str) -> NetworkError:
    if isinstance(exc, ssl.SSLCertVerificationError):  # aiohttp's certificate error is one too
        if network_kind(exc) is NetworkKind.TLS_NAME:
            # Trusted or not, a certificate for another name fails whatever CA bundle is used.
            return NetworkError(
                f"TLS verification failed for {host}: the certificate is for another host name "
                f"({_verify_message(exc) or 'hostname mismatch'})",
                hint=f"Check the host in the URL: connect by the name the certificate is for, "
                f"not by an address or an alias of {host}.",
                url=url,
                kind="tls_name",
            )
        return NetworkError(
            f"TLS verification failed for {host}: {_certificate_problem(exc)}",
            hint="If you are behind a proxy with its own CA, point SSL_CERT_FILE at its "
            "certificate bundle.",
            url=url,
            kind="tls",
        )
    if not isinstance(exc, aiohttp.ClientConnectorError):  # on an open connection
        return NetworkError(f"the TLS connection to {host} failed ({_ssl_reason(exc)})", url=url)
    return NetworkError(
        f"the TLS handshake with {host} failed ({_ssl_reason(exc)})",
        hint="Check the URL's scheme and port (https:// needs a port that speaks TLS) and "
        "that no proxy interferes.",
        url=url,
        kind="tls_handshake",
    )


def _proxy_error(
    exc: aiohttp.ClientHttpProxyError | aiohttp.ClientProxyConnectionError, url: str, host: str
) -> ModelhaulError:
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return NetworkError(
            f"cannot connect to the proxy {exc.host}:{exc.port} ({_os_reason(exc.os_error)})",
            hint="Check HTTPS_PROXY/HTTP_PROXY and that the proxy is up.",
            url=url,
            kind="proxy",
        )
    if exc.status == 407:
        return HTTPStatusError(407, url, message=f"the proxy wants credentials to reach {host}")
    return NetworkError(
        f"the proxy refused to connect to {host} (HTTP {exc.status})",
        hint="Check HTTPS_PROXY/HTTP_PROXY and the proxy's rules; hosts in NO_PROXY bypass it.",
        url=url,
        kind="proxy",
    )


def _connection_error(exc: OSError, url: str, host: str) -> NetworkError:
    """A connect that failed (aiohttp's ClientConnectorError wraps the OS error), or an OS
    error on an open connection."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        dns = isinstance(exc, aiohttp.ClientConnectorDNSError)
        kind = _os_kind(exc.os_error, dns=dns)
        reason = "host name not found" if kind == "dns" else _os_reason(exc.os_error)
        what = f"cannot connect to {host} ({reason})"
    else:
        kind = _os_kind(exc)
        what = (
            f"the connection to {host} was reset"
            if kind == "reset"
            else f"the connection to {host} failed ({_os_reason(exc)})"
        )
    return NetworkError(what, hint=_CONNECT_HINTS.get(kind or ""), url=url, kind=kind)


_KIND_OF_ERRNO = {
    _errno.ECONNREFUSED: "refused",
    _errno.ECONNRESET: "reset",
    _errno.EPIPE: "reset",
    _errno.ECONNABORTED: "reset",
    _errno.ENETUNREACH: "unreachable",
    _errno.EHOSTUNREACH: "unreachable",
    _errno.ETIMEDOUT: "unreachable",
}


def _os_kind(err: Exception | None, *, dns: bool = False) -> str | None:
    """Which of NETWORK_KINDS an OS error is (None: none of them)."""
    if dns or isinstance(err, socket.gaierror):
        return "dns"
    return _KIND_OF_ERRNO.get(getattr(err, "errno", None) or 0)


def _os_reason(err: Exception | None) -> str:
    """An OS error in a few plain words: "connection refused", not "Connect call failed
    ('127.0.0.1', 9)" (asyncio's wording of ECONNREFUSED)."""
    if isinstance(err, OSError) and not isinstance(err, socket.gaierror) and err.errno:
        return os.strerror(err.errno).lower()
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return "an unknown error"


def _verify_message(exc: Exception) -> str | None:
    cert = getattr(exc, "certificate_error", exc)
    message = getattr(cert, "verify_message", None)
    return message if isinstance(message, str) and message else None


def _certificate_problem(exc: Exception) -> str:
    message = _verify_message(exc)
    return f"certificate not trusted ({message})" if message else "certificate not trusted"


def _ssl_reason(exc: Exception) -> str:
    ssl_error = getattr(exc, "os_error", exc)
    reason = getattr(ssl_error, "reason", None)
    return reason.lower().replace("_", " ") if isinstance(reason, str) else "no details"


# The stage of a request that failed, as the doctor reports it.
FailedStage = Literal["tls", "tls_name", "proxy", "http"]


def failed_stage(exc: Exception) -> FailedStage:
    """Which stage an aiohttp/OS error of a request failed at: TLS (a certificate for another
    host name apart), the proxy, or the HTTP exchange (everything else)."""
    if isinstance(exc, ssl.SSLError | aiohttp.ClientSSLError):
        return "tls_name" if network_kind(exc) is NetworkKind.TLS_NAME else "tls"
    if isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return "proxy"
    return "http"


async def status_error(resp: aiohttp.ClientResponse, url: str) -> HTTPStatusError:
    """The HTTPStatusError for a response of status >= 400; the response is closed."""
    headers = resp.headers
    message = headers.get("X-Error-Message")
    code = headers.get("X-Error-Code")
    retry_after = parse_retry_after(headers.get("Retry-After"))
    # The body of an error is small and not ours to keep; don't wait long for it.
    resp.close()
    text = f"HTTP {resp.status} from {host_of(url)}"
    if message:
        text += f": {message[:300]}"
    return HTTPStatusError(
        resp.status, url, retry_after_s=retry_after, message=text, error_code=code
    )
