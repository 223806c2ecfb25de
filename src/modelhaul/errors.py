"""The one exception tree of modelhaul.

Every error carries a ``category`` (a :class:`Category`, which scripts match in JSON output
and the service's answers), a ``retryable`` flag, a ``message`` (what happened) and a ``hint``
(the next step), and as fields the facts guidance needs (``DiskFull.need_bytes``,
``NetworkError.kind``...): advice is computed from them, never from the message's wording.

A next step that names a setting is a ``remedy`` (a :class:`~modelhaul.remedies.Remedy`):
``hint`` words it for the library's callers (``SegmentPolicy.connections``), each face in its
own terms with ``hint_in`` (the CLI its flags, ``cli/words.py``): no CLI flag is written here.

Third-party errors are translated where the third party is called, chained with ``from exc``:
aiohttp's and the OS's network errors by ``map_error`` in ``http/`` (``doctor`` calls it too),
huggingface_hub's by ``map_hub_error`` in ``sources/hf.py``, urllib's by ``client/service.py``.
OS errors on local files (ENOSPC, EACCES) are told as ``DiskFull``/``PermissionDenied`` by the
module that writes the file, which only it can name (engine, store, manager, server).

    ModelhaulError              category        fields
    ├── InvalidInput            invalid_input   bad URL, rate, hex, manifest, unsafe name
    │   └── TargetConflict      invalid_input   path, urls: two downloads would write one path
    ├── TransferError           (on the wire)   url
    │   ├── NetworkError        network         kind (NetworkKind): refused, reset, DNS, TLS...
    │   ├── StallTimeout        timeout         no byte for the stall timeout
    │   ├── HTTPStatusError     by status       status, retry_after_s, error_code
    │   ├── TruncatedBody       network         fewer bytes than promised
    │   ├── RemoteChanged       network         the remote file changed under us (restart cleanly)
    │   ├── RangeNotHonoured    network         the origin ignored or garbled a Range request
    │   └── RetriesExhausted    as its cause    last, attempts: gave up, keeps the history
    ├── RedirectRefused         client_error    reason (RedirectReason): loop, scheme, downgrade
    ├── IntegrityError          integrity       expected_size, actual_size (None: a checksum)
    ├── DiskFull                disk_full       need_bytes, free_bytes, path
    ├── PermissionDenied        permission      cannot write the target or the cache
    └── Cancelled               cancelled       the user cancelled or interrupted
"""

from __future__ import annotations

import enum
import errno as _errno
import socket
import ssl
from dataclasses import dataclass
from typing import ClassVar, Self

from .remedies import LIBRARY_WORDS, Remedy, Words, say


class Category(enum.StrEnum):
    """What kind of failure an error is; the value is the ``error.category`` of JSON output."""

    NETWORK = "network"
    TIMEOUT = "timeout"
    NOT_FOUND = "not_found"
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"
    INTEGRITY = "integrity"
    DISK_FULL = "disk_full"
    PERMISSION = "permission"
    INVALID_INPUT = "invalid_input"
    CANCELLED = "cancelled"


CATEGORIES: tuple[Category, ...] = tuple(Category)

# Failures no attempt fixes until the user changes the URL, a token or the request (the web page
# offers a retry after the fix, a resume for others); by category: RetriesExhausted never retries.
PERMANENT_CATEGORIES = frozenset(
    {Category.NOT_FOUND, Category.AUTH, Category.CLIENT_ERROR, Category.INVALID_INPUT}
)


class NetworkKind(enum.StrEnum):
    """How a connection failed."""

    DNS = "dns"  # the host name did not resolve
    REFUSED = "refused"  # nothing listened
    UNREACHABLE = "unreachable"  # no route, or the connect timed out
    RESET = "reset"  # the peer reset the connection
    CLOSED = "closed"  # the peer closed it mid-response
    TLS = "tls"  # the certificate did not verify
    TLS_NAME = "tls_name"  # the certificate is valid, but for another host name
    TLS_HANDSHAKE = "tls_handshake"  # the TLS handshake failed otherwise
    PROXY = "proxy"  # the proxy failed or refused to forward


