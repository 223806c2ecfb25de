"""Who may drive the service, and where it may write.

The rules, as plain functions with no web framework, so they are unit-tested without a server:

- Bound to loopback (127.0.0.0/8, ::1, ``localhost``) no token is needed; bound anywhere else
  every API call must carry the access token (``requires_token``).
- The token is generated on first start and kept in the state directory with mode 0600
  (``load_or_create_token``); clients send it as ``Authorization: Bearer``, the web page as a
  cookie set by ``/?token=...``.
- On loopback, a Host header naming anything but loopback is refused: that is what a DNS
  rebinding page sends (``AccessPolicy.host_ok``).
- State-changing requests and WebSocket upgrades whose Origin is another site are refused, so a
  page elsewhere cannot drive the service through the user's browser (``AccessPolicy.origin_ok``).
- A client names output files relative to the download directory; absolute paths, ``..``, NUL
  and paths that leave the directory through a symbolic link are refused (``resolve_output``).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import InvalidInput, PermissionDenied
from ..policy.paths import safe_relpath

TOKEN_FILE = "server-token"
TOKEN_COOKIE = "modelhaul_token"
_TOKEN_MIN_CHARS = 32
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1, ::ffff:127.x)."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name in ("localhost", "localhost."):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def requires_token(bind_host: str, *, force: bool = False) -> bool:
    """Whether a service bound to ``bind_host`` must demand the access token.

    Any name other than ``localhost`` counts as "elsewhere", even one that happens to resolve
    to loopback today: the decision must not depend on DNS.
    """
    return force or not is_loopback_host(bind_host)


def split_host_port(value: str) -> tuple[str, int | None] | None:
    """``"host"``, ``"host:port"``, ``"[::1]:port"`` -> (host, port); None if malformed."""
    value = value.strip()
    if not value or any(c in value for c in " /\\@?#"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[: end + 1], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    elif value.count(":") > 1:
        return value, None  # a bare IPv6 address
    else:
        host, sep, port_text = value.partition(":")
        port_text = port_text if sep else None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def cookie_value(cookie_header: str | None, name: str) -> str | None:
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessPolicy:
    """What the service accepts, fixed at start.

    ``token`` None means no token is required (loopback without ``--require-token``).
    ``allowed_hosts`` and ``allowed_origins`` add names a reverse proxy may use.
    """

    bind_host: str
    token: str | None = None
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    allowed_origins: frozenset[str] = field(default_factory=frozenset)

    @property
    def token_required(self) -> bool:
        return self.token is not None

    def host_ok(self, host_header: str | None) -> bool:
        """Refuse DNS rebinding: bound to loopback, the Host must name loopback too.

        Off loopback the token guards every call, so any Host is accepted there.
        """
        if not is_loopback_host(self.bind_host):
            return True
        if host_header is None:
            return False
        parsed = split_host_port(host_header)
        if parsed is None:
            return False
        host = parsed[0].lower()
        return is_loopback_host(host) or host in self.allowed_hosts

    def origin_ok(
        self, origin: str | None, host_header: str | None, sec_fetch_site: str | None = None
    ) -> bool:
        """For state-changing requests and WebSocket upgrades: same origin, or allowed.

        No Origin header means a non-browser client (curl, the CLI): browsers always send one
        on cross-origin POSTs and on WebSocket upgrades.
        """
        if sec_fetch_site is not None and sec_fetch_site.strip().lower() == "cross-site":
            return origin is not None and origin.strip() in self.allowed_origins
        if origin is None:
            return True
        origin = origin.strip()
        if origin in self.allowed_origins:
            return True
        if origin.lower() == "null" or host_header is None:
            return False
        try:
            parts = urlsplit(origin)
            origin_port = parts.port
        except ValueError:
            return False
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            return False
        parsed = split_host_port(host_header)
        if parsed is None:
            return False
        host, port = parsed
        default = _DEFAULT_PORTS[scheme]
        same_host = parts.hostname.lower() == host.strip("[]").lower()
        return same_host and (origin_port or default) == (port or default)

    def token_ok(self, authorization: str | None, cookie_header: str | None) -> bool:
        if self.token is None:
            return True
        for given in (bearer_token(authorization), cookie_value(cookie_header, TOKEN_COOKIE)):
            if given is not None and token_matches(given, self.token):
                return True
        return False


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not leak the token."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_path(state_dir: Path) -> Path:
    return state_dir / TOKEN_FILE


def load_or_create_token(state_dir: Path) -> str:
    """The service's access token: read from ``state_dir/server-token``, or created there.

    The file is created with mode 0600 and never followed through a symbolic link; a file that
    others may read is tightened to 0600, one owned by another user is refused.

    Raises:
        PermissionDenied: the token file is not ours, or cannot be written.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = token_path(state_dir)
    existing = read_token(path, tighten=True)
    if existing is not None:
        return existing
    token = new_token()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PermissionDenied(f"cannot write the access token to {path}: {exc}") from exc
    return token


def read_token(path: Path, *, tighten: bool = False) -> str | None:
    """The token in ``path``; None if the file is missing or holds no usable token."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PermissionDenied(f"cannot read the access token file {path}: {exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermissionDenied(f"the access token file {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise PermissionDenied(
                f"the access token file {path} belongs to another user",
                hint=f"Remove it; modelhaul serve creates a new one. Or use another "
                f"MODELHAUL_STATE_DIR than {path.parent}.",
            )
        if tighten and st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
        text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    return text if len(text) >= _TOKEN_MIN_CHARS and text.isprintable() else None


def resolve_output(download_dir: Path, out: str) -> Path:
    """Where a client-named output file goes: ``out`` inside ``download_dir``, or refuse.

    Refused: absolute paths, ``..``, NUL and control characters, backslashes, names the file
    system cannot hold, a directory, and any path that leaves the download directory through a
    symbolic link (an existing component, or the file itself being a link).

    Raises:
        InvalidInput: naming the problem.
    """
    try:
        # safe_relpath measures names in UTF-8; a lone surrogate (valid in JSON) would crash it.
        out.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"out: {out!r} is not valid Unicode text") from None
    try:
        rel = safe_relpath(out, where="out")
    except InvalidInput as exc:
        reason = exc.message.removeprefix("out: ").replace("model folder", "download directory")
        raise InvalidInput(
            f"out: {reason}",
            hint="Give a relative path without '..', e.g. 'models/model.safetensors'.",
        ) from None
    root = download_dir.resolve()
    dest = root / rel
    try:
        if not dest.parent.resolve().is_relative_to(root):
            raise InvalidInput(
                f"out: {out!r} leaves the download directory through a symbolic link",
                hint="Name a file inside the download directory.",
            )
        if dest.is_symlink():
            raise InvalidInput(f"out: {out!r} is a symbolic link; refusing to write through it")
        if dest.is_dir():
            raise InvalidInput(f"out: {out!r} is a directory", hint="Give a file name.")
    except OSError as exc:
        raise InvalidInput(f"out: {out!r} is not a usable file name: {exc.strerror}") from None
    return dest
