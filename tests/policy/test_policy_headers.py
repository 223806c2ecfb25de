"""Parsing what the network and the user hand us: headers, file names, relative paths, sizes.

Everything here takes untrusted text, so besides the tables each parser is fuzzed: it must
never raise anything but its documented error, and what it accepts must be consistent.
"""

from __future__ import annotations

import posixpath
import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from modelhaul.errors import InvalidInput
from modelhaul.policy.headers import (
    ContentRange,
    filename_from_disposition,
    filename_from_url,
    is_strong_etag,
    normalize_etag,
    parse_content_range,
    sanitize_filename,
)
from modelhaul.policy.paths import safe_relpath
from modelhaul.policy.units import parse_rate, parse_size

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4

fuzz = settings(max_examples=250, deadline=None)
spaces = st.sampled_from(["", " ", "  ", "\t"])


# ---------------------------------------------------------------- Content-Range


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-99/1000", ContentRange(0, 100, 1000)),
        ("bytes 0-0/1", ContentRange(0, 1, 1)),
        ("bytes 999-999/1000", ContentRange(999, 1000, 1000)),
        ("bytes 100-199/*", ContentRange(100, 200, None)),
        ("BYTES 1-2/3", ContentRange(1, 3, 3)),
        ("  bytes   5-9/10  ", ContentRange(5, 10, 10)),
        (f"bytes 0-{2**40 - 1}/{2**40}", ContentRange(0, 2**40, 2**40)),
        (None, None),
        ("", None),
        ("bytes */1000", None),  # the 416 form: no range at all
        ("bytes 0-1000/1000", None),  # last byte past the end
        ("bytes 10-5/100", None),  # backwards
        ("bytes -5-10/100", None),
        ("bytes 0-99", None),
        ("bytes=0-99/1000", None),  # the Range request syntax, not a response
        ("items 0-99/1000", None),
        ("bytes 0-99/1000, bytes 200-299/1000", None),
        ("bytes 0x0-0x10/100", None),
        (f"bytes 0-{2**60}/*", None),  # absurd sizes are refused
        ("bytes 1.5-2/3", None),
    ],
)
def test_content_range_table(value: str | None, expected: ContentRange | None) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "bytes 0-" + "9" * 5000 + "/1",
        "bytes " + "1" * 4301 + "-2/3",
        "bytes 0-1/" + "7" * 10_000,
    ],
    ids=["huge-last", "huge-first", "huge-total"],
)
def test_content_range_with_thousands_of_digits_is_refused_not_raised(value: str) -> None:
    # Python refuses int() on strings over 4300 digits with ValueError; a header is not a crash.
    assert parse_content_range(value) is None


def _consistent(cr: ContentRange | None) -> None:
    if cr is None:
        return
    assert 0 <= cr.start < cr.end <= 2**60
    assert cr.total is None or cr.end <= cr.total


@fuzz
@given(
    st.one_of(
        st.text(max_size=40),
        st.builds(
            lambda sp, unit, a, b, c: f"{sp}{unit}{sp or ' '}{a}-{b}/{c}{sp}",
            spaces,
            st.sampled_from(["bytes", "BYTES", "Bytes", "byte", "bits"]),
            st.integers(0, 10**25),
            st.integers(0, 10**25),
            st.one_of(st.integers(0, 10**25), st.just("*"), st.just("")),
        ),
        st.builds(
            lambda a, b, c: f"bytes {a}-{b}/{c}",
            st.integers(-5, 2**64),
            st.integers(-5, 2**64),
            st.one_of(st.integers(-5, 2**64), st.just("*")),
        ),
    )
)
def test_content_range_fuzz_never_raises_and_is_consistent(value: str) -> None:
    _consistent(parse_content_range(value))


@fuzz
@given(first=st.integers(0, 2**50), length=st.integers(1, 2**40), extra=st.integers(0, 2**40))
def test_content_range_round_trip(first: int, length: int, extra: int) -> None:
    last = first + length - 1
    total = last + 1 + extra
    assert parse_content_range(f"bytes {first}-{last}/{total}") == ContentRange(
        first, last + 1, total
    )
    assert parse_content_range(f"bytes {first}-{last}/*") == ContentRange(first, last + 1, None)
    assert parse_content_range(f"bytes {first}-{last}/{last}") is None


