"""Plain URL lists: command-line URLs and aria2-style input files."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInput
from ..policy.urls import check_url
from ..policy.validate import check_sha256


@dataclass(frozen=True, slots=True)
class UrlEntry:
    url: str
    out: str | None = None  # file name (or path) relative to the output directory
    sha256: str | None = None
    mirrors: tuple[str, ...] = ()


def parse_input_list(text: str, *, source: str = "input file") -> list[UrlEntry]:
    """Parse an aria2-style input file.

    One URL per line (further tab-separated URLs on the same line are mirrors); indented lines
    that follow set options for it: ``out=NAME``, ``sha256=HEX`` (aria2's
    ``checksum=sha-256=HEX`` is understood too). ``#`` starts a comment line.
    """
    entries: list[UrlEntry] = []
    current: dict[str, object] | None = None

    def flush() -> None:
        if current is not None:
            entries.append(UrlEntry(**current))  # type: ignore[arg-type]

    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        where = f"{source}, line {lineno}"
        if raw[0] in " \t":
            if current is None:
                raise InvalidInput(f"{where}: an option line before any URL")
            key, sep, value = raw.strip().partition("=")
            if not sep:
                raise InvalidInput(f"{where}: expected NAME=VALUE, got {raw.strip()!r}")
            key = key.strip().lower()
            value = value.strip()
            if key == "out":
                current["out"] = value
            elif key == "sha256":
                current["sha256"] = _sha(value, where)
            elif key == "checksum":
                algo, _, digest = value.partition("=")
                if algo.lower() not in ("sha-256", "sha256"):
                    raise InvalidInput(f"{where}: only sha-256 checksums are supported")
                current["sha256"] = _sha(digest, where)
            # Other aria2 options are accepted and ignored, so existing lists keep working.
            continue
        flush()
        urls = raw.strip().split("\t")
        for u in urls:
            try:
                check_url(u.strip())
            except InvalidInput as exc:
                raise InvalidInput(
                    f"{where}: {exc.message}", hint=exc.hint, remedy=exc.remedy
                ) from None
        current = {"url": urls[0].strip(), "mirrors": tuple(u.strip() for u in urls[1:])}
    flush()
    return entries


def _sha(value: str, where: str) -> str:
    try:
        digest = check_sha256(value)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc.message}", hint=exc.hint, remedy=exc.remedy) from None
    assert digest is not None
    return digest
