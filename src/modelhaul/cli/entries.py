"""The URLs an input file (``get -i FILE``) lists, read alike by ``get`` and
``get --via-server``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import InvalidInput
from ..policy.paths import safe_relpath
from ..sources.url import UrlEntry, parse_input_list


def read_input_file(path: str) -> list[UrlEntry]:
    """The entries of the aria2-style list at ``path``; each ``out=`` name must stay inside the
    output directory (-d), as aria2 means it.

    Raises:
        InvalidInput: the file cannot be read, a line is malformed, or an ``out=`` escapes.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read input file {path}: {exc}") from exc
    return [_check_out(e, path) for e in parse_input_list(text, source=path)]


def _check_out(entry: UrlEntry, source: str) -> UrlEntry:
    if entry.out is None:
        return entry
    try:
        out = safe_relpath(entry.out, where=f"{source}: out=")
    except InvalidInput as exc:
        raise InvalidInput(
            f"{source}: out={entry.out!r} is not a relative path inside the output directory",
            hint="Use a plain name or a relative path without '..' (the directory comes from -d).",
        ) from exc
    return entry if out == entry.out else replace(entry, out=out)  # a copy only if it changed
