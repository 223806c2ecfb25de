"""``hf://ORG/NAME[@REVISION]``: file lists from the Hugging Face Hub API.

Metadata goes through huggingface_hub (its endpoints, pagination and error types); the bytes go
through modelhaul's engine, with the token sent to the Hub host only (the transport drops it on
the redirect to the CDN).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from ..config import RetryPolicy, Timeouts
from ..errors import (
    Category,
    HTTPStatusError,
    InvalidInput,
    ModelhaulError,
    NetworkError,
    RetriesExhausted,
    StallTimeout,
    TransferError,
    network_kind,
)
from ..policy.backoff import parse_retry_after
from ..policy.paths import safe_relpath
from ..policy.retry import Retry
from ..policy.urls import same_host
from ..policy.validate import check_repo_id, check_revision, split_model_ref
from .model import ModelFile, ModelSpec, check_paths

T = TypeVar("T")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_ENDPOINT = "https://huggingface.co"
# More entries than any real repository lists (the Hub recommends under 100k files): a listing
# that goes on past this is a server that never says "last page".
MAX_TREE_ENTRIES = 1_000_000


@dataclass(frozen=True, slots=True)
class HubRef:
    repo_id: str
    revision: str | None
    repo_type: str = "model"

    def __str__(self) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf://{prefix}{self.repo_id}{rev}"


def parse_hf_uri(text: str) -> HubRef:
    """``hf://[datasets/|spaces/]ORG/NAME[@REV]`` (also without the scheme) -> HubRef."""
    repo_type, name, rev = split_model_ref(text)
    return HubRef(check_repo_id(name), check_revision(rev) if rev else None, repo_type)


