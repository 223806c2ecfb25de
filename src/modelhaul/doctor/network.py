"""Network checks: the proxy in use, the endpoint stage by stage, and the clock.

The endpoint check does its own DNS lookup, TCP connect and TLS handshake on raw sockets, to say
which stage fails, then asks for one HTTP answer through ``http.probe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit
from urllib.request import proxy_bypass_environment

from ..errors import InvalidInput, NetworkKind, human_duration, network_kind
from ..http.probe import ProbeFailure, ProbeSession
from ..policy.urls import check_url
from .checks import Check, DoctorConfig, os_error_text


def proxy_for(url: str, proxies: Mapping[str, str]) -> str | None:
    """The proxy a request to ``url`` goes through (as aiohttp with trust_env picks it)."""
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme.lower())
    if not proxy or proxy_bypass_environment(parts.hostname or "", dict(proxies)):
        return None
    return proxy


def check_proxy(endpoint: str, proxies: Mapping[str, str]) -> Check:
    try:
        proxy = proxy_for(endpoint, proxies)
    except ValueError:
        proxy = None
    no_proxy = proxies.get("no", "")
    if proxy is None:
        how = "bypassed by NO_PROXY" if proxies.get(_scheme(endpoint)) else "none set"
        return Check("proxy", True, f"direct connection to the endpoint ({how})")
    shown = _redact(proxy)
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if not parts.hostname:
        return Check(
            "proxy",
            False,
            f"the proxy setting {shown!r} has no host",
            "Set HTTPS_PROXY (and HTTP_PROXY) to a URL such as http://proxy.example:3128.",
        )
    extra = f"; NO_PROXY={no_proxy}" if no_proxy else ""
    return Check("proxy", True, f"{shown} (from {_scheme(endpoint).upper()}_PROXY{extra})")


@dataclass(frozen=True, slots=True)
class EndpointProbe:
    """The endpoint check, and the server's clock as its HTTP answer gave it."""

    check: Check
    server_time: float | None = None  # from the Date header
    local_time: float | None = None  # when that answer arrived


async def check_endpoint(config: DoctorConfig, probe: ProbeSession) -> EndpointProbe:
    """DNS, TCP and (for https, without a proxy) a TLS handshake, then one HTTP request."""
    url = config.endpoint.rstrip("/")
    try:
        check_url(url)
    except InvalidInput as exc:
        return EndpointProbe(_endpoint_fail(url, [], f"not a valid URL: {exc.message}", "url"))
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = proxy_for(url, config.proxies)
    stages: list[str] = []
    if proxy:
        pparts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        stages.append(f"via proxy {_redact(proxy)}")
        host, port = pparts.hostname or "", pparts.port or 80
    failed = await _connect_stages(
        host, port, config, stages, tls=not proxy and parts.scheme == "https"
    )
    if failed:
        return EndpointProbe(_endpoint_fail(url, stages, failed[1], failed[0], proxy, config))
    answer = await probe.fetch("HEAD", url + "/", follow_redirects=False)
    if isinstance(answer, ProbeFailure):
        message, stage = answer.error.message, answer.stage
        return EndpointProbe(_endpoint_fail(url, stages, message, stage, proxy, config))
    local_time = config.clock()
    status, date = answer.status, answer.headers.get("Date")
    stages.append(f"HTTP {status}")
    server_time = _parse_date(date)
    if status == 407 or status >= 500:
        what = "the proxy wants credentials" if status == 407 else "server error"
        check = _endpoint_fail(url, stages, f"HTTP {status} ({what})", "http", proxy, config)
        return EndpointProbe(check, server_time, local_time)
    check = Check("endpoint", True, f"{url}: " + ", ".join(stages))
    return EndpointProbe(check, server_time, local_time)


