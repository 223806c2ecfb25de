"""Checks of values the user hands in, before any request is made: checksums."""

from __future__ import annotations

import re

from ..errors import InvalidInput

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def check_sha256(value: str | None) -> str | None:
    """The SHA-256 ``value`` normalised to lower case; None stays None.

    Raises:
        InvalidInput: ``value`` is not 64 hexadecimal digits.
    """
    if value is None:
        return None
    if not _HEX64.match(value):
        raise InvalidInput(
            f"bad SHA-256 {value!r}: expected 64 hexadecimal digits",
            hint="Copy the checksum exactly as published (sha256sum prints it first).",
        )
    return value.lower()


__all__ = ["check_sha256"]
