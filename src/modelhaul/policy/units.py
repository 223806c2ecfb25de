"""Parsing of human sizes and rates at the boundary ("20M", "1.5G", "500K")."""

from __future__ import annotations

import re

from ..errors import InvalidInput

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?\s*(?:/s)?\s*$", re.IGNORECASE)
_MULT = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str | int, *, what: str = "size") -> int:
    """'20M' -> 20971520 (1024-based, as curl); a bare number is bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise InvalidInput(f"{what} must not be negative: {text}")
        if text > 2**62:
            raise InvalidInput(f"{what} is too large: {text}")
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise InvalidInput(
            f"bad {what}: {text!r}",
            hint="Use a number of bytes with an optional K, M, G or T suffix.",
        )
    value = float(m.group(1)) * _MULT[m.group(2).lower()]
    if value > 2**62:
        raise InvalidInput(f"{what} is too large: {text!r}")
    return int(value)


def parse_rate(text: str | int | None) -> int | None:
    """A --limit-rate value in bytes/s; '0' or None means unlimited."""
    if text is None:
        return None
    value = parse_size(text, what="rate")
    if value == 0 and not isinstance(text, int):
        m = _SIZE.match(str(text))
        if m and float(m.group(1)) != 0:
            # '0.5' would round to 0, which means "unlimited": refuse rather than surprise.
            raise InvalidInput(f"rate {text!r} is below 1 byte/s", hint="Use 0 for unlimited.")
    return value or None