async def _connect_stages(
    host: str, port: int, config: DoctorConfig, stages: list[str], *, tls: bool
) -> tuple[str, str] | None:
    """Append what worked to ``stages``; return (stage, error) for the first that failed."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(config.timeout_s):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        return "dns", f"DNS lookup of {host} failed: {os_error_text(exc)}"
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        return "dns", f"DNS lookup of {host} returned no address"
    shown = ", ".join(addresses[:3]) + (", …" if len(addresses) > 3 else "")
    stages.append(f"address {host}" if _is_ip(host) else f"DNS {host} -> {shown}")
    writer: asyncio.StreamWriter | None = None
    error: BaseException | None = None
    for address in addresses[:3]:
        try:
            started = time.monotonic()
            async with asyncio.timeout(config.timeout_s):
                _, writer = await asyncio.open_connection(address, port)
            stages.append(
                f"TCP {_hostport(address, port)} ({(time.monotonic() - started) * 1000:.0f} ms)"
            )
            break
        except (OSError, TimeoutError) as exc:
            error = exc
    if writer is None:
        return (
            "tcp",
            f"TCP connect to {_hostport(addresses[0], port)} failed: {os_error_text(error)}",
        )
    try:
        if tls:
            try:
                async with asyncio.timeout(config.timeout_s):
                    await writer.start_tls(ssl.create_default_context(), server_hostname=host)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                stage = "tls_name" if network_kind(exc) is NetworkKind.TLS_NAME else "tls"
                return stage, f"TLS handshake with {host} failed: {_tls_text(exc)}"
            stages.append(_tls_summary(writer))
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return None


def _endpoint_fail(
    url: str,
    stages: list[str],
    error: str,
    stage: str,
    proxy: str | None = None,
    config: DoctorConfig | None = None,
) -> Check:
    done = ", ".join(stages)
    detail = f"{url}: " + (f"{done}; " if done else "") + error
    ca = config.ca_file if config else None
    fixes = {
        "url": "Set HF_ENDPOINT to the Hub's URL, e.g. https://huggingface.co (or unset it).",
        "dns": "Check the host name in HF_ENDPOINT and the network's DNS; on a network that only "
        "allows a proxy, set HTTPS_PROXY.",
        "tcp": "Check that the server is up and HF_ENDPOINT's host and port are right; a firewall "
        "may block the port (then set HTTPS_PROXY to the proxy you must use).",
        "tls": "Point SSL_CERT_FILE at a CA bundle that includes your organisation's root "
        "certificate (a proxy or firewall re-signing TLS is the usual cause)"
        + (f"; SSL_CERT_FILE is now {ca}" if ca else "")
        + ". Also check the clock.",
        "tls_name": "The certificate is for another host name: put the name it is for in "
        "HF_ENDPOINT (not an IP address or an alias); no CA bundle changes that.",
        "proxy": "Check HTTPS_PROXY / HTTP_PROXY (user:password@ in the URL if it asks for "
        "credentials) and that the proxy is up; list hosts to reach directly in NO_PROXY.",
        "http": "The server answers but not well: try again later, or check HF_ENDPOINT.",
    }
    fix = fixes[stage]
    if proxy and stage in ("dns", "tcp"):
        fix = "The proxy is not reachable: " + fixes["proxy"]
    return Check("endpoint", False, detail, fix)


def check_clock(server_time: float | None, local_time: float | None, tolerance_s: float) -> Check:
    """Local clock against the server's Date header (1 s resolution, so ±2 s is noise)."""
    if server_time is None or local_time is None:
        return Check("clock", None, "no Date header from the endpoint to compare")
    skew = local_time - server_time
    ahead = "ahead of" if skew > 0 else "behind"
    if abs(skew) <= 2:
        return Check("clock", True, "in step with the server (within 2 s)")
    text = f"{human_duration(abs(skew))} {ahead} the server"
    if abs(skew) <= tolerance_s:
        return Check("clock", True, text)
    return Check(
        "clock",
        False,
        text,
        "Set the clock right (enable NTP: timedatectl set-ntp true, or the system settings); "
        "a wrong clock breaks TLS certificate checks and presigned download links.",
    )


def _tls_text(exc: BaseException) -> str:
    if network_kind(exc) is NetworkKind.TLS_NAME:
        return f"the certificate is for another host name: {getattr(exc, 'verify_message', '')}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _tls_summary(writer: asyncio.StreamWriter) -> str:
    obj = writer.get_extra_info("ssl_object")
    if not isinstance(obj, ssl.SSLObject):
        return "TLS ok"
    cert = obj.getpeercert() or {}
    subject = dict(x[0] for x in cert.get("subject", ()) if x)
    issuer = dict(x[0] for x in cert.get("issuer", ()) if x)
    parts = [f"TLS {obj.version()}"]
    if subject.get("commonName"):
        parts.append(f"certificate {subject['commonName']}")
    if issuer.get("organizationName") or issuer.get("commonName"):
        parts.append(f"issued by {issuer.get('organizationName') or issuer.get('commonName')}")
    if cert.get("notAfter"):
        parts.append(f"valid until {cert['notAfter']}")
    return " ".join(parts)


def _parse_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower() or "https"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


__all__ = ["EndpointProbe", "check_clock", "check_endpoint", "check_proxy", "proxy_for"]