class HubSource:
    """Resolves a HubRef to a ModelSpec through the Hub API."""

    # Signature alike other constructors' (Downloader's) in shape only: its own settings.
    def __init__(
        self,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        network_retries: int | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        """A client for the Hub's metadata API.

        Args:
        endpoint: the Hub (``$HF_ENDPOINT``); default https://huggingface.co.
        token: sent to the endpoint's host only.
        retry: how often and how long to retry metadata calls (429, 5xx, network).
        network_retries: a separate, usually smaller budget for an unreachable Hub, for
            callers that have a fallback (a complete copy in the cache); None: ``retry``'s.
        timeouts: how long a connection may take, and a Hub that sends nothing may keep a
            call waiting (the downloads' ``--timeout``); default 30 s.
        """
        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self.token = token
        self._retry = retry or RetryPolicy(initial_delay_s=0.5, max_delay_s=10)
        self._network_retries = network_retries
        t = timeouts or Timeouts()
        # One number: huggingface_hub's session is httpx's or, before 1.0, requests', and both
        # take a float. It bounds the connection and each wait for the next bytes.
        self._timeout_s = max(t.connect_s, t.stall_s)
        # huggingface_hub is loaded by the Hub's users only (a manifest pull, 'get' and every
        # parse of the command line go without it), and then only its HTTP helpers: HfApi's
        # module (jobs, spaces, inference, YAML cards) costs 0.09 CPU-s more per pull.
        from huggingface_hub import utils as hf_utils

        self._hf = hf_utils
        self._headers = hf_utils.build_hf_headers(token=token or False)

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).netloc

    def auth_headers(self) -> tuple[tuple[str, str], ...]:
        return (("Authorization", f"Bearer {self.token}"),) if self.token else ()

    async def resolve(self, ref: HubRef) -> ModelSpec:
        """The commit and file list of ``ref`` (sizes, blob ids, SHA-256 of LFS files)."""
        info = await self._call(ref, lambda: self._repo_info(ref))
        commit = info.get("sha") if isinstance(info, dict) else None
        if not isinstance(commit, str) or not _HEX40.match(commit):
            raise InvalidInput(
                f"the Hub gave no commit for {ref}", hint="Check HF_ENDPOINT points at a Hub."
            )
        entries = await self._call(ref, lambda: self._list_tree(ref, commit))
        file_entries = [e for e in entries if _is_file(e)]
        files = tuple(self._file(ref, commit, e) for e in file_entries)
        check_paths(files, str(ref))
        tree = {f.path: _tree_entry(f, e) for f, e in zip(files, file_entries, strict=True)}
        revision = (
            ref.revision
            if ref.revision and ref.revision != commit
            else (None if ref.revision else "main")
        )
        return ModelSpec(
            repo_id=ref.repo_id,
            commit=commit,
            files=files,
            revision=revision,
            repo_type=ref.repo_type,
            source="hf",
            tree=tree,
        )

    def _api_url(self, ref: HubRef) -> str:
        return f"{self.endpoint}/api/{ref.repo_type}s/{ref.repo_id}"

    def _repo_info(self, ref: HubRef) -> Any:
        """The Hub's JSON about ``ref`` (the request ``HfApi.repo_info`` makes)."""
        url = self._api_url(ref)
        if ref.revision is not None:
            url = f"{url}/revision/{quote(ref.revision, safe='')}"
        r = self._hf.get_session().get(url, headers=self._headers, timeout=self._timeout_s)
        self._hf.hf_raise_for_status(r)
        return r.json()

    def _list_tree(self, ref: HubRef, commit: str) -> list[dict[str, Any]]:
        """Every entry of the recursive listing (as ``HfApi.list_repo_tree`` pages it),
        refusing one that never ends.

        The Hub pages with ``Link: rel="next"``; a server whose next page is a page it already
        sent (or that keeps inventing new names) would keep this thread and its memory busy
        forever.
        """
        entries: list[dict[str, Any]] = []
        seen: set[object] = set()
        url: str | None = f"{self._api_url(ref)}/tree/{quote(commit, safe='')}"
        params: dict[str, Any] | None = {"recursive": True, "expand": False}
        while url is not None:
            # Its backoff for 429 and 5xx, per page; a network failure or timeout goes to
            # _call, whose budget (and --timeout) the user set, not five more tries of its own.
            r = self._hf.http_backoff(
                "GET",
                url,
                params=params,
                headers=self._headers,
                timeout=self._timeout_s,
                retry_on_exceptions=(),
            )
            self._hf.hf_raise_for_status(r)
            page = r.json()
            if not isinstance(page, list) or not all(isinstance(e, dict) for e in page):
                raise ValueError("a tree page is not a list of entries")
            for entry in page:
                path = entry.get("path")
                if path in seen:
                    raise InvalidInput(
                        f"{ref}: the Hub listed {path!r} twice; the listing may not end",
                        hint="Check that HF_ENDPOINT points at a Hugging Face Hub, then try again.",
                    )
                seen.add(path)
                entries.append(entry)
                if len(entries) > MAX_TREE_ENTRIES:
                    raise InvalidInput(
                        f"{ref}: the Hub listed more than {MAX_TREE_ENTRIES} files and folders",
                        hint="Check that HF_ENDPOINT points at a Hugging Face Hub, then try again.",
                    )
            url, params = r.links.get("next", {}).get("url"), None  # the link has the query
        return entries

    def _file(self, ref: HubRef, commit: str, entry: dict[str, Any]) -> ModelFile:
        where = f"{ref}: file entry"
        path = safe_relpath(entry.get("path"), where=where)
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"{where} {path!r} has a bad size {size!r}")
        lfs = entry.get("lfs")
        if lfs is not None:
            if not isinstance(lfs, dict):
                raise InvalidInput(f"{where} {path!r} has a bad LFS entry")
            sha256 = lfs.get("oid")
            if not isinstance(sha256, str) or not _HEX64.match(sha256):
                raise InvalidInput(f"{where} {path!r} has a bad LFS sha256")
            blob_id = sha256
            lfs_size = lfs.get("size", size)
            if lfs_size != size:
                raise InvalidInput(f"{where} {path!r}: LFS size {lfs_size} differs from {size}")
        else:
            sha256 = None
            blob_id = entry.get("oid")
            if not isinstance(blob_id, str) or not _HEX40.match(blob_id):
                raise InvalidInput(f"{where} {path!r} has a bad blob id {blob_id!r}")
        url = resolve_url(self.endpoint, ref.repo_id, path, commit, ref.repo_type)
        return ModelFile(
            path=path,
            size=size,
            blob_id=blob_id,
            urls=(url,),
            sha256=sha256,
            headers=self.auth_headers(),
        )

    async def _call(self, ref: HubRef, fn: Callable[[], T]) -> T:
        """Run a blocking huggingface_hub call in a thread, retrying what is worth retrying."""
        retry = Retry(
            total=self._retry.retries,
            initial_s=self._retry.initial_delay_s,
            max_s=self._retry.max_delay_s,
        )
        while True:
            try:
                return await asyncio.to_thread(fn)
            except Exception as exc:  # huggingface_hub raises a wide family; mapped here
                err = map_hub_error(exc, ref, self.endpoint)
                if not err.retryable:
                    raise err from exc
                budget = self._retry.retries
                if self._network_retries is not None and err.category in (
                    Category.NETWORK,
                    Category.TIMEOUT,
                ):
                    budget = self._network_retries
                # The budget depends on the kind of failure: network ones may have their own.
                retry = replace(retry, total=budget).increment(err)
                if retry.is_exhausted():
                    raise RetriesExhausted(err, list(retry.history)) from exc
                await asyncio.sleep(retry.wait_s(getattr(err, "retry_after_s", None)))


