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
- Where files may land. A client names output files and folders relative to the download
  directory; absolute paths, ``..``, NUL and paths that leave the directory through a symbolic
  link are refused (``resolve_output``, ``resolve_folder``). One exception: a service bound to
  loopback accepts absolute paths from the user it runs as (the uid owning the client's end of
  the connection, ``peer.py``), in any directory that user may write (``resolve_local_path``):
  that user could write there anyway, and the CLI can then put a file where ``get`` without
  ``--via-server`` would (``AccessPolicy.trusts_paths_of``). Bound elsewhere, or for anyone else,
  the download directory is the only place.
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
from .peer import Address, peer_uid

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
    ``local_paths`` False keeps even the service's own user to the download directory.
    """

    bind_host: str
    token: str | None = None
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    allowed_origins: frozenset[str] = field(default_factory=frozenset)
    local_paths: bool = True

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

    def trusts_paths_of(self, client: Address | None, server: Address | None) -> bool:
        """Whether the caller of connection ``client`` -> ``server`` may name absolute paths:
        the service is bound to loopback, and the caller runs as the service's own user.

        The bind address decides, not the client's address: a service bound to all
        interfaces is reachable from elsewhere, and a proxy on this machine may relay anyone.
        """
        if not (self.local_paths and is_loopback_host(self.bind_host)):
            return False
        if client is None or server is None or not is_loopback_host(client[0]):
            return False
        return peer_uid(client, server) == os.geteuid()

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
    dest = _inside(download_dir, out, "out")
    try:
        if dest.is_symlink():
            raise InvalidInput(f"out: {out!r} is a symbolic link; refusing to write through it")
        if dest.is_dir():
            raise InvalidInput(f"out: {out!r} is a directory", hint="Give a file name.")
    except OSError as exc:
        raise InvalidInput(f"out: {out!r} is not a usable file name: {exc.strerror}") from None
    return dest


def resolve_folder(download_dir: Path, folder: str) -> Path:
    """A client-named folder inside ``download_dir`` (made when the file lands), or refuse,
    by the rules of ``resolve_output``; the folder itself must not be a link that leads out.

    Raises:
        InvalidInput: naming the problem.
    """
    path = _inside(download_dir, folder, "dir")
    try:
        if not path.resolve().is_relative_to(download_dir.resolve()):
            raise InvalidInput(
                f"dir: {folder!r} leaves the download directory through a symbolic link",
                hint="Name a folder inside the download directory.",
            )
        if path.exists() and not path.is_dir():
            raise InvalidInput(f"dir: {folder!r} is not a directory")
    except OSError as exc:
        raise InvalidInput(f"dir: {folder!r} is not a usable folder name: {exc.strerror}") from None
    return path


def _inside(download_dir: Path, name: str, where: str) -> Path:
    _check_text(name, where)
    try:
        rel = safe_relpath(name, where=where)
    except InvalidInput as exc:
        reason = exc.message.removeprefix(f"{where}: ").replace(
            "model folder", "download directory"
        )
        if reason.endswith("is absolute"):
            reason += " (this service writes only into its download directory)"
        raise InvalidInput(
            f"{where}: {reason}",
            hint="Give a relative path without '..', e.g. 'models/model.safetensors'. "
            "Absolute paths are accepted only by a service bound to loopback, from the user "
            "it runs as.",
        ) from None
    root = download_dir.resolve()
    dest = root / rel
    try:
        if not dest.parent.resolve().is_relative_to(root):
            raise InvalidInput(
                f"{where}: {name!r} leaves the download directory through a symbolic link",
                hint="Name a place inside the download directory.",
            )
    except OSError as exc:
        raise InvalidInput(f"{where}: {name!r} is not usable: {exc.strerror}") from None
    return dest


def resolve_local_path(path: str, *, where: str, folder: bool = False) -> Path:
    """An absolute path named by the service's own user (see ``trusts_paths_of``): a file (or
    with ``folder``, a directory) anywhere that user may write, or refuse.

    Writable means: the nearest existing directory on the way passes ``os.access`` for writing,
    so missing folders can be made. The path is normalised; ``..`` is allowed, as it would be
    for the user's own shell.

    Raises:
        InvalidInput: not absolute, not usable, a directory where a file is wanted (or the
            reverse), or not writable.
    """
    _check_text(path, where)
    if any(ord(ch) < 32 or ch == "\x7f" for ch in path):
        raise InvalidInput(f"{where}: path {path!r} contains control characters")
    if not os.path.isabs(path):
        raise InvalidInput(f"{where}: {path!r} is not an absolute path")
    target = Path(os.path.normpath(path))
    try:
        if folder and target.exists() and not target.is_dir():
            raise InvalidInput(f"{where}: {target} is not a directory")
        if not folder and target.is_dir():
            raise InvalidInput(f"{where}: {target} is a directory", hint="Give a file name.")
        existing = target if folder else target.parent
        while not existing.exists():
            existing = existing.parent
    except OSError as exc:
        raise InvalidInput(f"{where}: {path!r} is not usable: {exc.strerror}") from None
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInput(
            f"{where}: the service's user may not write to {existing}",
            hint="Choose a directory you may write to.",
        )
    return target


def _check_text(name: str, where: str) -> None:
    try:
        # Path checks measure names in UTF-8; a lone surrogate (valid in JSON) would crash them.
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{where}: {name!r} is not valid Unicode text") from None