# ---------------------------------------------------------------- ETag


@pytest.mark.parametrize(
    ("etag", "strong", "normal"),
    [
        ('"abc123"', True, "abc123"),
        ('W/"abc123"', False, "abc123"),
        ('w/"abc123"', False, "abc123"),
        ("abc123", True, "abc123"),  # unquoted, as some servers send
        ('""', True, None),
        ("", False, None),
        (None, False, None),
        ('  "abc"  ', True, "abc"),
        ('"' + "a" * 2000 + '"', False, "a" * 2000),  # absurdly long: not used for If-Range
    ],
)
def test_etags(etag: str | None, strong: bool, normal: str | None) -> None:
    assert is_strong_etag(etag) is strong
    assert normalize_etag(etag) == normal


@fuzz
@given(st.one_of(st.none(), st.text(max_size=30)))
def test_etag_fuzz(etag: str | None) -> None:
    strong = is_strong_etag(etag)
    assert isinstance(strong, bool)
    if strong:
        assert etag and not etag.upper().startswith("W/")
    normal = normalize_etag(etag)
    assert normal is None or (normal and not normal.startswith('"') and not normal.endswith('"'))


# ---------------------------------------------------------------- Content-Disposition


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('attachment; filename="model.safetensors"', "model.safetensors"),
        ("attachment; filename=plain.bin", "plain.bin"),
        ('inline; filename="a b.txt"', "a b.txt"),
        ("attachment; filename*=UTF-8''na%C3%AFve%20file.txt", "naïve file.txt"),
        ("attachment; filename*=utf-8''%E2%82%AC%20rates.txt", "€ rates.txt"),
        ("attachment; filename*=UTF-8'en'x.txt", "x.txt"),
        ('attachment; filename="../../etc/passwd"', "../../etc/passwd"),  # unsanitised here
        ("attachment", None),
        ('attachment; filename=""', None),
        ("", None),
        (None, None),
    ],
)
def test_disposition_table(value: str | None, expected: str | None) -> None:
    assert filename_from_disposition(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "attachment; filename=\"fallback.txt\"; filename*=UTF-8''r%C3%A9el.txt",
        "attachment; filename*=UTF-8''r%C3%A9el.txt; filename=\"fallback.txt\"",
    ],
    ids=["plain-first", "extended-first"],
)
def test_disposition_prefers_the_extended_filename(value: str) -> None:
    """RFC 6266 4.3: when both are present, ``filename*`` wins, in whichever order they come."""
    assert filename_from_disposition(value) == "réel.txt"


@fuzz
@given(
    st.one_of(
        st.text(max_size=60),
        st.builds(lambda s: f'attachment; filename="{s}"', st.text(max_size=30)),
        st.builds(lambda s: f"attachment; filename*={s}", st.text(max_size=30)),
        st.builds(
            lambda cs, s: f"attachment; filename*={cs}''{s}",
            st.sampled_from(["UTF-8", "utf-8", "iso-8859-1", "bogus", ""]),
            st.text("%0123456789ABCDEFabc./", max_size=30),
        ),
    )
)
def test_disposition_fuzz_never_raises(value: str) -> None:
    name = filename_from_disposition(value)
    assert name is None or (isinstance(name, str) and name)


# ---------------------------------------------------------------- sanitize_filename


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.safetensors", "model.safetensors"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("%2e%2e%2fsecret.txt", "secret.txt"),  # percent-encoded traversal
        ("a%2Fb.bin", "b.bin"),
        (".bashrc", "bashrc"),
        ("...hidden", "hidden"),
        ("  spaced name.txt  ", "spaced name.txt"),
        ('a<b>c:"d|e?f*g.txt', "abcdefg.txt"),
        ("tab\there\nnl\x00nul.txt", "tabherenlnul.txt"),
        ("naïve €.txt", "naïve €.txt"),
        ("dir/", "download"),
        ("..", "download"),
        (".", "download"),
        ("", "download"),
        (None, "download"),
        ("///", "download"),
    ],
)
def test_sanitize_table(name: str | None, expected: str) -> None:
    assert sanitize_filename(name) == expected


