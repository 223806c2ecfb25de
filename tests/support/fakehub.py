"""A fake Hugging Face Hub for tests: two real aiohttp sites on loopback, no mocks.

The fake owns a thread with its own event loop, so sync tests, async tests and subprocesses can
all talk to it; every public method is thread-safe.

Sites (ephemeral ports, loopback only):

- ``hub``, ``FakeHub.endpoint`` = ``http://127.0.0.1:PORT``: the API (model/dataset info, tree
  listing) and ``/resolve/``. Regular files are served here; LFS files answer 302 to the CDN.
- ``cdn``, ``FakeHub.cdn_base`` = ``http://127.0.0.2:PORT`` (127.0.0.1 if 127.0.0.2 cannot be
  bound, as on macOS): blob URLs with a presigned-looking query string; without it, 403.

Usage::

    with FakeHub(page_size=2) as hub:
        commit = hub.add_repo("org/model", {"config.json": b"{}", "model.bin": bytes(4096)})
        hub.set_token("hf_test")
        # Point HF_ENDPOINT (or huggingface_hub.constants.ENDPOINT) at hub.endpoint.

    @pytest.fixture
    def hub():
        yield from fakehub_fixture(page_size=2)

Routes, as huggingface_hub calls them (see /work/shared/HF_HUB_PROTOCOL.md):

- ``GET /api/{models|datasets|spaces}/{repo}[/revision/{rev}]``: info JSON with ``id``, ``sha``,
  ``siblings`` (``?blobs=True`` adds ``size``, ``blobId``, ``lfs``); ``?expand=`` filters fields.
- ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]?recursive=&expand=``: file entries ``{type, oid,
  size, path, lfs?}`` and directory entries; more than ``page_size`` entries paginate through
  ``Link: <...>; rel="next"``.
- ``HEAD|GET /[datasets/|spaces/]{repo}/resolve/{rev}/{path}``: always ``X-Repo-Commit``.
  Regular files: 200, ``ETag`` = git blob sha1, the content (Range honoured). LFS files (size >=
  ``lfs_threshold``): 302, ``Location`` on the CDN, ``X-Linked-Etag`` = sha256, ``X-Linked-Size``
  and a short text body whose ``Content-Length`` is not the file size. The tree ``oid`` of an LFS
  file is the git sha1 of its pointer file, as on the real Hub.
- CDN ``HEAD|GET /repos/xx/yy/{sha256}?X-Amz-...``: the blob, with Range, If-Range,
  ``Accept-Ranges``, ``Last-Modified`` and an S3-style ``ETag`` (MD5 of the content, not the
  sha256): If-Range must use the validator the CDN itself sent.
- ``GET /api/agent-harnesses``: an empty registry. huggingface_hub >= 2 fetches it, without a
  token, the first time it builds request headers in a process (then caches it in ``HF_HOME``).

Ranges: one ``bytes=a-b``, ``a-`` or ``-n`` range gets 206 with ``Content-Range``; past the end
gets 416 with ``Content-Range: bytes */size``; several ranges, a malformed header or a failed
If-Range get the whole body with 200 (as S3 does): a client must handle 200 to a ranged request.

Auth and errors, as the real Hub answers them (``X-Error-Code``, ``X-Error-Message``, JSON body):

- A token other than the one given to ``set_token`` gets 401 "Invalid credentials in
  Authorization header" on every Hub route.
- Unknown repo, or private repo without a token: ``RepoNotFound``, 401 without a token, else 404.
- Gated repo without a token: info and tree work, ``/resolve/`` gets 401 ``GatedRepo``.
- Unknown revision: 404 ``RevisionNotFound``. Missing file: 404 ``EntryNotFound`` with
  ``X-Repo-Commit``.
- ``rate_limit(n)``: the next n Hub requests get 429 with ``Retry-After`` and ``RateLimit``.
- ``add_raw_tree_entry(repo, entry)``: an unchecked entry in the root tree listing, for testing
  what clients do with hostile names (``../x``, absolute paths, backslashes, NUL).

Faults, keyed by blob, for file bodies on either site (CDN for LFS files, Hub for regular ones):

- ``drop_after(key, n)``: the next response(s) send n body bytes, then close the connection.
- ``stall_after(key, n)``: the next response(s) send n body bytes, then wait for
  ``release_stalls()`` (or ``stop()``, which cuts them).
- ``set_speed_limit(bytes_per_s)``: a cap per response, so per connection.
- ``lie_about(key, content)``: from now on this blob's bodies carry ``content`` (same length)
  instead of its bytes, while every header still advertises the real ones: a lying upstream.

Observing: ``requests`` holds a ``RequestRecord`` per request, logged on arrival, before any byte
of the answer leaves, so a client that saw a response can assert on it at once. ``bytes_sent``
and ``cdn_bytes`` count body bytes handed to the socket; ``wait_bytes`` and ``wait_request``
block on a condition variable. A blob ``key`` is its sha256, or a file path that names one blob
across all repos and revisions.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode

from aiohttp import web
from aiohttp.typedefs import Handler

Site = Literal["hub", "cdn"]

_HUB_HOST = "127.0.0.1"
_CDN_HOST = "127.0.0.2"
_CHUNK_BYTES = 64 * 1024
_DATE_ISO = "2024-01-01T00:00:00.000Z"
_LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"
_TYPE_PLURALS = {"model": "models", "dataset": "datasets", "space": "spaces"}
_RESOLVE_PREFIXES = {"datasets": "dataset", "spaces": "space"}
# What may follow a one-segment repo id in API URLs (huggingface_hub's _REPO_URL_SUBPATHS).
_API_SUBPATHS = {"resolve", "tree", "blob", "raw", "refs", "commit", "discussions", "revision"}
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
_INVALID_TOKEN = "Invalid credentials in Authorization header"


@dataclass(slots=True)
class RequestRecord:
    """One request as the fake saw it; ``status`` and ``body_bytes`` fill in as the answer goes.

    ``headers`` has lower-case names; ``path`` and ``query`` are raw (still percent-encoded).
    """

    method: str
    site: Site
    local_host: str
    host: str
    path: str
    query: str
    headers: dict[str, str]
    status: int | None = None
    body_bytes: int = 0

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


_RECORD = web.RequestKey("record", RequestRecord)


@dataclass(frozen=True, slots=True)
class _Blob:
    content: bytes
    sha256: str
    git_oid: str
    md5: str


@dataclass(frozen=True, slots=True)
class _File:
    path: str
    blob: _Blob
    pointer: bytes | None  # the git-lfs pointer file, None for a regular file

    @property
    def oid(self) -> str:
        """The git blob id git stores for this path: the pointer's for an LFS file."""
        return self.blob.git_oid if self.pointer is None else _git_oid(self.pointer)