def _tree_entry(f: ModelFile, entry: dict[str, Any]) -> dict[str, object]:
    """One file of huggingface_hub's ``trees/<commit>.json``: the git blob id (of the pointer,
    for LFS files), the LFS SHA-256 and size, the Xet hash when the Hub gave a valid one."""
    blob_id = entry.get("oid")
    out: dict[str, object] = {
        "size": f.size,
        "blob_id": blob_id if isinstance(blob_id, str) else f.blob_id,
    }
    if f.sha256 is not None:
        out["lfs_sha256"] = f.sha256
        out["lfs_size"] = f.size
    xet_hash = entry.get("xetHash")
    if isinstance(xet_hash, str) and _HEX64.match(xet_hash):
        out["xet_hash"] = xet_hash
    return out


def _is_file(entry: dict[str, Any]) -> bool:
    return entry.get("type") == "file"


def resolve_url(
    endpoint: str, repo_id: str, path: str, revision: str, repo_type: str = "model"
) -> str:
    """``{endpoint}/[datasets/]{repo}/resolve/{revision}/{path}``, quoted as huggingface_hub
    quotes it; built here so that only ``endpoint`` decides the host (huggingface_hub's
    ``hf_hub_url`` starts from the endpoint it read at import time)."""
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return (
        f"{endpoint.rstrip('/')}/{prefix}{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"
    )


def repo_page(ref: HubRef, endpoint: str) -> str:
    return f"{endpoint}/{'' if ref.repo_type == 'model' else ref.repo_type + 's/'}{ref.repo_id}"


def hub_error(
    code: str, ref: HubRef, endpoint: str, *, status: int, path: str | None = None
) -> HTTPStatusError:
    """The error for one of the Hub's ``X-Error-Code`` values, with the user's next step."""
    page = repo_page(ref, endpoint)
    if code == "GatedRepo":
        return HTTPStatusError(
            status if status in (401, 403) else 403,
            page,
            message=f"{ref.repo_id} is a gated repository: access must be granted first",
            hint=f"Accept the licence on {page} while logged in, then set HF_TOKEN to a token of "
            "that account (https://huggingface.co/settings/tokens).",
            error_code=code,
        )
    if code == "RevisionNotFound":
        return HTTPStatusError(
            404,
            page,
            message=f"revision {ref.revision!r} not found in {ref.repo_id}",
            hint=f"Check the branch, tag or commit; see {page}/tree/main for what exists.",
            error_code=code,
        )
    if code == "EntryNotFound":
        what = f"file {path!r}" if path else "a file"
        return HTTPStatusError(
            404,
            page,
            message=f"{what} not found in {ref}",
            hint=f"Check the file name (see {page}/tree/{ref.revision or 'main'}); if the "
            "repository changed since it was listed, run the same command again.",
            error_code=code,
        )
    return HTTPStatusError(
        404,
        page,
        message=f"repository {ref.repo_id} not found",
        hint="Check the name (ORG/NAME as on the Hub). For a private repository, log in: "
        "set HF_TOKEN to a token with read access.",
        error_code="RepoNotFound",
    )