def test_sanitize_custom_fallback() -> None:
    assert sanitize_filename("..", fallback="file.bin") == "file.bin"


@pytest.mark.parametrize(
    ("name", "ending"),
    [
        ("a" * 300 + ".safetensors", ".safetensors"),
        ("é" * 300 + ".gguf", ".gguf"),
        ("€" * 300, "€"),
        ("x" * 250 + "." + "y" * 40, "x"),  # an "extension" that long is not kept
    ],
)
def test_sanitize_long_names_keep_the_extension_and_200_bytes(name: str, ending: str) -> None:
    got = sanitize_filename(name)
    assert len(got.encode("utf-8")) <= 200
    assert len(got.encode("utf-8")) > 190  # cut to the limit, not to nothing
    assert got.endswith(ending)


def _check_safe_name(got: str) -> None:
    assert got
    assert got not in (".", "..")
    assert not got.startswith(".")
    assert "/" not in got and "\\" not in got and "\x00" not in got
    assert not any(unicodedata.category(ch) == "Cc" for ch in got)
    assert len(got.encode("utf-8")) <= 200


@fuzz
@given(st.one_of(st.text(max_size=300), st.text(" ./\\%2eEfF0a\x00\n", max_size=40)))
@example(". .x")
@example(" . .x")
@example(".%20.x")
@example("%2e .x")
def test_sanitize_fuzz_always_gives_a_safe_name(name: str) -> None:
    _check_safe_name(sanitize_filename(name))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://host/org/repo/resolve/main/model.bin", "model.bin"),
        ("https://host/a/model.bin?download=true#frag", "model.bin"),
        ("https://host/a/b.gguf/", "b.gguf"),
        ("https://host/a%20b.bin", "a%20b.bin"),  # decoded later by sanitize_filename
        ("https://host", None),
        ("https://host?x=1", None),
        ("https://host/", None),  # a bare host with a trailing slash has no file name either
        ("https://host/?x=1", None),
        ("relative/dir/file.txt", "file.txt"),
        ("", None),
    ],
)
def test_filename_from_url(url: str, expected: str | None) -> None:
    assert filename_from_url(url) == expected


# ---------------------------------------------------------------- safe_relpath


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("model.safetensors", "model.safetensors"),
        ("a/b/c.txt", "a/b/c.txt"),
        ("a//b", "a/b"),
        ("dir/", "dir"),
        ("...", "..."),
        ("a/..b/c..", "a/..b/c.."),
        (".gitattributes", ".gitattributes"),
        ("naïve/€.bin", "naïve/€.bin"),
        ("x" * 255, "x" * 255),
    ],
)
def test_safe_relpath_accepts(path: str, expected: str) -> None:
    assert safe_relpath(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "",
        None,
        5,
        b"a.bin",
        ["a"],
        "/etc/passwd",
        "//server/share",
        "..",
        ".",
        "../x",
        "a/../../x",
        "a/..",
        "a/./b",
        "./a",
        "a\\..\\b",
        "a\\b",
        "C:/Windows",
        "c:x",
        "a\x00b",
        "a\nb",
        "a\rb",
        "\x7f",
        "\x1b[31m",
        "x" * 256,
        "é" * 128,  # 256 bytes in one component
        "a/" * 2100,
    ],
)
def test_safe_relpath_refuses(path: object) -> None:
    with pytest.raises(InvalidInput):
        safe_relpath(path)


def test_safe_relpath_names_where_it_came_from() -> None:
    with pytest.raises(InvalidInput, match="manifest line 3"):
        safe_relpath("../x", where="manifest line 3")
    try:
        safe_relpath("/abs")
    except InvalidInput as exc:
        assert exc.category == "invalid_input"
        assert "/abs" in exc.message


