"""The one exception tree of modelhaul.

Every error carries a ``category`` (a stable string that scripts can match on), a ``retryable``
flag, a ``message`` saying what happened, and a ``hint`` with the user's next step. Third-party
errors are translated into this tree in exactly one place (``transport.py``) and chained with
``from exc``.

    ModelhaulError
    ├── InvalidInput            invalid_input   bad URL, rate, hex, manifest, unsafe name
    │   └── TargetConflict      invalid_input   two downloads of one run would write one path
    ├── TransferError           (base for everything that happens on the wire)
    │   ├── NetworkError        network         connection refused/reset, DNS, TLS
    │   ├── StallTimeout        timeout         no byte for the stall timeout
    │   ├── HTTPStatusError     by status       not_found, auth, rate_limited, server_error, client_error
    │   ├── TruncatedBody       network         fewer bytes than promised
    │   ├── RemoteChanged       network         the remote file changed under us (restart cleanly)
    │   ├── RangeNotHonoured    network         the origin ignored or garbled a Range request
    │   └── RetriesExhausted    as its cause    gave up; keeps the attempt history
    ├── RedirectRefused         client_error    loop, non-HTTP scheme, https->http downgrade
    ├── IntegrityError          integrity       checksum or size mismatch
    ├── DiskFull                disk_full       not enough free space, or ENOSPC while writing
    ├── PermissionDenied        permission      cannot write the target or the cache
    └── Cancelled               cancelled       the user cancelled or interrupted
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

CATEGORIES = (
    "network",
    "timeout",
    "not_found",
    "auth",
    "rate_limited",
    "server_error",
    "client_error",
    "integrity",
    "disk_full",
    "permission",
    "invalid_input",
    "cancelled",
)

# Failures another attempt cannot fix until the user changes something (the URL, a token, the
# request): the web page offers to retry these after the fix, and to resume the others. Decided
# by category, because a RetriesExhausted is never ``retryable`` even when its cause was.
PERMANENT_CATEGORIES = frozenset({"not_found", "auth", "client_error", "invalid_input"})

# How a connection failed: the host name did not resolve, nothing listened, no route, the peer
# reset or closed it, the TLS certificate did not verify, the TLS handshake failed otherwise,
# the proxy failed.
NETWORK_KINDS = (
    "dns",
    "refused",
    "unreachable",
    "reset",
    "closed",
    "tls",
    "tls_handshake",
    "proxy",
)


class ModelhaulError(Exception):
    """Root of every error modelhaul raises on purpose."""

    category: ClassVar[str] = "client_error"
    retryable: ClassVar[bool] = False
    default_hint: ClassVar[str] = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def to_dict(self) -> dict[str, str]:
        """The JSON shape used by ``--json`` result lines and the service."""
        return {"category": self.category, "message": self.message, "hint": self.hint}


class InvalidInput(ModelhaulError, ValueError):
    category = "invalid_input"
    default_hint = "Check the command line or the input file; run with --help for the syntax."


class TargetConflict(InvalidInput):
    """Two downloads would write the same file: only one of them could be what is on disk.

    ``path`` is the file both would write; ``urls`` are the two URLs, the one already holding
    the path first.
    """

    default_hint = "Give each download its own destination file."

    def __init__(
        self, message: str, *, path: str = "", urls: tuple[str, ...] = (), hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.urls = urls

    @classmethod
    def between(cls, path: str, first: str, second: str, *, hint: str | None = None) -> Self:
        """The conflict of URL ``second`` with ``first``, which holds ``path`` already."""
        return cls(
            f"two downloads would write {path}: {first} and {second}",
            path=path,
            urls=(first, second),
            hint=hint,
        )


class TransferError(ModelhaulError):
    """Something went wrong on the wire; most of these are worth another attempt."""

    category = "network"
    retryable = True
    default_hint = (
        "Check the network connection, proxy (HTTPS_PROXY) and CA settings, then run again."
    )


class NetworkError(TransferError):
    """The connection failed.

    ``kind`` says how, when the transport knows (one of ``NETWORK_KINDS``), and ``url`` where
    it was going; guidance is chosen from these facts, not from the message's wording.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        url: str | None = None,
        kind: str | None = None,
    ) -> None:
        if kind is not None and kind not in NETWORK_KINDS:
            raise ValueError(f"kind must be one of {NETWORK_KINDS}, got {kind!r}")
        super().__init__(message, hint=hint)
        self.url = url
        self.kind = kind