NETWORK_KINDS: tuple[NetworkKind, ...] = tuple(NetworkKind)

_KIND_OF_ERRNO = {
    _errno.ECONNREFUSED: NetworkKind.REFUSED,
    _errno.ECONNRESET: NetworkKind.RESET,
    _errno.EPIPE: NetworkKind.RESET,
    _errno.ECONNABORTED: NetworkKind.RESET,
    _errno.ENETUNREACH: NetworkKind.UNREACHABLE,
    _errno.EHOSTUNREACH: NetworkKind.UNREACHABLE,
    _errno.ETIMEDOUT: NetworkKind.UNREACHABLE,
}


def network_kind(exc: BaseException | None) -> NetworkKind | None:
    """How a connection failed, read from the types of the standard-library errors in the
    chain of ``exc`` (``__cause__``, ``__context__``, and urllib3's ``reason``): for
    translators of libraries that wrap socket and TLS errors in their own (httpx under
    huggingface_hub). The socket's error is a fact, its wording is not.

    >>> network_kind(ConnectionRefusedError(111, "Connection refused"))
    <NetworkKind.REFUSED: 'refused'>
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, socket.gaierror):
            return NetworkKind.DNS
        if isinstance(exc, ssl.SSLCertVerificationError):  # OpenSSL: 62 host name, 64 IP mismatch
            code = getattr(getattr(exc, "certificate_error", exc), "verify_code", None)  # aiohttp
            return NetworkKind.TLS_NAME if code in (62, 64) else NetworkKind.TLS
        if isinstance(exc, ssl.SSLError):
            return NetworkKind.TLS_HANDSHAKE
        if "ProxyError" in (c.__name__ for c in type(exc).__mro__):
            return NetworkKind.PROXY
        kind = _KIND_OF_ERRNO.get(getattr(exc, "errno", None) or 0)
        if isinstance(exc, OSError) and kind is not None:
            return kind
        reason = getattr(exc, "reason", None)
        exc = (
            exc.__cause__
            or exc.__context__
            or (reason if isinstance(reason, BaseException) else None)
        )
    return None


class ModelhaulError(Exception):
    """Root of every error modelhaul raises on purpose."""

    category: ClassVar[Category] = Category.CLIENT_ERROR
    retryable: ClassVar[bool] = False
    default_hint: ClassVar[str] = ""
    # The next step of this kind of error when it names a setting; ``hint`` then words it. A
    # subclass with a ``default_hint`` of its own sets it back to None.
    default_remedy: ClassVar[Remedy | None] = None

    # Subclasses repeat this constructor's shape on purpose: each adds the facts it carries.
    def __init__(
        self, message: str, *, hint: str | None = None, remedy: Remedy | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        # An explicit hint replaces the default remedy: it is the raiser's own next step.
        self.remedy = remedy if remedy is not None or hint is not None else self.default_remedy
        if hint is not None:
            self.hint = hint
        else:
            self.hint = self.hint_in(LIBRARY_WORDS) if self.remedy else self.default_hint

    def hint_in(self, words: Words) -> str:
        """The hint in a face's words: its sentence for the remedy, else the hint as given."""
        return self.hint if self.remedy is None else say(words, self.remedy, **self.remedy_fields())

    def remedy_fields(self) -> dict[str, object]:
        """What the remedy's words name (``{amount}``...), from fields set before __init__."""
        return {}

    def to_dict(self, words: Words | None = None) -> dict[str, str]:
        """The JSON shape of result lines and the service's answers; the hint in ``words``
        (default: the library's)."""
        hint = self.hint if words is None else self.hint_in(words)
        return {"category": str(self.category), "message": self.message, "hint": hint}


class InvalidInput(ModelhaulError, ValueError):
    category = Category.INVALID_INPUT
    default_remedy = Remedy.CHECK_INPUT


