"""What the mirror answers: relayed upstream answers, the resolve header contract, and errors in
the Hub's own words (``X-Error-Code``, ``X-Error-Message``), all as plain values the server turns
into HTTP responses."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..http.upstream import UpstreamAnswer

# Headers of an upstream answer worth passing on: the Hub's error protocol, pagination (after
# rewriting), caching hints. Never Xet's (X-Xet-*, Link rel="xet-auth"): a client that saw them
# would go around the mirror.
_RELAYED = (
    "Content-Type",
    "X-Error-Code",
    "X-Error-Message",
    "X-Repo-Commit",
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    "WWW-Authenticate",
)


@dataclass(frozen=True, slots=True)
class Relay:
    """A whole answer: status, headers and a small body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def relay(answer: UpstreamAnswer, *, link: str | None = None) -> Relay:
    """The upstream answer as the mirror passes it on (``link``: the rewritten Link header)."""
    headers = {name: answer.headers[name] for name in _RELAYED if name in answer.headers}
    if link:
        headers["Link"] = link
    return Relay(answer.status, headers, answer.body)


def hub_error(
    status: int, message: str, *, code: str | None = None, commit: str | None = None
) -> Relay:
    """An error as the Hub gives one: JSON body, ``X-Error-Message``, ``X-Error-Code``."""
    headers = {"Content-Type": "application/json", "X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    if commit:
        headers["X-Repo-Commit"] = commit
    return Relay(status, headers, json.dumps({"error": message}).encode())


def unreachable(endpoint: str, reason: str) -> Relay:
    """504: the upstream could not be asked, and the store cannot answer alone."""
    return hub_error(504, f"the upstream Hub {endpoint} is unreachable ({reason})")


def json_answer(payload: object, headers: Mapping[str, str] | None = None) -> Relay:
    return Relay(
        200,
        {"Content-Type": "application/json", **(headers or {})},
        json.dumps(payload).encode(),
    )


@dataclass(frozen=True, slots=True)
class FileFacts:
    """One file of one commit, as the resolve headers describe it."""

    commit: str
    etag: str  # sha256 for LFS files, the git blob id otherwise
    size: int
    lfs: bool


def file_headers(facts: FileFacts) -> dict[str, str]:
    """The resolve header contract without the length: commit, quoted ETag, the linked ETag
    and size of an LFS file, ranges accepted."""
    headers = {
        "X-Repo-Commit": facts.commit,
        "ETag": f'"{facts.etag}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    if facts.lfs:
        headers["X-Linked-Etag"] = f'"{facts.etag}"'
        headers["X-Linked-Size"] = str(facts.size)
    return headers


__all__ = [
    "FileFacts",
    "Relay",
    "file_headers",
    "hub_error",
    "json_answer",
    "relay",
    "unreachable",
]
