"""The upstream Hub as the mirror asks it: the caller's own ``Authorization`` (never the
service's token), one exchange per request, and the facts of a file read from a resolve HEAD the
way huggingface_hub reads them (``X-Repo-Commit``, ``X-Linked-Etag`` else ``ETag``,
``X-Linked-Size`` else ``Content-Length``, ``Location``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

from ..http.upstream import UpstreamAnswer, UpstreamSession
from ..policy.hubpaths import HubPath, is_git_etag, is_lfs_etag, normalize_hub_etag
from ..policy.urls import same_host
from ..policy.validate import is_commit_hash
from .answers import FileFacts

_REDIRECTS = (301, 302, 303, 307, 308)
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="next"')
# More entries than any repository lists: a listing that goes on is not a Hub's.
MAX_LISTED = 1_000_000
# Relative redirects are repository renames; a chain longer than this is a loop.
_MAX_RENAMES = 5


@dataclass(frozen=True, slots=True)
class UpstreamFile:
    """A file upstream: its facts, where its bytes are, and what that request must carry."""

    facts: FileFacts
    url: str  # the CDN's presigned URL, or the resolve URL at the commit
    headers: tuple[tuple[str, str], ...]  # the caller's Authorization, for the Hub's host only


class HubUpstream:
    """Requests to the upstream Hub at ``endpoint``."""

    def __init__(self, endpoint: str, session: UpstreamSession) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.session = session

    def url(self, path: str, query: str = "") -> str:
        return f"{self.endpoint}{path}" + (f"?{query}" if query else "")

    @staticmethod
    def _auth(auth: str | None) -> dict[str, str]:
        return {"Authorization": auth} if auth else {}

    async def api(self, hp: HubPath, query: str, auth: str | None) -> UpstreamAnswer:
        """The Hub's answer to an info or tree request, as it is."""
        return await self.session.fetch(
            "GET", self.url(hp.upstream_path(), query), headers=self._auth(auth)
        )

    async def head(self, hp: HubPath, auth: str | None) -> UpstreamAnswer:
        """HEAD of a resolve URL, following relative redirects (renames) as huggingface_hub
        does; an absolute redirect (the CDN) is the answer."""
        url = self.url(hp.upstream_path())
        for _ in range(_MAX_RENAMES):
            answer = await self.session.fetch("HEAD", url, headers=self._auth(auth))
            location = answer.headers.get("Location", "")
            if answer.status in _REDIRECTS and location.startswith("/"):
                url = urljoin(url, location)
                continue
            return answer
        return answer

    def file_of(self, hp: HubPath, answer: UpstreamAnswer, auth: str | None) -> UpstreamFile | None:
        """The file a successful resolve HEAD describes; None if the answer lacks what a
        client needs (no commit, no usable ETag or size: not a Hub)."""
        h = answer.headers
        commit = h.get("X-Repo-Commit", "")
        etag = normalize_hub_etag(h.get("X-Linked-Etag") or h.get("ETag")) or ""
        redirect = answer.status in _REDIRECTS
        size_text = h.get("X-Linked-Size") or ("" if redirect else h.get("Content-Length", ""))
        if not is_commit_hash(commit) or not size_text.isdigit():
            return None
        if not (is_lfs_etag(etag) or is_git_etag(etag)):
            return None
        facts = FileFacts(commit=commit, etag=etag, size=int(size_text), lfs=is_lfs_etag(etag))
        at_commit = HubPath(
            kind="resolve",
            repo_type=hp.repo_type,
            repo_id=hp.repo_id,
            revision=commit,
            path=hp.path,
        )
        url = h.get("Location") if redirect else None
        url = (
            urljoin(self.url(at_commit.upstream_path()), url)
            if url
            else self.url(at_commit.upstream_path())
        )
        send = (("Authorization", auth),) if auth and same_host(url, self.endpoint) else ()
        return UpstreamFile(facts=facts, url=url, headers=send)

    async def listing(self, hp: HubPath, commit: str, auth: str | None) -> list[dict[str, Any]]:
        """Every entry of a commit's recursive tree, all pages (next pages on the Hub's host
        only: the caller's token goes nowhere else)."""
        at = HubPath(kind="tree", repo_type=hp.repo_type, repo_id=hp.repo_id, revision=commit)
        url: str | None = self.url(at.upstream_path(), "recursive=True&expand=False")
        entries: list[dict[str, Any]] = []
        while url is not None and len(entries) <= MAX_LISTED:
            answer = await self.session.fetch("GET", url, headers=self._auth(auth))
            if answer.status != 200:
                raise ValueError(f"the tree listing answered {answer.status}")
            page = json.loads(answer.body)
            if not isinstance(page, list):
                raise ValueError("the tree listing is not a list")
            entries += [e for e in page if isinstance(e, dict)]
            found = _NEXT.search(answer.headers.get("Link", ""))
            url = found.group(1) if found and same_host(found.group(1), self.endpoint) else None
        return entries

    def rewrite_link(self, link: str | None, mirror_base: str) -> str | None:
        """A ``Link: <next page>`` pointing at the Hub, made to point at the mirror."""
        if not link:
            return None
        return link.replace(f"<{self.endpoint}/", f"<{mirror_base.rstrip('/')}/")


__all__ = ["HubUpstream", "UpstreamFile"]