class TargetConflict(InvalidInput):
    """Two downloads would write the same file: only one of them could be what is on disk.

    ``path`` is the file both would write; ``urls`` the two URLs, the one holding it first.
    """

    default_hint = "Give each download its own destination file."
    default_remedy = None  # its own hint, not InvalidInput's

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
    """Something went wrong on the wire; most of these are worth another attempt.

    ``url`` is where the request was going, when the raiser knows it.
    """

    category = Category.NETWORK
    retryable = True
    default_hint = (
        "Check the network connection, proxy (HTTPS_PROXY) and CA settings, then run again."
    )

    def __init__(  # alike other errors' in shape, each naming its own facts: not shared
        self,
        message: str,
        *,
        hint: str | None = None,
        url: str | None = None,
        remedy: Remedy | None = None,
    ) -> None:
        super().__init__(message, hint=hint, remedy=remedy)
        self.url = url


class NetworkError(TransferError):
    """The connection failed: ``kind`` says how, when the translator knows (a
    :class:`NetworkKind`; a certificate that did not verify is never retried), ``url`` where
    it was going. Guidance is chosen from these facts, not from the message's wording."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        url: str | None = None,
        kind: str | None = None,
    ) -> None:
        if kind is not None and kind not in NETWORK_KINDS:
            raise ValueError(f"kind must be one of {[str(k) for k in NETWORK_KINDS]}, got {kind!r}")
        super().__init__(message, hint=hint, url=url)
        self.kind = None if kind is None else NetworkKind(kind)

    @property  # type: ignore[override]
    def retryable(self) -> bool:  # a certificate fails again (curl stops at once, too)
        return self.kind not in (NetworkKind.TLS, NetworkKind.TLS_NAME)


class StallTimeout(TransferError):
    category = Category.TIMEOUT
    default_remedy = Remedy.RAISE_TIMEOUT


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
    category: Category
    retryable: bool
    hint: str | Remedy  # a Remedy: a next step that names a setting, worded by each face


_STATUS: dict[int, _StatusInfo] = {
    401: _StatusInfo(Category.AUTH, False, Remedy.SEND_CREDENTIALS),
    403: _StatusInfo(Category.AUTH, False, Remedy.CHECK_CREDENTIALS),
    404: _StatusInfo(Category.NOT_FOUND, False, "Check the URL: the server has no such file."),
    410: _StatusInfo(
        Category.NOT_FOUND, False, "The file was removed from the server; check the URL."
    ),
    408: _StatusInfo(Category.SERVER_ERROR, True, "The server timed out; run again later."),
    425: _StatusInfo(Category.SERVER_ERROR, True, "The server asked to retry later; run again."),
    429: _StatusInfo(Category.RATE_LIMITED, True, Remedy.FEWER_CONNECTIONS),
}

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def status_info(status: int) -> tuple[Category, bool, str]:
    """Category, retryable flag and hint (in the library's words) for an HTTP status."""
    if status in _STATUS:
        info = _STATUS[status]
        hint = info.hint
        return (
            info.category,
            info.retryable,
            say(LIBRARY_WORDS, hint) if isinstance(hint, Remedy) else hint,
        )
    if status >= 500:
        return (
            Category.SERVER_ERROR,
            status in RETRYABLE_STATUSES,
            "The server failed; run again later or use a mirror.",
        )
    return (
        Category.CLIENT_ERROR,
        False,
        "The server refused the request; check the URL and headers.",
    )


class HTTPStatusError(TransferError):
    """The server answered with an error status.

    ``retry_after_s`` is the server's Retry-After, ``error_code`` the Hub's X-Error-Code
    (GatedRepo, RepoNotFound, RevisionNotFound, EntryNotFound), when present.
    """

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
        self.retry_after_s = retry_after_s
        self.error_code = error_code
        self._category = category
        self._retryable = retryable
        known = _STATUS.get(status)
        remedy = known.hint if known and not hint and isinstance(known.hint, Remedy) else None
        super().__init__(
            message or f"HTTP {status} from {url}", hint=hint or default, url=url, remedy=remedy
        )
        self.url: str = url

    @property  # type: ignore[override]
    def category(self) -> Category:
        return self._category

    @property  # type: ignore[override]
    def retryable(self) -> bool:
        return self._retryable


class RedirectReason(enum.StrEnum):
    """Why a redirect was refused."""

    TOO_MANY = "too_many"
    SCHEME = "scheme"  # not http or https
    DOWNGRADE = "downgrade"  # https -> http
    LOOP = "loop"


class RedirectRefused(ModelhaulError):
    """A redirect we will not follow: a loop, too many hops, a non-HTTP scheme, an https->http
    downgrade (``reason``, when the raiser says)."""

    category = Category.CLIENT_ERROR
    default_hint = "The server redirects somewhere modelhaul will not go; check the URL."

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        hint: str | None = None,
        remedy: Remedy | None = None,
    ) -> None:
        super().__init__(message, hint=hint, remedy=remedy)
        self.reason = None if reason is None else RedirectReason(reason)