def map_hub_error(exc: BaseException, ref: HubRef, endpoint: str) -> ModelhaulError:
    """huggingface_hub's errors as modelhaul errors, with the hint a user needs."""
    from huggingface_hub import errors as hf_errors

    page = repo_page(ref, endpoint)
    if isinstance(exc, ModelhaulError):
        return exc
    if isinstance(exc, hf_errors.GatedRepoError):
        return hub_error("GatedRepo", ref, endpoint, status=_status_of(exc))
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return hub_error("RevisionNotFound", ref, endpoint, status=404)
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return hub_error("RepoNotFound", ref, endpoint, status=404)
    if isinstance(exc, hf_errors.EntryNotFoundError):
        return hub_error("EntryNotFound", ref, endpoint, status=404)
    if isinstance(exc, hf_errors.HfHubHTTPError):
        resp = getattr(exc, "response", None)
        status = _status_of(exc)
        headers = getattr(resp, "headers", {}) or {}
        retry_after = parse_retry_after(headers.get("Retry-After")) if headers else None
        if status == 401:
            return HTTPStatusError(
                401,
                page,
                message=f"the Hub refused the token for {ref.repo_id}",
                hint="The token in HF_TOKEN (or the huggingface_hub token file) is invalid or "
                "expired; create a new one at https://huggingface.co/settings/tokens.",
            )
        if status == 429:
            return rate_limited(ref, endpoint, retry_after)
        if status:
            return HTTPStatusError(
                status,
                page,
                retry_after_s=retry_after,
                message=f"HTTP {status} from the Hub: {exc}",
            )
    if _is_timeout(exc):
        # Its remedy (a longer stall timeout) is worded by each face.
        return StallTimeout(f"the Hub at {endpoint} sent nothing for too long", url=endpoint)
    if isinstance(exc, OSError | TransferError) or _is_transport_error(exc):
        return NetworkError(
            f"cannot reach the Hub at {endpoint}: {exc}",
            hint="Check the network, HF_ENDPOINT and proxy settings (HTTPS_PROXY); with the model "
            "already in the cache, HF_HUB_OFFLINE=1 uses it without the network.",
            url=endpoint,  # so that guidance knows it was the Hub, and which host
            kind=network_kind(exc),
        )
    if isinstance(exc, ValueError | KeyError | TypeError | AttributeError):
        # huggingface_hub turns the Hub's JSON into its dataclasses: an answer that is not
        # JSON, or of another shape (a list for an object, a field missing), fails in there.
        return InvalidInput(
            f"the Hub at {endpoint} sent an answer that cannot be read "
            f"({type(exc).__name__}: {str(exc)[:200]})",
            hint="Check that HF_ENDPOINT points at a Hugging Face Hub or a mirror of its API; "
            "if it does, try again later.",
        )
    return ModelhaulError(f"unexpected error from the Hub: {type(exc).__name__}: {exc}")


def rate_limited(ref: HubRef, endpoint: str, retry_after_s: float | None) -> HTTPStatusError:
    wait = f"wait {retry_after_s:.0f} s" if retry_after_s else "wait a little"
    return HTTPStatusError(
        429,
        repo_page(ref, endpoint),
        retry_after_s=retry_after_s,
        message=f"the Hub is rate limiting requests for {ref.repo_id}",
        hint=f"{wait.capitalize()}, then run the same command again; requests with a token "
        "(HF_TOKEN) get higher limits than anonymous ones.",
    )


def explain_download_error(exc: ModelhaulError, ref: HubRef, endpoint: str) -> ModelhaulError:
    """A download from the Hub that failed with one of its error codes (a gated file, a file
    gone since the listing) or a rate limit gets the same message and hint as the metadata
    calls give; any other error is returned as it is."""
    inner = exc.last if isinstance(exc, RetriesExhausted) else exc
    if not isinstance(inner, HTTPStatusError) or not same_host(inner.url, endpoint):
        return exc
    if inner.status == 429:
        err = rate_limited(ref, endpoint, inner.retry_after_s)
    elif inner.error_code in _HUB_CODES:
        path = _path_in_resolve_url(inner.url)
        err = hub_error(inner.error_code, ref, endpoint, status=inner.status, path=path)
    else:
        return exc
    err.__cause__ = exc
    return err


_HUB_CODES = ("GatedRepo", "RepoNotFound", "RevisionNotFound", "EntryNotFound")


def _path_in_resolve_url(url: str) -> str | None:
    _, sep, rest = urlsplit(url).path.partition("/resolve/")
    _rev, slash, path = rest.partition("/")
    return unquote(path) if sep and slash and path else None


def _status_of(exc: BaseException) -> int:
    return getattr(getattr(exc, "response", None), "status_code", 0) or 0


def _is_timeout(exc: BaseException) -> bool:
    # httpx's TimeoutException family, requests' Timeout family, and the builtin TimeoutError.
    return any("Timeout" in c.__name__ for c in type(exc).__mro__)


def _is_transport_error(exc: BaseException) -> bool:
    # huggingface_hub 2.x rides on httpx2; its transport errors share a base class name.
    return any(c.__name__ in ("TransportError", "HTTPError") for c in type(exc).__mro__)


def default_token() -> str | None:
    """HF_TOKEN, else the token file huggingface_hub uses (HF_TOKEN_PATH or HF_HOME/token)."""
    import huggingface_hub

    try:
        return huggingface_hub.get_token()
    except Exception:  # a broken token file is the same as none here
        return None