@dataclass(slots=True)
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    gated: bool
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, _File]] = field(default_factory=dict)
    raw_entries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by commit

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


@dataclass(frozen=True, slots=True)
class _Fault:
    mode: Literal["drop", "stall"]
    after_bytes: int


class FakeHub:
    """A fake Hub and CDN on loopback; see the module docstring for routes, auth rules and faults.

    Args:
        page_size: tree entries per page before ``Link: rel="next"`` pagination kicks in.
    """

    def __init__(self, *, page_size: int = 1000) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.page_size = page_size
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._blobs: dict[str, _Blob] = {}
        self._token: str | None = None
        self._rate_limited = 0
        self._api_stalls = 0
        self._retry_after_s = 1
        self._faults: dict[str, list[_Fault]] = {}
        self._speed_bytes_per_s: int | None = None
        self._total_bytes_per_s: int | None = None
        self._total_next = 0.0  # when the capped CDN may send its next piece (loop time)
        self._lies: dict[str, bytes] = {}
        self._log: list[RequestRecord] = []
        self._sent: dict[tuple[Site, str], int] = {}
        self._secret = secrets.token_bytes(16)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._released: asyncio.Event | None = None
        self._closing = False
        self._startup_error: BaseException | None = None
        self._endpoint: str | None = None
        self._cdn_base: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``, the value for ``HF_ENDPOINT``."""
        if self._endpoint is None:
            raise RuntimeError("FakeHub is not started")
        return self._endpoint

    @property
    def cdn_base(self) -> str:
        """``http://127.0.0.2:PORT``, where LFS downloads redirect to."""
        if self._cdn_base is None:
            raise RuntimeError("FakeHub is not started")
        return self._cdn_base

    def start(self) -> FakeHub:
        """Bind both sites and serve them from a background thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("FakeHub is already started")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="FakeHub", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout=10):
            raise RuntimeError("FakeHub did not start within 10 s")
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("FakeHub failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Close both sites, cutting open connections (stalled ones included); idempotent."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=10)
        self._thread = None
        self._endpoint = self._cdn_base = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- content -----------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        repo_type: str = "model",
        revision: str = "main",
        lfs_threshold: int = 1024,
        private: bool = False,
        gated: bool = False,
        commit: str | None = None,
    ) -> str:
        """Create a repo whose ``revision`` branch holds ``files``; returns the commit sha.

        Files of ``lfs_threshold`` bytes or more are stored as LFS (served through the CDN).

        Raises:
            ValueError: the repo exists, or a path, commit or repo type is invalid.
        """
        _check_repo_type(repo_type)
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise ValueError(f"{repo_type} repo {repo_id!r} already exists")
            self._repos[(repo_type, repo_id)] = _Repo(repo_type, repo_id, private, gated)
        return self.add_revision(
            repo_id,
            revision,
            files,
            repo_type=repo_type,
            lfs_threshold=lfs_threshold,
            commit=commit,
        )

    def add_revision(
        self,
        repo_id: str,
        revision: str,
        files: Mapping[str, bytes],
        *,
        repo_type: str = "model",
        lfs_threshold: int = 1024,
        commit: str | None = None,
    ) -> str:
        """Add a commit holding exactly ``files`` and point ``revision`` (a branch or tag) at it.

        Moving an existing name (``"main"``) keeps the old commit reachable by its hash. Identical
        content shares one blob across repos and revisions. Returns the commit sha.
        """
        _check_repo_type(repo_type)
        tree = {
            path: self._make_file(path, content, lfs_threshold) for path, content in files.items()
        }
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                raise ValueError(f"unknown {repo_type} repo {repo_id!r}; call add_repo first")
            if commit is None:
                seed = f"{repo_type}/{repo_id}@{revision}#{len(repo.commits)}:" + ",".join(
                    f"{f.path}={f.oid}" for f in sorted(tree.values(), key=lambda f: f.path)
                )
                commit = hashlib.sha1(seed.encode()).hexdigest()
            if not _COMMIT_RE.fullmatch(commit):
                raise ValueError(f"commit must be 40 lower-case hex digits, got {commit!r}")
            for f in tree.values():
                self._blobs.setdefault(f.blob.sha256, f.blob)
            repo.commits[commit] = {
                path: _File(path, self._blobs[f.blob.sha256], f.pointer) for path, f in tree.items()
            }
            repo.refs[revision] = commit
        return commit

    def add_raw_tree_entry(
        self,
        repo_id: str,
        entry: Mapping[str, Any],
        *,
        repo_type: str = "model",
        revision: str = "main",
    ) -> None:
        """Append ``entry`` verbatim to the root tree listing of ``revision`` (hostile names too).

        Nothing checks it and nothing serves it under ``/resolve/``: it exists to test how a
        client treats what a compromised or buggy Hub could list (``../x``, ``/etc/x``, NUL).
        """
        _check_repo_type(repo_type)
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            commit = repo.resolve(revision) if repo else None
            if repo is None or commit is None:
                raise ValueError(f"unknown {repo_type} repo {repo_id!r} or revision {revision!r}")
            repo.raw_entries.setdefault(commit, []).append(dict(entry))

    def set_token(self, token: str | None) -> None:
        """Accept ``token`` (and only it); it opens private and gated repos. None: no token."""
        with self._lock:
            self._token = token

    def cdn_url(self, key: str, filename: str | None = None) -> str:
        """A presigned CDN URL for a blob, as the Hub's 302 would give."""
        return self._cdn_url(self._blob_for(key), filename or "blob")

    # -- faults ------------------------------------------------------------------------------------

    def rate_limit(self, n_requests: int, retry_after_s: int = 1) -> None:
        """Answer the next ``n_requests`` Hub requests with 429 and ``Retry-After``."""
        with self._lock:
            self._rate_limited = n_requests
            self._retry_after_s = retry_after_s

    def stall_api(self, times: int = 1) -> None:
        """The next ``times`` API requests (model info, tree) get no answer until
        ``release_stalls()`` (or ``stop()``, which cuts them)."""
        with self._lock:
            self._api_stalls = times

    def drop_after(self, key: str, n_bytes: int, *, times: int = 1) -> None:
        """The next ``times`` responses for this blob close the connection after ``n_bytes``."""
        self._add_fault(key, _Fault("drop", n_bytes), times)

    def stall_after(self, key: str, n_bytes: int, *, times: int = 1) -> None:
        """The next ``times`` responses for this blob send ``n_bytes``, then hold them."""
        self._add_fault(key, _Fault("stall", n_bytes), times)

    def release_stalls(self) -> None:
        """Let every response stalled now carry on (wait_bytes first to be sure it got there)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._release_stalls_nowait)

    def set_speed_limit(self, bytes_per_s: int | None) -> None:
        """Cap each new file-body response at ``bytes_per_s``; None removes the cap."""
        if bytes_per_s is not None and bytes_per_s < 1:
            raise ValueError(f"bytes_per_s must be >= 1, got {bytes_per_s}")
        with self._lock:
            self._speed_bytes_per_s = bytes_per_s

    def set_total_speed_limit(self, bytes_per_s: int | None) -> None:
        """Cap all file bodies together at ``bytes_per_s`` (an uplink); None removes it."""
        if bytes_per_s is not None and bytes_per_s < 1:
            raise ValueError(f"bytes_per_s must be >= 1, got {bytes_per_s}")
        with self._lock:
            self._total_bytes_per_s = bytes_per_s

    def lie_about(self, key: str, content: bytes) -> None:
        """Serve ``content`` as this blob's body from now on; headers stay the real blob's."""
        blob = self._blob_for(key)
        if len(content) != len(blob.content):
            raise ValueError("a lie must have the length of the blob it replaces")
        with self._lock:
            self._lies[blob.sha256] = bytes(content)

    # -- observing ---------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the request log, oldest first."""
        with self._lock:
            return list(self._log)

    def reset_stats(self) -> None:
        """Clear the request log and the byte counters."""
        with self._lock:
            self._log.clear()
            self._sent.clear()

    def bytes_sent(self, key: str, *, site: Site | None = None) -> int:
        """Body bytes of this blob handed to sockets so far, on ``site`` or on both."""
        sha = self._blob_for(key).sha256
        with self._lock:
            return self._bytes_sent_locked(sha, site)

    def cdn_bytes(self, key: str) -> int:
        """Body bytes of this blob the CDN has sent."""
        return self.bytes_sent(key, site="cdn")

    def wait_bytes(
        self, key: str, n_bytes: int, *, timeout_s: float = 5.0, site: Site | None = None
    ) -> int:
        """Block until at least ``n_bytes`` of this blob have been sent; returns the count.

        Raises:
            TimeoutError: fewer bytes went out within ``timeout_s``.
        """
        sha = self._blob_for(key).sha256
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._bytes_sent_locked(sha, site) >= n_bytes, timeout_s
            ):
                sent = self._bytes_sent_locked(sha, site)
                raise TimeoutError(f"{sent} of {n_bytes} bytes of {key} sent within {timeout_s} s")
            return self._bytes_sent_locked(sha, site)

    def wait_request(
        self, match: Callable[[RequestRecord], bool], *, count: int = 1, timeout_s: float = 5.0
    ) -> list[RequestRecord]:
        """Block until ``count`` logged requests satisfy ``match``; returns them.

        Raises:
            TimeoutError: fewer matching requests arrived within ``timeout_s``.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: sum(map(match, self._log)) >= count, timeout_s):
                raise TimeoutError(f"fewer than {count} matching requests within {timeout_s} s")
            return [r for r in self._log if match(r)]

    # -- internals: state --------------------------------------------------------------------------

    @staticmethod
    def _make_file(path: str, content: bytes, lfs_threshold: int) -> _File:
        parts = path.split("/")
        if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid path in repo: {path!r}")
        blob = _Blob(
            content=bytes(content),
            sha256=hashlib.sha256(content).hexdigest(),
            git_oid=_git_oid(content),
            md5=hashlib.md5(content).hexdigest(),
        )
        if len(content) < lfs_threshold:
            return _File(path, blob, None)
        pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n" % (
            blob.sha256.encode(),
            len(content),
        )
        return _File(path, blob, pointer)

    def _blob_for(self, key: str) -> _Blob:
        with self._lock:
            if key in self._blobs:
                return self._blobs[key]
            found = {
                f.blob.sha256: f.blob
                for repo in self._repos.values()
                for tree in repo.commits.values()
                for f in tree.values()
                if f.path == key
            }
        if not found:
            raise KeyError(f"no blob with sha256 or path {key!r}")
        if len(found) > 1:
            raise ValueError(f"path {key!r} names {len(found)} different blobs; pass the sha256")
        return next(iter(found.values()))

    def _bytes_sent_locked(self, sha: str, site: Site | None) -> int:
        sites: tuple[Site, ...] = ("hub", "cdn") if site is None else (site,)
        return sum(self._sent.get((s, sha), 0) for s in sites)

    def _add_fault(self, key: str, fault: _Fault, times: int) -> None:
        sha = self._blob_for(key).sha256
        with self._lock:
            self._faults.setdefault(sha, []).extend([fault] * times)

    def _take_fault(self, sha: str) -> _Fault | None:
        with self._lock:
            pending = self._faults.get(sha)
            return pending.pop(0) if pending else None

    def _release_stalls_nowait(self) -> None:
        if self._released is not None:
            self._released.set()
        self._released = asyncio.Event()

    def _cdn_url(self, blob: _Blob, filename: str) -> str:
        disposition = f"attachment; filename*=UTF-8''{quote(filename)}; filename=\"{filename}\";"
        query = urlencode(
            {
                "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                "X-Amz-Credential": "FAKEKEY/20240101/us-east-1/s3/aws4_request",
                "X-Amz-Date": "20240101T000000Z",
                "X-Amz-Expires": "3600",
                "X-Amz-Signature": self._sign(blob.sha256),
                "X-Amz-SignedHeaders": "host",
                "response-content-disposition": disposition,
                "x-id": "GetObject",
            }
        )
        sha = blob.sha256
        return f"{self.cdn_base}/repos/{sha[:2]}/{sha[2:4]}/{sha}?{query}"

    def _sign(self, sha: str) -> str:
        return hmac.new(self._secret, sha.encode(), hashlib.sha256).hexdigest()

    # -- internals: serving ------------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        asyncio.run(self._serve(ready))

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._released = asyncio.Event()
        runners: list[web.AppRunner] = []
        try:
            hub_port = await self._start_site(runners, "hub", _HUB_HOST)
            # Without 127.0.0.2 (macOS), another port on 127.0.0.1 still makes a different origin.
            try:
                cdn_host, cdn_port = _CDN_HOST, await self._start_site(runners, "cdn", _CDN_HOST)
            except OSError:
                cdn_host, cdn_port = _HUB_HOST, await self._start_site(runners, "cdn", _HUB_HOST)
            self._endpoint = f"http://{_HUB_HOST}:{hub_port}"
            self._cdn_base = f"http://{cdn_host}:{cdn_port}"
        except Exception as exc:
            self._startup_error = exc
        ready.set()
        if self._startup_error is None:
            await self._stopping.wait()
        self._closing = True  # stalled and throttled responses cut their connections
        self._release_stalls_nowait()
        await asyncio.gather(*(runner.cleanup() for runner in runners))

    async def _start_site(self, runners: list[web.AppRunner], site: Site, host: str) -> int:
        app = web.Application(middlewares=[self._middleware(site)])
        handler = self._hub_handler if site == "hub" else self._cdn_handler
        app.router.add_route("*", "/{tail:.*}", handler)
        # A short shutdown_timeout: stop() must not wait long for a handler that ignores _closing.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((host, 0))
        except OSError:
            sock.close()
            raise
        await runner.setup()
        runners.append(runner)
        await web.SockSite(runner, sock).start()
        return int(sock.getsockname()[1])

    def _middleware(self, site: Site) -> Callable[[web.Request, Handler], Awaitable[Any]]:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            sockname = request.transport.get_extra_info("sockname") if request.transport else None
            rec = RequestRecord(
                method=request.method,
                site=site,
                local_host=sockname[0] if sockname else "",
                host=request.host,
                path=request.rel_url.raw_path,
                query=request.rel_url.raw_query_string,
                headers={k.lower(): v for k, v in request.headers.items()},
            )
            request[_RECORD] = rec
            with self._cond:
                self._log.append(rec)
                limited = site == "hub" and self._rate_limited > 0
                if limited:
                    self._rate_limited -= 1
                retry_after_s = self._retry_after_s
                self._cond.notify_all()
            if limited:
                response: web.StreamResponse = _rate_limited_response(retry_after_s)
            else:
                response = await handler(request)
            if not response.prepared:  # a plain Response: log it before aiohttp sends it
                body = getattr(response, "body", None)
                sent = len(body) if isinstance(body, bytes) and request.method != "HEAD" else 0
                self._set_status(rec, response.status, sent)
            return response

        return record

    def _set_status(self, rec: RequestRecord, status: int, body_bytes: int = 0) -> None:
        with self._cond:
            rec.status = status
            rec.body_bytes += body_bytes
            self._cond.notify_all()

    async def _hub_handler(self, request: web.Request) -> web.StreamResponse:
        segments = [unquote(s) for s in request.rel_url.raw_path.split("/")[1:]]
        if segments == ["api", "agent-harnesses"]:
            # huggingface_hub >= 2 fetches this (no token) once per process for its user-agent.
            return _json({"standardEnvVars": [], "harnesses": {}})
        if len(segments) >= 3 and segments[0] == "api" and segments[1] in _TYPE_PLURALS.values():
            if request.method not in ("GET", "HEAD"):
                return _error(405, "Method not allowed")
            repo_type = next(t for t, p in _TYPE_PLURALS.items() if p == segments[1])
            with self._lock:
                stalled, self._api_stalls = self._api_stalls > 0, max(0, self._api_stalls - 1)
            if stalled:
                released = self._released
                assert released is not None
                await released.wait()
                if self._closing:
                    _cut(request)
                    return _error(503, "the fake Hub is stopping")
            return self._api(request, repo_type, segments[2:])
        repo_type = "model"
        if segments and segments[0] in _RESOLVE_PREFIXES:
            repo_type, segments = _RESOLVE_PREFIXES[segments[0]], segments[1:]
        for i in (1, 2):
            if len(segments) > i + 2 and segments[i] == "resolve":
                if request.method not in ("GET", "HEAD"):
                    return _error(405, "Method not allowed")
                repo_id, path = "/".join(segments[:i]), "/".join(segments[i + 2 :])
                return await self._resolve(request, repo_type, repo_id, segments[i + 1], path)
        return _error(404, "Not Found")

    def _api(self, request: web.Request, repo_type: str, rest: list[str]) -> web.Response:
        n = 2 if len(rest) >= 2 and rest[1] not in _API_SUBPATHS else 1
        repo_id, tail = "/".join(rest[:n]), rest[n:]
        if not tail or (tail[0] == "revision" and len(tail) >= 2):
            revision = "/".join(tail[1:]) or "main"
            return self._info(request, repo_type, repo_id, revision)
        if tail[0] == "tree" and len(tail) >= 2:
            return self._tree(request, repo_type, repo_id, tail[1], "/".join(tail[2:]).strip("/"))
        return _error(404, "Not Found")

    def _open(
        self, request: web.Request, repo_type: str, repo_id: str, revision: str
    ) -> tuple[_Repo, str] | web.Response:
        """Check the token and find the repo and commit, or return the error the Hub would give."""
        auth = request.headers.get("Authorization")
        token = auth.removeprefix("Bearer ").strip() if auth else None
        with self._lock:
            valid_token = self._token
            repo = self._repos.get((repo_type, repo_id))
            commit = repo.resolve(revision) if repo else None
        if token is not None and token != valid_token:
            return _error(401, _INVALID_TOKEN)
        if repo is None or (repo.private and token is None):
            return _error(
                401 if token is None else 404, "Repository not found", code="RepoNotFound"
            )
        if commit is None:
            return _error(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return repo, commit

    def _info(
        self, request: web.Request, repo_type: str, repo_id: str, revision: str
    ) -> web.Response:
        opened = self._open(request, repo_type, repo_id, revision)
        if isinstance(opened, web.Response):
            return opened
        repo, commit = opened
        files = sorted(repo.commits[commit].values(), key=lambda f: f.path)
        with_blobs = request.query.get("blobs", "").lower() == "true"
        siblings: list[dict[str, Any]] = []
        for f in files:
            sibling: dict[str, Any] = {"rfilename": f.path}
            if with_blobs:
                sibling |= {"size": len(f.blob.content), "blobId": f.oid}
                if f.pointer is not None:
                    lfs = {
                        "sha256": f.blob.sha256,
                        "size": len(f.blob.content),
                        "pointerSize": len(f.pointer),
                    }
                    sibling["lfs"] = lfs
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.md5(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": commit,
            "lastModified": _DATE_ISO,
            "createdAt": _DATE_ISO,
            "private": repo.private,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(len(f.blob.content) for f in files),
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        expand = request.query.getall("expand", []) + request.query.getall("expand[]", [])
        if expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
        return _json(info)

    def _tree(
        self, request: web.Request, repo_type: str, repo_id: str, revision: str, path: str
    ) -> web.Response:
        opened = self._open(request, repo_type, repo_id, revision)
        if isinstance(opened, web.Response):
            return opened
        repo, commit = opened
        files = repo.commits[commit]
        recursive = request.query.get("recursive", "").lower() == "true"
        entries = _tree_entries(files, path, recursive)
        with self._lock:
            raw = list(repo.raw_entries.get(commit, ())) if not path else []
        if raw:
            entries = [*(entries or []), *raw]
        if entries is None:
            return _error(404, f"{path} does not exist on {revision}", code="EntryNotFound")
        if request.query.get("expand", "").lower() == "true":
            last_commit = {"id": commit, "title": "Fake commit", "date": _DATE_ISO}
            entries = [e | {"lastCommit": last_commit} for e in entries]
        try:
            offset = int(base64.urlsafe_b64decode(request.query.get("cursor", "") + "==") or b"0")
        except ValueError:
            return _error(400, "Invalid cursor")
        response = _json(entries[offset : offset + self.page_size])
        if offset + self.page_size < len(entries):
            cursor = (
                base64.urlsafe_b64encode(str(offset + self.page_size).encode()).decode().rstrip("=")
            )
            query = {k: v for k, v in request.query.items() if k != "cursor"} | {"cursor": cursor}
            next_url = f"{request.url.origin()}{request.rel_url.raw_path}?{urlencode(query)}"
            response.headers["Link"] = f'<{next_url}>; rel="next"'
        return response

    async def _resolve(
        self, request: web.Request, repo_type: str, repo_id: str, revision: str, path: str
    ) -> web.StreamResponse:
        opened = self._open(request, repo_type, repo_id, revision)
        if isinstance(opened, web.Response):
            return opened
        repo, commit = opened
        if repo.gated and "Authorization" not in request.headers:
            message = (
                f"Access to {repo_type} {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in."
            )
            return _error(401, message, code="GatedRepo")
        file = repo.commits[commit].get(path)
        headers = {
            "X-Repo-Commit": commit,
            "Accept-Ranges": "bytes",
            "X-Request-Id": str(uuid.uuid4()),
        }
        if file is None:
            return _error(404, "Entry not found", code="EntryNotFound", headers=headers)
        filename = path.rsplit("/", 1)[-1]
        if file.pointer is not None:
            location = self._cdn_url(file.blob, filename)
            headers |= {
                "Location": location,
                "ETag": f'"{file.oid}"',
                "X-Linked-Etag": f'"{file.blob.sha256}"',
                "X-Linked-Size": str(len(file.blob.content)),
            }
            return web.Response(
                status=302, text=f"Found. Redirecting to {location}", headers=headers
            )
        headers["Content-Disposition"] = (
            f"inline; filename*=UTF-8''{quote(filename)}; filename=\"{filename}\";"
        )
        return await self._serve_blob(request, "hub", file.blob, f'"{file.blob.git_oid}"', headers)

    async def _cdn_handler(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return _s3_error(405, "MethodNotAllowed")
        sha = request.rel_url.raw_path.rsplit("/", 1)[-1]
        with self._lock:
            blob = self._blobs.get(sha)
        if blob is None:
            return _s3_error(404, "NoSuchKey")
        signature = request.query.get("X-Amz-Signature", "")
        if not hmac.compare_digest(signature, self._sign(sha)):
            return _s3_error(403, "AccessDenied")
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        disposition = parse_qs(request.rel_url.raw_query_string).get("response-content-disposition")
        if disposition:
            headers["Content-Disposition"] = disposition[0]
        return await self._serve_blob(request, "cdn", blob, f'"{blob.md5}"', headers)

    async def _serve_blob(
        self, request: web.Request, site: Site, blob: _Blob, etag: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        size = len(blob.content)
        headers = headers | {"ETag": etag, "Last-Modified": _LAST_MODIFIED}
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        span = _requested_range(request.headers, size, etag)
        if span == "unsatisfiable":
            headers["Content-Range"] = f"bytes */{size}"
            return web.Response(status=416, headers=headers)
        start, end = span if span is not None else (0, size - 1)
        status = 206 if span is not None else 200
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end - start + 1
        self._set_status(request[_RECORD], status)
        await response.prepare(request)
        if request.method == "GET":
            await self._send_body(request, response, site, blob, start, end + 1)
        return response

    async def _send_body(
        self,
        request: web.Request,
        response: web.StreamResponse,
        site: Site,
        blob: _Blob,
        start: int,
        stop: int,
    ) -> None:
        fault = self._take_fault(blob.sha256)
        with self._lock:
            speed = self._speed_bytes_per_s
            total = self._total_bytes_per_s
            content = self._lies.get(blob.sha256, blob.content)
        chunk_bytes = _CHUNK_BYTES if speed is None else max(1, min(_CHUNK_BYTES, speed // 20))
        if total is not None:
            chunk_bytes = max(1, min(chunk_bytes, total // 50))
        body = memoryview(content)[start:stop]
        pause_at = len(body) if fault is None else min(len(body), fault.after_bytes)
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = 0
        counter = (site, blob.sha256)
        while sent < len(body):
            if sent == pause_at and fault is not None:
                if fault.mode == "drop":
                    return _cut(request)
                released = self._released
                assert released is not None
                await released.wait()
                pause_at = len(body)
            if speed is not None:  # pacing a throttled response, not synchronisation
                await asyncio.sleep(max(0.0, started + sent / speed - loop.time()))
            if total is not None:  # the shared uplink: each piece books its time on it
                now = loop.time()
                self._total_next = max(now, self._total_next) + chunk_bytes / total
                await asyncio.sleep(self._total_next - now - chunk_bytes / total)
            if self._closing:
                return _cut(request)
            piece = body[sent : min(pause_at, sent + chunk_bytes)]
            # Count before writing, so a client that has the bytes also sees them counted.
            with self._cond:
                request[_RECORD].body_bytes += len(piece)
                self._sent[counter] = self._sent.get(counter, 0) + len(piece)
                self._cond.notify_all()
            await response.write(piece)
            sent += len(piece)
        return None


def fakehub_fixture(*, page_size: int = 1000) -> Iterator[FakeHub]:
    """Yield a started FakeHub, then stop it: ``yield from fakehub_fixture()`` in a fixture."""
    with FakeHub(page_size=page_size) as hub:
        yield hub


def _cut(request: web.Request) -> None:
    """Close the connection: what was written is flushed, then FIN: the client sees a short body."""
    if request.transport is not None:
        request.transport.close()


def _check_repo_type(repo_type: str) -> None:
    if repo_type not in _TYPE_PLURALS:
        raise ValueError(f"repo_type must be one of {sorted(_TYPE_PLURALS)}, got {repo_type!r}")


def _git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _tree_entries(
    files: Mapping[str, _File], path: str, recursive: bool
) -> list[dict[str, Any]] | None:
    """The tree listing under ``path``: None if nothing is there, directories as entries too."""
    prefix = f"{path}/" if path else ""
    below = {p: f for p, f in files.items() if p.startswith(prefix)}
    if not below:
        return None
    dirs: set[str] = set()
    for p in below:
        parts = p[len(prefix) :].split("/")[:-1]
        dirs.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
    entries: list[dict[str, Any]] = []
    for d in dirs:
        if recursive or "/" not in d[len(prefix) :]:
            oids = ",".join(f.oid for p, f in sorted(below.items()) if p.startswith(d + "/"))
            tree_oid = hashlib.sha1(f"tree {d}:{oids}".encode()).hexdigest()
            entries.append({"type": "directory", "oid": tree_oid, "size": 0, "path": d})
    for p, f in below.items():
        if recursive or "/" not in p[len(prefix) :]:
            entry: dict[str, Any] = {
                "type": "file",
                "oid": f.oid,
                "size": len(f.blob.content),
                "path": p,
            }
            if f.pointer is not None:
                entry["lfs"] = {
                    "oid": f.blob.sha256,
                    "size": len(f.blob.content),
                    "pointerSize": len(f.pointer),
                }
            entries.append(entry)
    return sorted(entries, key=lambda e: e["path"])


def _requested_range(
    headers: Mapping[str, str], size: int, etag: str
) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """The byte range to serve, "unsatisfiable" (416), or None: the whole body (RFC 9110 14.2)."""
    value = headers.get("Range")
    if value is None:
        return None
    if_range = headers.get("If-Range")
    if if_range is not None and if_range.strip() not in (etag, _LAST_MODIFIED):
        # The validator does not match (weak ones never do): send the whole, current body.
        return None
    match = _RANGE_RE.fullmatch(value.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None  # malformed or several ranges: ignore the header
    first, last = match.groups()
    if first == "":
        suffix = int(last)
        return (max(0, size - suffix), size - 1) if suffix > 0 and size > 0 else "unsatisfiable"
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignore the header
    if start >= size:
        return "unsatisfiable"
    return start, min(int(last), size - 1) if last else size - 1


def _json(
    payload: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        content_type="application/json",
        headers=headers,
    )


def _error(
    status: int, message: str, *, code: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    all_headers = dict(headers or {}) | {"X-Error-Message": message}
    if code is not None:
        all_headers["X-Error-Code"] = code
    return _json({"error": message}, status, all_headers)


def _rate_limited_response(retry_after_s: int) -> web.Response:
    headers = {
        "Retry-After": str(retry_after_s),
        "RateLimit": f'"api";r=0;t={retry_after_s}',
        "RateLimit-Policy": '"fixed window";"api";q=500;w=300',
    }
    return _error(429, "Too Many Requests", headers=headers)


def _s3_error(status: int, code: str) -> web.Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code></Error>'
    return web.Response(status=status, text=body, content_type="application/xml")