class RetriesExhausted(TransferError):
    """Gave up after the retry budget; ``attempts`` holds every error seen, oldest first."""

    retryable = False

    def __init__(self, last: ModelhaulError, attempts: list[ModelhaulError]) -> None:
        n = len(attempts)
        super().__init__(
            f"{last.message} (gave up after {n} attempt{'s' if n != 1 else ''})",
            hint=last.hint,
            url=getattr(last, "url", None),
            remedy=last.remedy,
        )
        self.last = last
        self.attempts = attempts

    @property  # type: ignore[override]
    def category(self) -> Category:
        return self.last.category


class IntegrityError(ModelhaulError):
    """The bytes are not the published ones: a checksum mismatch, or (with ``expected_size``
    and ``actual_size``) a size the server did not keep."""

    category = Category.INTEGRITY
    default_hint = (
        "The download did not match its checksum and was discarded. Run again; if it fails "
        "again the published checksum may be wrong."
    )

    def __init__(  # its own facts, by name (as TransferError's: deliberately not shared)
        self,
        message: str,
        *,
        expected_size: int | None = None,
        actual_size: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.expected_size = expected_size
        self.actual_size = actual_size


class DiskFull(ModelhaulError, OSError):
    """Not enough free space.

    ``need_bytes`` (what is still to be written), ``free_bytes`` and ``path`` (the directory
    measured) are set when the shortage was found before writing. A full disk met while
    writing (ENOSPC) knows none of them; its message names the file.
    """

    category = Category.DISK_FULL
    default_remedy = Remedy.FREE_SPACE

    def __init__(
        self,
        message: str,
        *,
        need_bytes: int | None = None,
        free_bytes: int | None = None,
        path: str | None = None,
        hint: str | None = None,
        remedy: Remedy | None = None,
    ) -> None:
        self.need_bytes = need_bytes
        self.free_bytes = free_bytes
        self.path = path
        super().__init__(message, hint=hint, remedy=remedy)

    def remedy_fields(self) -> dict[str, object]:
        """For ``Remedy.FREE_SHORTFALL``: how much to free (``amount``) and where (``path``)."""
        return {"amount": human_bytes(self.short_bytes or 0), "path": self.path}

    @property
    def short_bytes(self) -> int | None:
        """How much more must be freed, when the sizes are known."""
        if self.need_bytes is None or self.free_bytes is None:
            return None
        return max(0, self.need_bytes - self.free_bytes)


class PermissionDenied(ModelhaulError, OSError):
    category = Category.PERMISSION
    default_remedy = Remedy.WRITABLE_DIR


class Cancelled(ModelhaulError):
    category = Category.CANCELLED
    default_hint = "Run the same command again to resume; partial data was kept."


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """2, 'model' -> '2 models'; 1 -> '1 model'. ``nouns`` for an irregular plural."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def human_duration(seconds: float, *, least_s: float = 0) -> str:
    """75 -> '75 s', 600 -> '10 min', 9000 -> '2.5 h', 259200 -> '3.0 days'; used in messages
    and hints, never less than ``least_s`` (a wait of '0 s' says nothing)."""
    s = max(abs(seconds), least_s)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; used in messages and hints."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
