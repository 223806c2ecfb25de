"""What to tell a user when a download fails for good: what happened, why, and what to try.

Pure: no I/O, no environment reads. Everything specific (the endpoint, the model, the cache root)
is passed in by the caller, and everything else is read from the error itself (its category,
HTTP status, the Hub's ``X-Error-Code``, ``Retry-After``, how and where a connection failed,
the sizes in a ``DiskFull`` message). Advice about HF_ENDPOINT, HF_TOKEN or HF_HUB_OFFLINE is
given only when the Hub was involved: a plain URL's failure is about that URL.
A ``RetriesExhausted`` is explained by the error that ended it.

    >>> g = explain(HTTPStatusError(429, "https://huggingface.co/api/models/x", retry_after_s=30))
    >>> g.steps[0]
    'Wait 30 s (the server asked for that in Retry-After), then run the same command again.'
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import (
    HTTPStatusError,
    IntegrityError,
    ModelhaulError,
    NetworkError,
    RedirectRefused,
    RemoteChanged,
    RetriesExhausted,
    StallTimeout,
    TransferError,
    TruncatedBody,
    human_bytes,
)

DEFAULT_ENDPOINT = "https://huggingface.co"
# The command that frees space in the cache; one place to change if its flags change.
GC_COMMAND = "modelhaul gc"
DOCTOR_COMMAND = "modelhaul doctor"
TOKENS_PAGE = "https://huggingface.co/settings/tokens"
_SET_TOKEN = (
    "Set it for modelhaul: export HF_TOKEN=hf_... (or save it with 'hf auth login', which "
    "huggingface_hub and modelhaul both read), then run the same command again."
)

__all__ = ["Guidance", "explain", "format_guidance"]


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


@dataclass(frozen=True, slots=True)
class _Context:
    endpoint: str
    model: str | None
    cache_root: str | None
    store_bytes: int | None

    # Tokens come from huggingface.co even when HF_ENDPOINT names a mirror, which forwards them.
    tokens_page: str = TOKENS_PAGE


_Explainer = Callable[[ModelhaulError, _Context], tuple[str | None, list[str]]]
# Categories that describe a server's answer; an error in one of them that did not come from a
# request (a model not in the store, an unknown download ID) is explained by its own hint.
_WIRE_CATEGORIES = frozenset({"not_found", "auth", "rate_limited", "server_error", "client_error"})


def explain(
    err: ModelhaulError,
    *,
    endpoint: str | None = None,
    model: str | None = None,
    cache_root: str | None = None,
    store_bytes: int | None = None,
) -> Guidance:
    """Guidance for an error that ended a download.

    Args:
        err: the error; a ``RetriesExhausted`` is explained by its last attempt.
        endpoint: the Hub endpoint in use (``HF_ENDPOINT``); default https://huggingface.co.
        model: ``ORG/NAME`` (``hf://`` and ``@REVISION`` are dropped) for model pages and
            ``modelhaul verify``.
        cache_root: the cache directory, for disk and permission advice.
        store_bytes: the cache's current size, if known, to give the exact ``gc --max-size``
            that frees enough when the disk is full.
    """
    cause = err
    while isinstance(cause, RetriesExhausted):
        cause = cause.last
    ctx = _Context(
        endpoint=(endpoint or DEFAULT_ENDPOINT).rstrip("/"),
        model=_model_id(model),
        cache_root=cache_root,
        store_bytes=store_bytes,
    )
    if cause.category in _WIRE_CATEGORIES and not isinstance(
        cause, TransferError | RedirectRefused
    ):
        return Guidance(what=err.message, why=None, steps=())
    explainer = _BY_CATEGORY.get(cause.category, _client_error)
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


# ---------------------------------------------------------------------------- per category


def _auth(err: ModelhaulError, ctx: _Context) -> tuple[str, list[str]]:
    code = _error_code(err)
    status = getattr(err, "status", None)
    if code == "GatedRepo":
        return _gated(err, ctx)
    if code == "RepoNotFound":
        return _repo_not_found(err, ctx)
    if not _is_hub(err, ctx):
        return _auth_elsewhere(err, status)
    set_token = _SET_TOKEN
    if status == 403:
        return (
            "the Hub knows the token but it may not read this repository: a fine-grained token "
            "without access to it, or a gated model whose licence this account has not accepted.",
            [
                f"Open {_page(err, ctx)} while logged in and accept the licence if it asks.",
                f"Check the token's permissions at {ctx.tokens_page} (a 'read' token, or a "
                "fine-grained one with read access to this repository).",
                set_token,
            ],
        )
    return (
        "the Hub did not accept the token: it is missing, mistyped, revoked or expired.",
        [
            f"Create a new token with 'read' access at {ctx.tokens_page}.",
            set_token,
            f"Check it with '{DOCTOR_COMMAND}': the token check says whether the Hub accepts it.",
        ],
    )


def _gated(err: ModelhaulError, ctx: _Context) -> tuple[str, list[str]]:
    page = _page(err, ctx)
    return (
        "the model is gated: its authors require each account to accept their licence before "
        "downloading, and the token sent (if any) is not from an account that has.",
        [
            f"Open {page} while logged in and accept the licence (some need the authors' "
            "approval, which can take a while).",
            f"Create a 'read' token for that same account at {ctx.tokens_page}.",
            _SET_TOKEN,
        ],
    )


def _repo_not_found(err: ModelhaulError, ctx: _Context) -> tuple[str, list[str]]:
    status = getattr(err, "status", None)
    no_token = status == 401
    why = (
        "the Hub has no such repository, or it is private and no token was sent."
        if no_token
        else "the Hub has no such repository that this token's account may see."
    )
    steps = [
        f"Check the name: ORG/NAME exactly as in the address of the model page ({_page(err, ctx)}).",
    ]
    if no_token:
        steps.append(
            f"If the repository is private, create a 'read' token at {ctx.tokens_page} and "
            "set it in HF_TOKEN."
        )
    else:
        steps.append(
            "If the repository is private, use a token of an account (or organisation member) "
            f"that can read it; see {ctx.tokens_page}."
        )
    if ctx.endpoint != DEFAULT_ENDPOINT:
        steps.append(f"HF_ENDPOINT is {ctx.endpoint}: check the repository exists there.")
    return why, steps


def _auth_elsewhere(err: ModelhaulError, status: int | None) -> tuple[str, list[str]]:
    host = _host(err)
    if status == 403:
        return (
            f"{host} refused access: the credentials are wrong or lack the right, or a "
            "presigned link expired.",
            [
                "If the URL came from another tool with a signature in it, get a fresh one: "
                "such links expire.",
                f"Check the credentials passed with -H 'Authorization: ...' are valid for {host}.",
            ],
        )
    return (
        f"{host} wants credentials that were not sent or were not accepted.",
        [
            "Pass them with -H 'Authorization: Bearer TOKEN' (headers go to that host only, "
            "never to a redirect target).",
        ],
    )


def _not_found(err: ModelhaulError, ctx: _Context) -> tuple[str, list[str]]:
    code = _error_code(err)
    if code == "RepoNotFound":
        return _repo_not_found(err, ctx)
    page = _page(err, ctx)
    if code == "RevisionNotFound":
        return (
            "the repository exists but has no branch, tag or commit of that name.",
            [
                f"Check the revision after '@'; {page}/tree/main shows the branches and tags.",
                "Leave out '@REVISION' to get the default branch (main).",
            ],
        )
    if code == "EntryNotFound":
        return (
            "the repository and revision exist but hold no file at that path.",
            [
                f"Check the file name and folder on {page}/tree/main (names are case-sensitive).",
                "Check --include/--exclude patterns and the revision: files move between "
                "revisions.",
            ],
        )
    if _is_hub(err, ctx):
        return (
            "the Hub has nothing at that address.",
            [
                f"Check the model name and the path; browse {page}.",
                f"HF_ENDPOINT is {ctx.endpoint}: check it points at a Hub or a full mirror.",
            ],
        )
    return (
        f"{_host(err)} has no file at that address (moved, deleted or mistyped).",
        ["Check the URL: open it in a browser, or get a fresh link where you found it."],
    )


def _rate_limited(err: ModelhaulError, ctx: _Context) -> tuple[str, list[str]]:
    wait_s = getattr(err, "retry_after_s", None)
    if wait_s is not None and wait_s > 0:
        wait = (
            f"Wait {_duration(wait_s)} (the server asked for that in Retry-After), then run "
            "the same command again."
        )
    else:
        wait = "Wait a minute, then run the same command again: finished files are kept."
    steps = [
        wait,
        "Use fewer connections: -x 4 (connections per file) and -j 2 (files at a time).",
    ]
    why = f"{_host(err)} limits how many requests a client may send in a time window."
    if _is_hub(err, ctx):
        why = (
            "the Hub limits how many requests a client may send in a time window; models with "
            "many small files reach the limit fastest."
        )
        steps.append(
            f"Set HF_TOKEN (a token from {ctx.tokens_page}): logged-in requests get a higher limit."
        )
    return why, steps


def _server_error(err: ModelhaulError, ctx: _Context) -> tuple[str, list[str]]:
    status = getattr(err, "status", None)
    what = f"HTTP {status}" if status else "an error"
    steps = ["Wait a few minutes and run the same command again: finished data is kept."]
    if _is_hub(err, ctx) and ctx.endpoint == DEFAULT_ENDPOINT:
        steps.append("Check https://status.huggingface.co for an ongoing incident.")
    else:
        steps.append(f"Try a mirror, or check the status of {_host(err)}.")
    steps.append("If it persists, lower the load you put on it: -x 4 -j 2.")
    return f"{_host(err)} answered {what}: a problem on the server's side, usually brief.", steps


def _client_error(err: ModelhaulError, ctx: _Context) -> tuple[str | None, list[str]]:
    status = getattr(err, "status", None)
    if status == 407:
        return (
            "the proxy wants a user name and password.",
            [
                "Put them in the proxy URL: HTTPS_PROXY=http://USER:PASSWORD@proxy.example:3128 "
                "(and HTTP_PROXY likewise).",
                f"Run '{DOCTOR_COMMAND}' to see which proxy is in use for the endpoint.",
            ],
        )
    if isinstance(err, RedirectRefused):
        steps = [
            "Check the URL: the server sends modelhaul somewhere it will not follow.",
        ]
        if "downgrade" in err.message:
            steps.append(
                "If you trust the server, allow the https -> http redirect with "
                "--allow-insecure-redirects."
            )
        return "the server redirected to a loop, a non-HTTP address or from https to http.", steps
    if status is not None:
        return (
            f"{_host(err)} refused the request (HTTP {status}); the URL or a header is wrong for it.",
            [
                "Check the URL and any -H headers.",
                "Check that an HTTPS_PROXY in use passes the request through unchanged.",
            ],
        )
    # Nothing known beyond the message and its hint, which are shown already.
    return None, []


def _network(err: ModelhaulError, ctx: _Context) -> tuple[str, list[str]]:
    kind = _network_kind(err)
    hub = _is_hub(err, ctx)
    # HF_ENDPOINT only matters when the Hub was being reached; a plain URL is checked as given.
    address = f"HF_ENDPOINT (now {ctx.endpoint})" if hub else "the URL"
    doctor = _doctor_step(err, ctx, hub)
    proxy = (
        "If you are behind a proxy, set HTTPS_PROXY (and HTTP_PROXY) to it; hosts listed in "
        "NO_PROXY bypass it."
    )
    host = _host(err)
    if kind == "truncated":
        return (
            "the connection dropped in the middle of a file; modelhaul keeps what arrived.",
            [
                "Run the same command again: it resumes from the partial file.",
                "On an unstable link use fewer connections (-x 4).",
            ],
        )
    if kind == "dns":
        return (
            f"the host name of {host} did not resolve: no network, a DNS problem, a typo in "
            f"{'HF_ENDPOINT' if hub else 'the URL'}, or a network that only allows traffic "
            "through a proxy.",
            [f"Check the host name in {address}.", proxy, *doctor],
        )
    if kind in ("refused", "unreachable"):
        why = (
            f"nothing answered at {host}: the server is down, the port is wrong, or a firewall "
            "rejects the connection."
            if kind == "refused"
            else f"{host} could not be reached: the network is down, or a firewall drops the "
            "traffic."
        )
        return why, [
            f"Check that the server is up, and {address}, including the port.",
            proxy,
            *doctor,
        ]
    if kind == "tls":
        return (
            "the server's TLS certificate did not verify against the trusted CA bundle; behind "
            "a corporate proxy or firewall that re-signs TLS this is the usual cause.",
            [
                "Point SSL_CERT_FILE at a CA bundle that includes your organisation's root "
                "certificate (SSL_CERT_DIR for a directory of them).",
                "Check that the system clock is right: certificates are only valid for a time "
                "window.",
                *doctor,
            ],
        )
    if kind == "tls_handshake":
        return (
            f"the TLS handshake with {host} failed: the port may not speak TLS (an http:// "
            "server at an https:// address), or a proxy or firewall interferes.",
            [f"Check the scheme and port in {address}.", proxy, *doctor],
        )
    if kind == "proxy":
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


def _network_kind(err: ModelhaulError) -> str | None:
    """How the connection failed: the transport's fact when it has one, else (for errors
    worded by other libraries, such as huggingface_hub's) what the message says."""
    if isinstance(err, TruncatedBody | RemoteChanged):
        return "truncated"
    if isinstance(err, NetworkError) and err.kind:
        return err.kind
    text = err.message.lower()
    if "ended early" in text:
        return "truncated"
    for kind, needles in (("dns", _DNS), ("refused", _REFUSED), ("tls", _TLS), ("proxy", _PROXY)):
        if _matches(text, needles):
            return kind
    return None


def _doctor_step(err: ModelhaulError, ctx: _Context, hub: bool) -> list[str]:
    """'modelhaul doctor' checks the Hub endpoint; for a plain URL it checks that URL."""
    if hub:
        return [
            f"Run '{DOCTOR_COMMAND}' to check DNS, TCP, TLS and the proxy in use for "
            f"{ctx.endpoint}."
        ]
    url = _url(err)
    if url:
        return [f"Run '{DOCTOR_COMMAND} {url}' to check whether the URL answers."]
    return []


def _timeout(err: ModelhaulError, ctx: _Context) -> tuple[str, list[str]]:
    stalled = isinstance(err, StallTimeout)
    return (
        "the server (or a proxy on the way) stopped sending data"
        + (" for longer than the stall timeout." if stalled else "."),
        [
            "Run the same command again: it resumes from the partial file.",
            "On a slow or congested link raise --timeout (seconds) and use fewer connections "
            "(-x 4).",
            "If a proxy is in use (HTTPS_PROXY), check that it does not hold back large responses.",
        ],
    )


def _integrity(err: ModelhaulError, ctx: _Context) -> tuple[str, list[str]]:
    if ctx.model:
        repair = (
            f"Run 'modelhaul verify {ctx.model} --repair': it refetches only the chunks that "
            "are bad."
        )
    else:
        repair = (
            "Run the same command again: the bad data was discarded and is fetched anew "
            "('modelhaul verify ORG/NAME --repair' for a model in the cache)."
        )
    why = (
        "the bytes on disk do not match the published checksum or size: corrupted in transit, "
        "changed on the server, or damaged on disk."
    )
    if isinstance(err, IntegrityError) and "size" in err.message.lower():
        why = "the file did not have the size the server promised: it changed or was cut short."
    return why, [
        repair,
        "If it fails again with the same result, the published checksum may be wrong: check the "
        "source (or download from another mirror).",
        f"Repeated mismatches on different files point at the disk or memory; '{DOCTOR_COMMAND}' "
        "checks the cache directory.",
    ]


def _disk_full(err: ModelhaulError, ctx: _Context) -> tuple[str, list[str]]:
    need, free, where = _disk_sizes(err)
    where = where or ctx.cache_root
    short = need - free if need is not None and free is not None and need > free else None
    short = short if short is not None else _hinted_short(err)
    place = f" in {where}" if where else ""
    if need is not None and free is not None:
        why = f"the download needs {human_bytes(need)} more but only {human_bytes(free)} is free{place}."
    else:
        why = f"the disk filled up while writing{place}; the partial data was kept."
    steps = [
        _gc_step(short, ctx.store_bytes),
        "Or put the cache on a bigger disk: set HF_HUB_CACHE=/path/on/bigger/disk (for "
        "'get', -d DIR).",
        "Then run the same command again: finished files are kept.",
    ]
    if ctx.model:
        steps.insert(1, "Fetch only what you need: --include '*.safetensors' --include '*.json'.")
    return why, steps


def _gc_step(short: int | None, store_bytes: int | None) -> str:
    """The gc command that frees ``short`` bytes, as exact as what is known allows."""
    amount = f"at least {human_bytes(short)}" if short else "space"
    partials = "and removes partial downloads untouched for 7 days"
    if short and store_bytes is not None and store_bytes > short:
        cap = _size_arg(store_bytes - short)
        return (
            f"Free {amount}: '{GC_COMMAND} --max-size {cap}' evicts least recently used unpinned "
            f"models until the cache fits {cap} {partials} (add --dry-run to see what first)."
        )
    return (
        f"Free {amount}: 'modelhaul ls' shows the cache's size; '{GC_COMMAND} --max-size SIZE' "
        f"with SIZE that much smaller evicts least recently used unpinned models {partials} "
        "(add --dry-run to see what first)."
    )


def _permission(err: ModelhaulError, ctx: _Context) -> tuple[str, list[str]]:
    root = ctx.cache_root or "the cache directory"
    return (
        "modelhaul may not write where the files go: wrong owner or mode, a read-only "
        "filesystem, or a path through a file or symbolic link.",
        [
            f"Check the owner and mode of {root} (ls -ld); fix them with chown/chmod.",
            "Or point HF_HUB_CACHE (or HF_HOME) at a writable directory; for 'get', use -d DIR.",
            f"'{DOCTOR_COMMAND}' checks that the cache directory is writable.",
        ],
    )


def _invalid_input(err: ModelhaulError, ctx: _Context) -> tuple[str, list[str]]:
    steps = [err.hint] if err.hint else []
    steps.append("Run the command with --help for its syntax.")
    return "the command line or an input file is not in the expected form.", steps


def _cancelled(err: ModelhaulError, ctx: _Context) -> tuple[str, list[str]]:
    return (
        "the download was interrupted (Ctrl-C, SIGTERM or a cancel).",
        ["Run the same command again: it resumes from the partial data that was kept."],
    )


_BY_CATEGORY: dict[str, _Explainer] = {
    "auth": _auth,
    "not_found": _not_found,
    "rate_limited": _rate_limited,
    "server_error": _server_error,
    "client_error": _client_error,
    "network": _network,
    "timeout": _timeout,
    "integrity": _integrity,
    "disk_full": _disk_full,
    "permission": _permission,
    "invalid_input": _invalid_input,
    "cancelled": _cancelled,
}

# ---------------------------------------------------------------------------- helpers

_TLS = (
    "tls verification",
    "certificate",
    "[ssl",
    "sslerror",
    "ssl error",
    "handshake",
    "wrong version number",
)
_DNS = (
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
    "no address associated",
    "getaddrinfo",
    "name resolution",
    "dns",
)
_REFUSED = ("connection refused", "connect call failed", "errno 111", "actively refused")
_PROXY = ("proxy",)
_DISK = re.compile(
    r"needs (?P<need>\d+(?:\.\d+)? \w+) more, (?:only )?(?P<free>\d+(?:\.\d+)? \w+) free in "
    r"(?P<where>.+)$"
)
_SHORT = re.compile(r"Free at least (?P<short>\d+(?:\.\d+)? \w+)")
_UNITS = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def _matches(text: str, needles: tuple[str, ...]) -> bool:
    return any(n in text for n in needles)


def _error_code(err: ModelhaulError) -> str | None:
    return err.error_code if isinstance(err, HTTPStatusError) else None


def _url(err: ModelhaulError) -> str | None:
    return err.url if isinstance(err, HTTPStatusError | NetworkError) else None


def _host(err: ModelhaulError) -> str:
    url = _url(err)
    if url:
        host = urlsplit(url).netloc
        if host:
            return host
    m = re.search(r"(?:to|from|for|at) (?:https?://)?([A-Za-z0-9.-]+(?::\d+)?)", err.message)
    return m.group(1) if m else "the server"


def _is_hub(err: ModelhaulError, ctx: _Context) -> bool:
    """Did the error come from the Hub (the endpoint, or huggingface.co itself)?"""
    if _error_code(err):
        return True
    url = _url(err)
    if not url:
        return ctx.model is not None
    host = (urlsplit(url).hostname or "").lower()
    endpoint_host = (urlsplit(ctx.endpoint).hostname or "").lower()
    # The Hub's own hosts and its CDNs (cdn-lfs.huggingface.co, cas-bridge.xethub.hf.co).
    return host == endpoint_host or any(
        host == hub or host.endswith("." + hub) for hub in ("huggingface.co", "hf.co")
    )


def _model_id(model: str | None) -> str | None:
    if not model:
        return None
    text = model.removeprefix("hf://")
    return text.partition("@")[0].strip("/") or None


def _page(err: ModelhaulError, ctx: _Context) -> str:
    """The model's page on the Hub, from the model name or the failing URL."""
    if ctx.model:
        return f"{ctx.endpoint}/{ctx.model}"
    url = _url(err)
    if url:
        parts = urlsplit(url)
        base = f"{parts.scheme}://{parts.netloc}"
        path = parts.path
        if "/resolve/" in path:
            return base + path.split("/resolve/", 1)[0]
        m = re.match(r"/api/(models|datasets|spaces)/([^/]+(?:/[^/]+)?)", path)
        if m:
            kind, repo = m.groups()
            repo = repo.split("/revision", 1)[0].split("/tree", 1)[0]
            return f"{base}/{'' if kind == 'models' else kind + '/'}{repo}"
        if path.strip("/"):
            return base + path.rstrip("/")
    return f"{ctx.endpoint}/ORG/NAME"


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 120:
        return f"{max(s, 1)} s"
    if s < 7200:
        return f"{round(s / 60)} min"
    return f"{s / 3600:.1f} h"


def _parse_size(text: str) -> int | None:
    number, _, unit = text.partition(" ")
    mult = _UNITS.get(unit.lower())
    try:
        return int(float(number) * mult) if mult else None
    except ValueError:
        return None


def _disk_sizes(err: ModelhaulError) -> tuple[int | None, int | None, str | None]:
    m = _DISK.search(err.message)
    if not m:
        return None, None, None
    return _parse_size(m["need"]), _parse_size(m["free"]), m["where"].strip()


def _size_arg(n: int) -> str:
    """Bytes as a --max-size argument, rounded down so that it frees at least enough."""
    if n >= 1024**3:
        return f"{int(n / 1024**3 * 10) / 10:g}G"
    return f"{max(n // 1024**2, 0)}M"


def _hinted_short(err: ModelhaulError) -> int | None:
    m = _SHORT.search(err.hint or "")
    return _parse_size(m["short"]) if m else None