@fuzz
@given(
    st.one_of(
        st.text(max_size=40),
        st.text("ab./\\:\x00\n \u2025\uff0e", max_size=20),
        st.lists(st.sampled_from(["a", "..", ".", "", "b.c", "...", "\\"]), max_size=6).map(
            "/".join
        ),
    )
)
def test_safe_relpath_fuzz_accepted_paths_stay_inside(path: str) -> None:
    try:
        got = safe_relpath(path)
    except InvalidInput:
        return
    base = "/srv/models/org--name"
    joined = posixpath.normpath(posixpath.join(base, got))
    assert joined.startswith(base + "/")
    assert got and not got.startswith("/")
    assert ".." not in got.split("/") and "." not in got.split("/") and "" not in got.split("/")
    assert "\\" not in got and not any(ord(ch) < 32 or ch == "\x7f" for ch in got)
    assert safe_relpath(got) == got  # accepted output is already canonical


# ---------------------------------------------------------------- parse_size / parse_rate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1", 1),
        ("1024", 1024),
        ("500K", 500 * KiB),
        ("500k", 500 * KiB),
        ("20M", 20 * MiB),
        ("20m", 20 * MiB),
        ("20MB", 20 * MiB),
        ("20MiB", 20 * MiB),
        ("20 MiB", 20 * MiB),
        ("1.5G", int(1.5 * GiB)),
        ("2T", 2 * TiB),
        ("20M/s", 20 * MiB),
        ("  7  ", 7),
        ("10b", 10),
        (0, 0),
        (123456, 123456),
        (2**62, 2**62),
    ],
)
def test_parse_size_table(text: str | int, expected: int) -> None:
    got = parse_size(text)
    assert got == expected
    assert type(got) is int


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "abc",
        "M",
        "-1",
        "-1M",
        "1e3",
        "20X",
        "1.5.5",
        "1,5M",
        "20 M B x",
        "nan",
        "inf",
        "0x10",
        "9" * 30 + "T",  # too large
        "5000000T",
        -1,
        True,
        False,
        None,
        b"20M",
    ],
)
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(InvalidInput):
        parse_size(text)  # type: ignore[arg-type]


def test_parse_size_error_names_what_and_hints() -> None:
    with pytest.raises(InvalidInput, match="bad chunk size") as info:
        parse_size("lots", what="chunk size")
    assert "K, M, G or T" in info.value.hint


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("0", None),  # zero means unlimited
        (0, None),
        ("0M", None),
        ("20M", 20 * MiB),
        ("1K/s", KiB),
        (4096, 4096),
    ],
)
def test_parse_rate_table(text: str | int | None, expected: int | None) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["fast", "-5", -5, "1e6"])
def test_parse_rate_refuses(text: str | int) -> None:
    with pytest.raises(InvalidInput, match="rate"):
        parse_rate(text)


@fuzz
@given(
    st.one_of(
        st.text(max_size=20),
        st.builds(
            lambda sp, num, frac, unit, tail: f"{sp}{num}{frac}{sp}{unit}{tail}{sp}",
            spaces,
            st.integers(0, 10**25),
            st.sampled_from(["", ".5", ".25", ".", ".0001"]),
            st.sampled_from(["", "k", "K", "m", "M", "g", "G", "t", "T", "x"]),
            st.sampled_from(["", "b", "B", "iB", "ib", "/s", "B/s", "Bps", "/m"]),
        ),
        st.integers(-(2**70), 2**70),
    )
)
def test_parse_size_fuzz_only_raises_invalid_input(text: str | int) -> None:
    try:
        got = parse_size(text)
    except InvalidInput:
        return
    assert type(got) is int
    assert got >= 0
    if isinstance(text, str):
        assert got <= 2**62  # text beyond that is refused as too large
    try:
        rate = parse_rate(text)
    except InvalidInput:
        # A positive rate below 1 byte/s would round to 0 ("unlimited"): refused instead.
        assert got == 0 and isinstance(text, str)
        return
    assert rate == (got or None)


@fuzz
@given(
    number=st.integers(0, 10**6),
    suffix=st.sampled_from(["", "K", "M", "G", "T", "k", "m", "g", "t"]),
    tail=st.sampled_from(["", "B", "iB", "/s", "B/s"]),
)
def test_parse_size_suffix_is_1024_based(number: int, suffix: str, tail: str) -> None:
    mult = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}[suffix.lower()]
    text = f"{number}{suffix}{tail}"
    if number * mult > 2**62:
        with pytest.raises(InvalidInput):
            parse_size(text)
    else:
        assert parse_size(text) == number * mult
