"""``HubMirror``: the Hugging Face mirror's answers, for the server's ``/hf`` routes.

Metadata (repo info, tree pages) is relayed from the upstream Hub with the caller's own token,
pagination links rewritten to point at the mirror. A resolve asks the Hub about the file with
the caller's token (so access stays the Hub's decision), then serves the bytes from the store:
a blob the store lacks is fetched once (``flights``) and streamed to every reader as it arrives
(``bodies``). With the upstream unreachable, files the store holds are served to callers the Hub
accepted within the last minute, or to anyone for a repository it served without a token;
anything else answers 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from ..errors import ModelhaulError
from ..events import EventKind, TaskEvent
from ..http.upstream import UpstreamSession
from ..manager.downloads import DownloadManager
from ..policy.hubpaths import HubPath, is_lfs_etag
from ..policy.validate import is_blob_id, is_commit_hash
from ..store.repo import RepoStore, writing
from .access import AccessCache, mark_public
from .answers import FileFacts, Relay, hub_error, json_answer, relay, unreachable
from .bodies import FileSpan, PrefixWatch, file_chunks, flight_chunks
from .flights import Flight, Flights
from .hub import HubUpstream, UpstreamFile
from .offline import (
    TREE_PAGE_SIZE,
    info_of,
    page_of,
    stored_commit,
    tree_cache_files,
    tree_of,
    whole_tree,
)
from .resume import drop_flight, record_flight, recorded_flights
from .slices import SliceFlights
from .traffic import MirrorTraffic, TrafficListener

log = logging.getLogger("modelhaul.mirror")
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REVISIONS = 10_000
STORE_TELL_S = 1.0


def _sha_of(body: bytes) -> str | None:
    """The commit in a repo info answer."""
    try:
        sha = json.loads(body).get("sha")
    except (ValueError, AttributeError):
        return None
    return sha if isinstance(sha, str) else None


@dataclass(frozen=True, slots=True)
class ServedFile:
    """A file to serve: its facts, and its bytes ``[start, end)`` on demand (spans of files)."""

    facts: FileFacts
    chunks: Callable[[int, int], AsyncIterator[FileSpan]]
    in_flight: bool = False


class HubMirror:
    """The mirror of one upstream Hub into one store, fetching through one manager.

    Example::

        mirror = HubMirror(upstream="https://huggingface.co", store_root=root,
                           manager_of=lambda: service.manager)
        answer = await mirror.resolve(hub_path, auth, fetch=True)
        ...
        await mirror.close()
    """

    def __init__(
        self,
        *,
        upstream: str,
        store_root: Path,
        manager_of: Callable[[], DownloadManager],
        symlinks: bool = True,
        timeout_s: float = 30.0,
        on_traffic: TrafficListener | None = None,
        on_store_change: Callable[[], Awaitable[object]] | None = None,
        slices_dir: Path | None = None,
    ) -> None:
        self.store_root = store_root
        self.symlinks = symlinks
        self._session = UpstreamSession(timeout_s=timeout_s)
        self.hub = HubUpstream(upstream, self._session)
        self._manager_of = manager_of
        self.flights = Flights(manager_of)
        self.access = AccessCache()
        self.watch = PrefixWatch()
        self.traffic = MirrorTraffic(on_traffic)  # bytes served and fetched, per model
        # Told (at most every STORE_TELL_S) that files landed, so the page's store view shows
        # mirrored models: the service rescans its store.
        self._on_store_change = on_store_change
        self._store_telling: asyncio.TimerHandle | None = None
        # Peers' slice requests (issue 17), kept in slices_dir; None: served whole-file.
        self.slices = SliceFlights(slices_dir, stall_timeout_s=timeout_s) if slices_dir else None
        self._unsubscribe: Callable[[], None] | None = None
        self._settling: set[asyncio.Task[None]] = set()
        self._listed: set[tuple[str, str]] = set()  # (repo folder, commit) listed or under way
        self._revisions: dict[tuple[str, str], str] = {}  # (repo folder, branch or tag) -> commit
        self.tree_page_size = TREE_PAGE_SIZE  # offline tree listings, per page

    @property
    def upstream(self) -> str:
        return self.hub.endpoint

    def _follow_manager(self) -> None:
        if self._unsubscribe is None:
            self._unsubscribe = self._manager_of().subscribe(self._on_event)

    def _on_event(self, event: TaskEvent) -> None:
        self.watch.on_event(event)
        if event.kind is EventKind.PROGRESS and event.progress is not None:
            flight = self.flights.of_task(event.task_id)
            if flight is not None:
                key = MirrorTraffic.key(flight.repo)
                self.traffic.fetched(key, event.task_id, event.progress.bytes_received)
        elif event.kind is EventKind.STATE and event.state.final:
            self.traffic.forget_task(event.task_id)

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.traffic.close()
        if self._store_telling is not None:
            self._store_telling.cancel()
        await self.flights.close()
        if self.slices is not None:
            await self.slices.close()
        for task in self._settling:
            task.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)
        await self._session.close()

    def repo(self, hp: HubPath) -> RepoStore:
        return RepoStore(self.store_root, hp.repo_id, hp.repo_type)

    # ------------------------------------------------------------------ metadata

    async def api(self, hp: HubPath, query: str, auth: str | None, mirror_base: str) -> Relay:
        """A repo's info or a page of its tree, as the Hub answers this caller."""
        try:
            answer = await self.hub.api(hp, query, auth)
        except ModelhaulError as exc:
            return await asyncio.to_thread(self._offline_api, hp, query, auth, exc, mirror_base)
        if answer.status < 300:
            rs = self.repo(hp)
            self.access.accept(auth, rs)
            if hp.kind == "info":
                self._remember(rs, hp.revision or "main", _sha_of(answer.body))
        return relay(answer, link=self.hub.rewrite_link(answer.headers.get("Link"), mirror_base))

    def _remember(self, rs: RepoStore, revision: str | None, commit: str | None) -> None:
        """A branch or tag the Hub just resolved: its ref is written once a file of that commit
        is in the store (clients ask for files by commit after resolving the name once)."""
        if not revision or not commit or revision == commit or not is_commit_hash(commit):
            return
        if len(self._revisions) >= _MAX_REVISIONS:
            self._revisions.clear()  # only saves refs of models being fetched right now
        self._revisions[(rs.folder.name, revision)] = commit

    def _refs_of(self, rs: RepoStore, commit: str) -> list[str]:
        return [r for (f, r), c in self._revisions.items() if f == rs.folder.name and c == commit]

    # ------------------------------------------------------------------ files

    async def resolve(
        self, hp: HubPath, auth: str | None, *, fetch: bool, slice_bytes: int | None = None
    ) -> Relay | ServedFile:
        """What a HEAD (``fetch`` False) or GET of a resolve URL answers: the Hub's error or
        redirect as it is, or the file (fetched upstream on a GET if the store lacks it; a
        peer's request names its ``slice_bytes``, and only the slices it reads are fetched)."""
        peer = self.slices if slice_bytes is not None and fetch else None
        if peer is not None and (known := peer.known(hp, auth)) is not None:
            return await self._serve(
                hp, self.repo(hp), known, auth, fetch=True, slice_bytes=slice_bytes
            )
        try:
            answer = await self.hub.head(hp, auth)
        except ModelhaulError as exc:
            return await self._offline(hp, auth, exc)
        location = answer.headers.get("Location", "")
        if answer.status >= 400:
            return relay(answer)
        if answer.status in _REDIRECTS and location.startswith("/"):
            moved = relay(answer)  # a rename the Hub would not follow any further: pass it on
            moved.headers["Location"] = "/hf" + location
            return moved
        file = self.hub.file_of(hp, answer, auth)
        if file is None:
            return hub_error(502, f"the upstream {self.upstream} gave no commit, ETag or size")
        rs = self.repo(hp)
        self.access.accept(auth, rs)
        self._remember(rs, hp.revision, file.facts.commit)
        if peer is not None:
            peer.learn(hp, auth, file)
        return await self._serve(hp, rs, file, auth, fetch=fetch, slice_bytes=slice_bytes)

    async def _serve(
        self,
        hp: HubPath,
        rs: RepoStore,
        file: UpstreamFile,
        auth: str | None,
        *,
        fetch: bool,
        slice_bytes: int | None = None,
    ) -> ServedFile:
        facts = file.facts
        blob = rs.blob_path(facts.etag)
        count = self.traffic.counted
        key = MirrorTraffic.key(rs)
        if await asyncio.to_thread(_vouched, rs, facts.etag, facts.size):
            self._settle(hp, rs, facts, None, auth)
            if slice_bytes is not None and self.slices is not None:
                self.slices.release(facts.etag)  # served from the blob from now on
            return ServedFile(facts, lambda a, b: count(key, file_chunks(blob, a, b)))
        if not fetch:
            return ServedFile(facts, _no_body)
        if slice_bytes is not None and facts.lfs and (slices := self.slices) is not None:
            return ServedFile(
                facts, lambda a, b: slices.chunks(file, slice_bytes, a, b), in_flight=True
            )
        self._follow_manager()
        flight = self.flights.join(rs, file)
        settled = self._settle(hp, rs, facts, flight, auth)
        return ServedFile(
            facts,
            lambda a, b: count(key, flight_chunks(flight, self.watch, a, b, settled)),
            in_flight=True,
        )

    def _settle(
        self, hp: HubPath, rs: RepoStore, facts: FileFacts, flight: Flight | None, auth: str | None
    ) -> asyncio.Task[None] | None:
        """Once the blob is in the store: link the snapshot entry, write the ref, so 'ls' and
        offline clients of this store see the file; the task doing it (None: nothing to do)."""
        link = rs.snapshot_file(facts.commit, hp.path)
        ref = hp.revision if hp.revision and hp.revision != facts.commit else None
        if flight is None and link.exists() and (ref is None or rs.read_ref(ref) == facts.commit):
            return None

        async def settle() -> None:
            if flight is not None:
                await self._wait_recorded(hp, rs, flight, record=auth is None)
            refs = sorted({*self._refs_of(rs, facts.commit), *([ref] if ref else [])})
            with writing(link):
                await asyncio.to_thread(
                    _record, rs, hp.path, facts, refs, self.symlinks, auth is None
                )
            self._store_changed()

        task = self._spawn(settle())
        key = (str(rs.folder), facts.commit)
        if key not in self._listed and not rs.tree_path(facts.commit).exists():
            self._listed.add(key)
            self._spawn(self._save_listing(hp, rs, facts.commit, auth))
        return task

    @staticmethod
    async def _wait_recorded(hp: HubPath, rs: RepoStore, flight: Flight, *, record: bool) -> None:
        """Until the flight ends, recorded meanwhile (``record``) so that a mirror killed
        before it ends resumes it (``resume``); a cancelled flight (the mirror closing) stays
        recorded."""
        facts = flight.file.facts
        if record:
            await asyncio.to_thread(record_flight, rs, hp, facts.commit, facts.etag)
        try:
            await flight.wait()
        except asyncio.CancelledError:
            raise
        except Exception:
            await asyncio.to_thread(drop_flight, rs, facts.etag)
            raise
        await asyncio.to_thread(drop_flight, rs, facts.etag)

    def start_nowait(self) -> None:
        """Go on with the fetches a mirror of this store left under way (killed mid-fetch)."""
        self._spawn(self._resume())

    async def _resume(self) -> None:
        for rec in await asyncio.to_thread(recorded_flights, self.store_root):
            try:
                answer = await self.hub.head(rec.path, None)
            except ModelhaulError as exc:
                log.warning("mirror: the upstream is unreachable, not resuming yet: %s", exc)
                return  # the records stay for the next start, the journals for a client
            file = self.hub.file_of(rec.path, answer, None) if answer.status < 400 else None
            if file is None or file.facts.etag != rec.etag:
                await asyncio.to_thread(drop_flight, rec.repo, rec.etag)
                continue
            log.info("mirror: resuming the fetch of %s", rec.etag)
            served = await self._serve(rec.path, rec.repo, file, None, fetch=True)
            if not served.in_flight:  # the blob made it into the store after all
                await asyncio.to_thread(drop_flight, rec.repo, rec.etag)

    def _store_changed(self) -> None:
        if self._on_store_change is None or self._store_telling is not None:
            return

        def tell() -> None:
            self._store_telling = None
            if self._on_store_change is not None:
                self._spawn(_awaited(self._on_store_change()))

        self._store_telling = asyncio.get_running_loop().call_later(STORE_TELL_S, tell)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._settling.add(task)
        task.add_done_callback(self._settled)
        return task

    async def _save_listing(
        self, hp: HubPath, rs: RepoStore, commit: str, auth: str | None
    ) -> None:
        """The Hub's listing of a commit, kept as huggingface_hub keeps it: what lets the store
        answer for the commit when the upstream is down, and 'ls' judge it whole."""
        try:
            entries = await self.hub.listing(hp, commit, auth)
        except (ModelhaulError, ValueError):
            self._listed.discard((str(rs.folder), commit))  # the next file tries again
            raise
        files = tree_cache_files(entries)
        with writing(rs.tree_path(commit)):
            await asyncio.to_thread(rs.save_tree, commit, files)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("mirror: could not record a file in the store: %s", exc)

    def _offline_api(
        self, hp: HubPath, query: str, auth: str | None, exc: ModelhaulError, mirror_base: str
    ) -> Relay:
        """The upstream is unreachable: info and tree of a revision the store holds whole, the
        tree paged as the Hub pages it (``Link: <next page>; rel="next"``, with a cursor)."""
        rs = self.repo(hp)
        commit = stored_commit(rs, hp.revision)
        files = whole_tree(rs, commit) if commit else None
        if commit is None or files is None:
            return unreachable(self.upstream, exc.message)
        if not self.access.accepted(auth, rs):
            return _not_accepted(self.upstream, commit)
        if hp.kind == "info":
            return json_answer(info_of(hp, commit, files))
        params = parse_qs(query)
        recursive = params.get("recursive", [""])[0].lower() == "true"
        entries = tree_of(files, hp.path, recursive)
        if entries is None:
            return hub_error(404, f"{hp.path} does not exist", code="EntryNotFound", commit=commit)
        paged = page_of(entries, params.get("cursor", [None])[0], self.tree_page_size)
        if paged is None:
            return hub_error(400, "Invalid cursor")
        page, cursor = paged
        if cursor is None:
            return json_answer(page)
        params["cursor"] = [cursor]
        next_url = f"{mirror_base}{hp.upstream_path()}?{urlencode(params, doseq=True)}"
        return json_answer(page, {"Link": f'<{next_url}>; rel="next"'})

    async def _offline(
        self, hp: HubPath, auth: str | None, exc: ModelhaulError
    ) -> Relay | ServedFile:
        """The upstream is unreachable: the stored file, for a caller allowed to have it."""
        rs = self.repo(hp)
        facts = await asyncio.to_thread(stored_file, rs, hp)
        if facts is None:
            return unreachable(self.upstream, exc.message)
        if not self.access.accepted(auth, rs):
            return _not_accepted(self.upstream, facts.commit)
        blob = rs.blob_path(facts.etag)
        key = MirrorTraffic.key(rs)
        return ServedFile(facts, lambda a, b: self.traffic.counted(key, file_chunks(blob, a, b)))


