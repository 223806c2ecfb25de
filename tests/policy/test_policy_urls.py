"""URLs as values: which are accepted, who may see credentials, where a redirect may lead."""

from __future__ import annotations

import pytest

from modelhaul.errors import InvalidInput, RedirectRefused
from modelhaul.policy.urls import (
    REDIRECT_STATUSES,
    SENSITIVE_HEADERS,
    check_url,
    headers_for_hop,
    host_of,
    next_hop,
    origin_of,
    same_host,
    strip_sensitive,
)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.org/model.bin",
        "HTTPS://Example.org:8443/a?b=c",
        "http://127.0.0.1:9/x",
        "http://[::1]:8080/x",
        "https://bücher.example/x",
        "http://user:pw@host/x",
    ],
)
def test_good_urls_pass_unchanged(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.org/x", "unsupported URL scheme"),
        ("hf://org/name", "unsupported URL scheme"),
        ("example.org/x", "unsupported URL scheme"),
        ("http:///x", "no host"),
        ("http://exa mple.org/x", "contains a space"),
        ("http://exa%20mple.org/x", "contains a space"),
        ("http://exa\tmple.org/x", "control character"),
        ("http://host\n/x", "control character"),
        ("http://exa<mple.org/x", "the character '<'"),
        ("http://host:0/x", "port 0"),
        ("http://host:99999/x", "bad URL"),
        ("http://host:abc/x", "bad URL"),
        ("http://[::1/x", "bad URL"),
    ],
)
def test_bad_urls_are_refused_before_any_request(url: str, says: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_url(url)
    assert says in str(info.value)
    assert info.value.category == "invalid_input"


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("https://hub.example/a", "https://HUB.example/b?c", True),
        ("https://hub.example/a", "https://hub.example:443/a", False),  # port spelt differs
        ("https://hub.example/a", "http://hub.example/a", False),
        ("https://hub.example/a", "https://cdn.example/a", False),
        ("http://127.0.0.1:8000/a", "http://127.0.0.1:8001/a", False),
    ],
)
def test_same_host_is_scheme_host_and_port(a: str, b: str, same: bool) -> None:
    assert same_host(a, b) is same
    assert (origin_of(a) == origin_of(b)) is same


def test_host_of_names_host_and_port() -> None:
    assert host_of("http://127.0.0.1:9/x") == "127.0.0.1:9"
    assert host_of("not a url") == "not a url"


HEADERS = {"Authorization": "Bearer t", "COOKIE": "c=1", "Proxy-Authorization": "p", "Range": "r"}


def test_strip_sensitive_drops_credentials_whatever_their_case() -> None:
    assert strip_sensitive(HEADERS) == {"Range": "r"}
    assert {"authorization", "cookie", "proxy-authorization"} == SENSITIVE_HEADERS


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://hub.example/next", set(HEADERS)),
        ("https://cdn.example/blob", {"Range"}),
        ("http://hub.example/next", {"Range"}),
        ("https://hub.example:8443/next", {"Range"}),
    ],
)
def test_credentials_go_only_to_the_trusted_origin(url: str, kept: set[str]) -> None:
    sent = headers_for_hop(HEADERS, url, trusted="https://hub.example/start")
    assert set(sent) == kept
    assert sent is not HEADERS


@pytest.mark.parametrize(
    ("current", "location", "target"),
    [
        ("https://a.example/x/y", "z", "https://a.example/x/z"),
        ("https://a.example/x/y", "/root", "https://a.example/root"),
        ("https://a.example/x", "https://b.example/cdn?sig=1", "https://b.example/cdn?sig=1"),
        ("http://a.example/x", "https://a.example/x", "https://a.example/x"),
    ],
)
def test_next_hop_resolves_the_location(current: str, location: str, target: str) -> None:
    assert next_hop(current, location, {current}) == target


@pytest.mark.parametrize(
    ("location", "says"),
    [
        ("ftp://a.example/x", "non-HTTP"),
        ("file:///etc/passwd", "non-HTTP"),
        ("http://a.example/x", "downgrade"),
        ("https://a.example/start", "redirect loop"),
    ],
)
def test_next_hop_refuses(location: str, says: str) -> None:
    current = "https://a.example/start"
    with pytest.raises(RedirectRefused) as info:
        next_hop(current, location, {current})
    assert says in str(info.value)


def test_a_downgrade_is_followed_only_when_allowed() -> None:
    current = "https://a.example/start"
    assert next_hop(current, "http://a.example/x", {current}, allow_downgrade=True) == (
        "http://a.example/x"
    )


def test_redirect_statuses() -> None:
    assert frozenset({301, 302, 303, 307, 308}) == REDIRECT_STATUSES
