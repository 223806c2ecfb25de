"""Who the upstream accepted, remembered briefly: the mirror serves a repository's files to a
caller only after the Hub said yes to that caller's token, and remembers the yes for at most
``ACCEPT_TTL_S``, keyed by a hash of the token (never the token itself).

A repository the Hub served to a caller without any token is public; that is remembered in the
repository's folder, so a restarted mirror with the upstream down still serves public models
and only them (a gated or private one would need a fresh yes).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from ..store.repo import RepoStore

ACCEPT_TTL_S = 60.0
_PUBLIC_MARK = "mirror-public"
_MAX_ENTRIES = 10_000


def token_key(auth: str | None) -> str:
    """What identifies a caller: a hash of its Authorization value ("" for none)."""
    return hashlib.sha256(auth.encode()).hexdigest() if auth else ""


class AccessCache:
    """Accepted (caller, repository) pairs, each for ``ttl_s``."""

    def __init__(
        self, *, ttl_s: float = ACCEPT_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._until: dict[tuple[str, str], float] = {}

    def accept(self, auth: str | None, rs: RepoStore) -> None:
        """The Hub answered this caller for this repository (2xx or a redirect)."""
        if len(self._until) >= _MAX_ENTRIES:
            now = self._clock()
            self._until = {k: t for k, t in self._until.items() if t > now}
        self._until[(token_key(auth), rs.folder.name)] = self._clock() + self._ttl_s

    def accepted(self, auth: str | None, rs: RepoStore) -> bool:
        """Whether this caller may have this repository's files without asking the Hub."""
        until = self._until.get((token_key(auth), rs.folder.name))
        return (until is not None and until > self._clock()) or is_public(rs)


def mark_public(rs: RepoStore) -> None:
    """Remember that the Hub served this repository to a caller without a token (called once a
    file of it is in the store, so no folder is made for a repository only looked at)."""
    path = rs.meta / _PUBLIC_MARK
    if not path.exists():
        try:
            rs.meta.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError:
            return  # only a restart with the upstream down misses it


def is_public(rs: RepoStore) -> bool:
    return (rs.meta / _PUBLIC_MARK).is_file()


__all__ = ["ACCEPT_TTL_S", "AccessCache", "is_public", "mark_public", "token_key"]