def _not_accepted(upstream: str, commit: str) -> Relay:
    return hub_error(
        401,
        f"the upstream {upstream} is unreachable, and it has not accepted this caller for "
        "this repository lately",
        code="GatedRepo",
        commit=commit,
    )


async def _awaited(awaitable: Awaitable[object]) -> None:
    await awaitable


async def _no_body(start: int, end: int) -> AsyncIterator[FileSpan]:
    return
    yield  # an async generator that yields nothing (HEAD)


def _vouched(rs: RepoStore, etag: str, size: int) -> bool:
    """The store holds this blob whole and checked (the record of its verification, or a
    size match for one another tool wrote and nobody has hashed yet: huggingface_hub's own
    cache is trusted as huggingface_hub trusts it)."""
    blob = rs.blob_path(etag)
    try:
        st = blob.stat()
    except OSError:
        return False
    return st.st_size == size and not rs.is_discredited(etag)


def _record(
    rs: RepoStore, path: str, facts: FileFacts, refs: list[str], symlinks: bool, public: bool
) -> None:
    rs.prepare()
    rs.link(facts.commit, path, facts.etag, symlinks=symlinks)
    for ref in refs:
        if rs.read_ref(ref) != facts.commit:
            rs.write_ref(ref, facts.commit)
    if public:
        mark_public(rs)


def stored_file(rs: RepoStore, hp: HubPath) -> FileFacts | None:
    """The file a resolve names, from the store alone (revision by ref or commit)."""
    rev = hp.revision or "main"
    commit = rev if is_commit_hash(rev) else rs.read_ref(rev)
    if commit is None:
        return None
    with contextlib.suppress(OSError, ModelhaulError):
        entry = rs.snapshot_file(commit, hp.path)
        target = entry.resolve(strict=True)
        etag = target.name
        if is_blob_id(etag) and target.parent == rs.blobs.resolve():
            return FileFacts(
                commit=commit, etag=etag, size=target.stat().st_size, lfs=is_lfs_etag(etag)
            )
    return None


__all__ = ["HubMirror", "ServedFile", "stored_file"]
