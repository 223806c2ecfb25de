"""Guidance for a connection that failed: DNS, refused, TLS, proxy, reset, dropped, stalled."""

from __future__ import annotations

from ..errors import (
    ModelhaulError,
    NetworkError,
    NetworkKind,
    RemoteChanged,
    StallTimeout,
    TruncatedBody,
)
from ..remedies import Remedy
from .context import DOCTOR_COMMAND, Context, host_of, is_hub, url_of


def network(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    kind = _network_kind(err)
    hub = is_hub(err, ctx)
    # HF_ENDPOINT only matters when the Hub was being reached; a plain URL is checked as given.
    address = f"HF_ENDPOINT (now {ctx.endpoint})" if hub else "the URL"
    doctor = _doctor_step(err, ctx, hub)
    proxy = (
        "If you are behind a proxy, set HTTPS_PROXY (and HTTP_PROXY) to it; hosts listed in "
        "NO_PROXY bypass it."
    )
    host = host_of(err)
    if kind == "truncated":
        return (
            "the connection dropped in the middle of a file; modelhaul keeps what arrived.",
            [
                "Run the same command again: it resumes from the partial file.",
                ctx.say(Remedy.UNSTABLE_LINK),
            ],
        )
    if kind is NetworkKind.DNS:
        return (
            f"the host name of {host} did not resolve: no network, a DNS problem, a typo in "
            f"{'HF_ENDPOINT' if hub else 'the URL'}, or a network that only allows traffic "
            "through a proxy.",
            [f"Check the host name in {address}.", proxy, *doctor],
        )
    if kind in (NetworkKind.REFUSED, NetworkKind.UNREACHABLE):
        why = (
            f"nothing answered at {host}: the server is down, the port is wrong, or a firewall "
            "rejects the connection."
            if kind is NetworkKind.REFUSED
            else f"{host} could not be reached: the network is down, or a firewall drops the "
            "traffic."
        )
        return why, [
            f"Check that the server is up, and {address}, including the port.",
            proxy,
            *doctor,
        ]
    if kind in (NetworkKind.TLS, NetworkKind.TLS_NAME):
        return _certificate(kind, host, address, doctor)
    if kind is NetworkKind.TLS_HANDSHAKE:
        return (
            f"the TLS handshake with {host} failed: the port may not speak TLS (an http:// "
            "server at an https:// address), or a proxy or firewall interferes.",
            [f"Check the scheme and port in {address}.", proxy, *doctor],
        )
    if kind is NetworkKind.PROXY:
        return (
            "the proxy in use failed or refused to forward the request.",
            [
                "Check HTTPS_PROXY and HTTP_PROXY, and that the proxy is up.",
                "Hosts listed in NO_PROXY are reached directly; add internal mirrors there.",
                *doctor,
            ],
        )
    steps = ["Run the same command again: it resumes where it stopped.", proxy, *doctor]
    if hub:
        steps.append(
            "With the model already in the cache, HF_HUB_OFFLINE=1 uses it without the network."
        )
    return (
        "the connection failed or was reset: a network outage, a proxy or firewall in the "
        "way, or an overloaded server.",
        steps,
    )


def _certificate(
    kind: NetworkKind, host: str, address: str, doctor: list[str]
) -> tuple[str, list[str]]:
    """A certificate that did not verify: untrusted, or for another host name (where no CA
    bundle helps)."""
    if kind is NetworkKind.TLS_NAME:
        return (
            f"the server's TLS certificate is not for the name {host} was reached by: an IP "
            "address or another alias of the host in the URL, or a proxy answering for it.",
            [
                f"Check the host in {address}: use the name the server's certificate is for.",
                *doctor,
            ],
        )
    return (
        "the server's TLS certificate did not verify against the trusted CA bundle; behind "
        "a corporate proxy or firewall that re-signs TLS this is the usual cause.",
        [
            "Point SSL_CERT_FILE at a CA bundle that includes your organisation's root "
            "certificate (SSL_CERT_DIR for a directory of them).",
            "Check that the system clock is right: certificates are only valid for a time window.",
            *doctor,
        ],
    )


def _network_kind(err: ModelhaulError) -> str | None:
    """How the connection failed, as its translator recorded it ("truncated": mid-body)."""
    if isinstance(err, TruncatedBody | RemoteChanged):
        return "truncated"
    if isinstance(err, NetworkError):
        return err.kind
    return None


def _doctor_step(err: ModelhaulError, ctx: Context, hub: bool) -> list[str]:
    """'modelhaul doctor' checks the Hub endpoint; for a plain URL it checks that URL."""
    if hub:
        return [
            f"Run '{DOCTOR_COMMAND}' to check DNS, TCP, TLS and the proxy in use for "
            f"{ctx.endpoint}."
        ]
    url = url_of(err)
    if url:
        return [f"Run '{DOCTOR_COMMAND} {url}' to check whether the URL answers."]
    return []


def timeout(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    stalled = isinstance(err, StallTimeout)
    return (
        "the server (or a proxy on the way) stopped sending data"
        + (" for longer than the stall timeout." if stalled else "."),
        [
            "Run the same command again: it resumes from the partial file.",
            ctx.say(Remedy.SLOW_LINK),
            "If a proxy is in use (HTTPS_PROXY), check that it does not hold back large responses.",
        ],
    )
