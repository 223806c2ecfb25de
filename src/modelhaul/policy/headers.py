"""Parsing of the response headers the engine trusts: Content-Range, ETag, Content-Disposition."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from urllib.parse import unquote, urlsplit

# At most 19 digits: beyond any real file size, and int() stays cheap and safe.
_CONTENT_RANGE = re.compile(
    r"^\s*bytes\s+(\d{1,19})-(\d{1,19})/(\d{1,19}|\*)\s*$", re.IGNORECASE | re.ASCII
)
_MAX_SANE = 2**60
_EXT_FILENAME = re.compile(r"filename\*\s*=\s*([^;]+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ContentRange:
    start: int
    end: int  # exclusive
    total: int | None


def parse_content_range(value: str | None) -> ContentRange | None:
    """'bytes 0-99/1000' -> ContentRange(0, 100, 1000); None when absent or malformed."""
    if not value:
        return None
    m = _CONTENT_RANGE.match(value)
    if not m:
        return None
    first, last = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if last < first or last >= _MAX_SANE or (total is not None and last >= total):
        return None
    return ContentRange(first, last + 1, total)


def is_strong_etag(etag: str | None) -> bool:
    """A strong ETag may be used with If-Range; a weak one (W/"...") may not (RFC 9110 13.1.5)."""
    return bool(etag) and not etag.startswith(("W/", "w/")) and len(etag) < 1024  # type: ignore[union-attr]


def normalize_etag(etag: str | None) -> str | None:
    """Strip W/ and quotes, as huggingface_hub does, for use as a blob name."""
    if not etag:
        return None
    if etag[:2] in ("W/", "w/"):
        etag = etag[2:]
    return etag.strip().strip('"') or None


def filename_from_disposition(value: str | None) -> str | None:
    """The file name a Content-Disposition header proposes (filename* preferred), unsanitised."""
    if not value:
        return None
    # RFC 6266 4.3: filename* (RFC 5987, charset'lang'pct-encoded) wins over filename.
    ext = _EXT_FILENAME.search(value)
    if ext:
        charset, _, encoded = ext.group(1).strip().strip('"').partition("'")
        _lang, _, encoded = encoded.partition("'")
        try:
            name = unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            name = ""
        if name:
            return name
    msg = Message()
    msg["content-disposition"] = value
    try:
        plain = msg.get_param("filename", header="content-disposition")
    except (ValueError, LookupError, TypeError):
        return None
    if isinstance(plain, tuple):  # an RFC 2231 continuation the email package decoded
        plain = plain[2]
    return plain or None


def sanitize_filename(name: str | None, *, fallback: str = "download") -> str:
    """A safe single path component: no separators, no leading dot, no control characters.

    Names from the network decide where a file lands, so whatever a server says is cut down to
    a plain name in the target directory.
    """
    if not name:
        return fallback
    name = unquote(name) if "%" in name else name
    # Keep only the last path component, whichever separator the server used.
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(ch for ch in name if ch.isprintable() and ch not in '<>:"|?*')
    # Dots and spaces in any mix at the front would still hide the file ('. .x').
    name = name.strip().lstrip(". ").rstrip()
    if len(name.encode("utf-8")) > 200:
        stem, dot, ext = name.rpartition(".")
        if not dot or len(ext) > 16:
            stem, ext = name, ""
        while len((stem + ("." + ext if ext else "")).encode("utf-8")) > 200:
            stem = stem[:-1]
        name = stem + ("." + ext if ext else "")
    return name or fallback


def filename_from_url(url: str) -> str | None:
    """The last non-empty path segment of a URL (None for a bare host)."""
    try:
        path = urlsplit(url).path if "://" in url else url.split("?", 1)[0].split("#", 1)[0]
    except ValueError:
        return None
    tail = path.rstrip("/").rsplit("/", 1)[-1]
    return tail or None
