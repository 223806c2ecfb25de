"""Which user is on the other end of a loopback TCP connection.

A TCP socket carries no credentials (``SO_PEERCRED`` is for Unix sockets only), but on Linux
the kernel lists every socket of the network namespace in ``/proc/net/tcp`` and
``/proc/net/tcp6`` with the uid that owns it, as identd reads it. Both ends of a loopback
connection are on this machine, so the client's end is listed too: its local address is the
connection's client address, its remote address the server's. Elsewhere (no ``/proc``) the
answer is None, "unknown", and callers must treat an unknown user as a stranger.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable
from pathlib import Path

Address = tuple[str, int]
_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_UID_COLUMN = 7


def peer_uid(client: Address, server: Address, *, tables: Iterable[Path] = _TABLES) -> int | None:
    """The uid owning the client's end of the TCP connection ``client`` -> ``server``.

    None if the connection is not listed (not on this machine, or no ``/proc``).
    """
    want = (_endpoint(*client), _endpoint(*server))
    if None in want:
        return None
    for table in tables:
        try:
            lines = table.read_text(encoding="ascii", errors="replace").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) <= _UID_COLUMN:
                continue
            if (parse_endpoint(fields[1]), parse_endpoint(fields[2])) == want:
                return int(fields[_UID_COLUMN]) if fields[_UID_COLUMN].isdigit() else None
    return None


def parse_endpoint(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """``0100007F:1F90`` (the kernel's hex of the address words in host byte order, then the
    port) -> (127.0.0.1, 8080); IPv4-mapped IPv6 addresses come back as IPv4."""
    addr_hex, sep, port_hex = text.partition(":")
    if not sep or len(addr_hex) not in (8, 32):
        return None
    try:
        raw = bytes.fromhex(addr_hex)
        port = int(port_hex, 16)
    except ValueError:
        return None
    if sys.byteorder == "little":  # each 32-bit word was printed as a native integer
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return _normal(ipaddress.ip_address(raw), port)


def _endpoint(
    host: str, port: int
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    try:
        return _normal(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]), port)
    except ValueError:
        return None


def _normal(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, port
    return ip, port