class StallTimeout(TransferError):
    category = "timeout"
    default_hint = (
        "The server stopped sending data; run again, or raise --timeout on a very slow link."
    )


class TruncatedBody(TransferError):
    pass


class RemoteChanged(TransferError):
    """The file on the server is not the one the partial data came from."""

    default_hint = (
        "The remote file changed during the download; modelhaul restarts it from scratch."
    )


class RangeNotHonoured(TransferError):
    """The origin answered a Range request with something other than the asked range."""


@dataclass(frozen=True, slots=True)
class _StatusInfo:
    category: str
    retryable: bool
    hint: str


_STATUS: dict[int, _StatusInfo] = {
    401: _StatusInfo(
        "auth",
        False,
        "The server wants credentials: pass them with -H 'Authorization: Bearer TOKEN' "
        "or set HF_TOKEN for the Hugging Face Hub.",
    ),
    403: _StatusInfo(
        "auth",
        False,
        "Access denied: check the token or credentials passed with -H or HF_TOKEN, and that "
        "your account may read this file (gated models need their licence accepted).",
    ),
    404: _StatusInfo("not_found", False, "Check the URL: the server has no such file."),
    410: _StatusInfo("not_found", False, "The file was removed from the server; check the URL."),
    408: _StatusInfo("server_error", True, "The server timed out; run again later."),
    425: _StatusInfo("server_error", True, "The server asked to retry later; run again."),
    429: _StatusInfo(
        "rate_limited",
        True,
        "The server is rate limiting: wait a little, then run again with fewer connections (-x).",
    ),
}

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def status_info(status: int) -> tuple[str, bool, str]:
    """Category, retryable flag and hint for an HTTP status."""
    if status in _STATUS:
        info = _STATUS[status]
        return info.category, info.retryable, info.hint
    if status >= 500:
        return (
            "server_error",
            status in RETRYABLE_STATUSES,
            "The server failed; run again later or use a mirror.",
        )
    return "client_error", False, "The server refused the request; check the URL and headers."


class HTTPStatusError(TransferError):
    """The server answered with an error status."""

    def __init__(
        self,
        status: int,
        url: str,
        *,
        retry_after_s: float | None = None,
        message: str | None = None,
        hint: str | None = None,
        error_code: str | None = None,
    ) -> None:
        category, retryable, default = status_info(status)
        self.status = status
        self.url = url
        self.retry_after_s = retry_after_s
        self.error_code = error_code  # the Hub's X-Error-Code, when present
        self._category = category
        self._retryable = retryable
        super().__init__(message or f"HTTP {status} from {url}", hint=hint or default)

    @property  # type: ignore[override]
    def category(self) -> str:
        return self._category

    @property  # type: ignore[override]
    def retryable(self) -> bool:
        return self._retryable


class RedirectRefused(ModelhaulError):
    """A redirect we will not follow: a loop, too many hops, a non-HTTP scheme, an https->http
    downgrade."""

    category = "client_error"
    default_hint = "The server redirects somewhere modelhaul will not go; check the URL."


class RetriesExhausted(TransferError):
    """Gave up after the retry budget; ``attempts`` holds every error seen, oldest first."""

    retryable = False

    def __init__(self, last: ModelhaulError, attempts: list[ModelhaulError]) -> None:
        n = len(attempts)
        super().__init__(
            f"{last.message} (gave up after {n} attempt{'s' if n != 1 else ''})", hint=last.hint
        )
        self.last = last
        self.attempts = attempts

    @property  # type: ignore[override]
    def category(self) -> str:
        return self.last.category


class IntegrityError(ModelhaulError):
    category = "integrity"
    default_hint = (
        "The download did not match its checksum and was discarded. Run again; if it fails "
        "again the published checksum may be wrong."
    )


class DiskFull(ModelhaulError, OSError):
    category = "disk_full"
    default_hint = "Free some disk space or download somewhere else (-d DIR)."


class PermissionDenied(ModelhaulError, OSError):
    category = "permission"
    default_hint = "Check that you may write to the target directory, or choose another with -d."


class Cancelled(ModelhaulError):
    category = "cancelled"
    default_hint = "Run the same command again to resume; partial data was kept."


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """2, 'model' -> '2 models'; 1 -> '1 model'. ``nouns`` for an irregular plural."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; used in messages and hints."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
