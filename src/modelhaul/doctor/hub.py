"""Hub checks: is the token accepted, and does the source resolve (and how much it still needs)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from ..config import RetryPolicy, Timeouts
from ..errors import HTTPStatusError, InvalidInput, ModelhaulError, human_bytes, plural
from ..guidance import TOKENS_PAGE, explain
from ..http.errors import map_error
from ..http.probe import ProbeAnswer, ProbeFailure, ProbeSession
from ..policy.urls import check_url
from ..sources.hf import HubRef, HubSource, parse_hf_uri
from ..store.repo import RepoStore
from .checks import Check, DoctorConfig

PROBE_REPO = "openai-community/gpt2"  # a public model: a token check where whoami is missing

Source = HubRef | str  # a Hub reference or an http(s) URL


def parse_source(text: str) -> Source:
    """``hf://ORG/NAME[@REV]``, ``ORG/NAME`` or an http(s) URL; InvalidInput otherwise."""
    if text.startswith(("http://", "https://")):
        return check_url(text)
    if text.startswith("hf://") or "://" not in text:
        return parse_hf_uri(text)
    raise InvalidInput(
        f"cannot check {text!r}", hint="Give hf://ORG/NAME[@REVISION], ORG/NAME or an https:// URL."
    )


async def check_token(
    config: DoctorConfig, probe: ProbeSession, *, probe_repo: str = PROBE_REPO
) -> Check:
    """Is there a token, and does the endpoint accept it (whoami-v2, else an API call)?"""
    if not config.token:
        return Check(
            "token",
            None,
            "no token (HF_TOKEN unset, no token file): public models only",
            f"For private or gated models, create a 'read' token at {TOKENS_PAGE} and set "
            "HF_TOKEN.",
        )
    base = config.endpoint.rstrip("/")
    headers = {"Authorization": f"Bearer {config.token}"}
    origin = f"from {config.token_origin}"
    rejected_fix = f"Create a new token at {TOKENS_PAGE} and set HF_TOKEN to it."
    try:
        answer = await _get(probe, f"{base}/api/whoami-v2", headers)
        how = "whoami"
        if isinstance(answer, ProbeAnswer) and answer.status == 404:
            # Mirrors and proxies of the Hub often lack whoami.
            how = "an API call"
            answer = await _get(probe, f"{base}/api/models/{probe_repo}", headers)
            if isinstance(answer, ProbeAnswer) and _repo_not_found(answer):
                answer = ProbeAnswer(200, answer.headers)  # authenticated, no such visible repo
    except ValueError as exc:  # a token aiohttp refuses to put in a header
        answer = ProbeFailure(map_error(exc, base), "http")
    if isinstance(answer, ProbeFailure):
        return Check("token", None, f"present ({origin}); could not ask: {answer.error.message}")
    status, resp_headers, body = answer.status, answer.headers, answer.body
    if status == 200:
        user = _whoami_name(body)
        named = f" as {user}" if user else ""
        return Check("token", True, f"accepted{named} ({origin}, checked by {how})")
    if status == 401:
        why = resp_headers.get("X-Error-Message") or "invalid or expired"
        return Check("token", False, f"rejected ({origin}): HTTP 401, {why}", rejected_fix)
    return Check("token", None, f"present ({origin}); the endpoint answered HTTP {status}")


async def _get(
    probe: ProbeSession, url: str, headers: Mapping[str, str]
) -> ProbeAnswer | ProbeFailure:
    # No redirects: the token must not follow one to another host.
    return await probe.fetch(
        "GET", url, headers=headers, follow_redirects=False, body_bytes=64 * 1024
    )


def _repo_not_found(answer: ProbeAnswer) -> bool:
    return answer.status == 404 and answer.headers.get("X-Error-Code") == "RepoNotFound"


async def check_source(
    config: DoctorConfig, source: Source, probe: ProbeSession
) -> tuple[Check, int | None]:
    """Does the source resolve? Also returns the bytes it would still need in the cache."""
    if isinstance(source, HubRef):
        return await _check_hub_source(config, source)
    return await _check_url_source(config, source, probe), None


async def _check_hub_source(config: DoctorConfig, ref: HubRef) -> tuple[Check, int | None]:
    hub = HubSource(
        endpoint=config.endpoint,
        token=config.token,
        retry=RetryPolicy(retries=0),
        timeouts=Timeouts(connect_s=config.timeout_s, stall_s=config.timeout_s),
    )
    try:
        spec = await hub.resolve(ref)
    except ModelhaulError as exc:
        return _source_fail(str(ref), exc, config, ref.repo_id), None
    total = sum(f.size for f in spec.files)
    store = RepoStore(config.cache_root, spec.repo_id, spec.repo_type)
    need = await asyncio.to_thread(_missing_bytes, store, spec.files)
    detail = (
        f"{ref} resolves to commit {spec.commit[:12]}: {plural(len(spec.files), 'file')}, "
        f"{human_bytes(total)} ({human_bytes(need)} not in the cache yet)"
    )
    return Check("source", True, detail), need


def _missing_bytes(store: RepoStore, files: Any) -> int:
    need = 0
    for f in files:
        try:
            have = store.blob_path(f.blob_id).stat().st_size
        except (OSError, InvalidInput):
            have = 0
        need += 0 if have == f.size else f.size
    return need


async def _check_url_source(config: DoctorConfig, url: str, probe: ProbeSession) -> Check:
    answer = await probe.fetch("GET", url, headers={"Range": "bytes=0-0"})
    if isinstance(answer, ProbeFailure):
        return _source_fail(url, answer.error, config, None)
    status, headers = answer.status, answer.headers
    if status >= 400:
        err = HTTPStatusError(status, url)
        return Check("source", False, f"{url}: {err.category}: HTTP {status}", _fix(err, config))
    size = headers.get("Content-Range", "").rpartition("/")[2]
    size_text = f", {human_bytes(int(size))}" if size.isdigit() else ""
    ranges = "ranges supported" if status == 206 else "no ranges: a download cannot resume"
    return Check("source", True, f"{url}: HTTP {status}{size_text}, {ranges}")


def _source_fail(what: str, err: ModelhaulError, config: DoctorConfig, model: str | None) -> Check:
    return Check(
        "source", False, f"{what}: {err.category}: {err.message}", _fix(err, config, model)
    )


def _fix(err: ModelhaulError, config: DoctorConfig, model: str | None = None) -> str:
    """The error's hint in the words of the doctor's reader, else the first step of guidance."""
    if err.hint:
        return err.hint_in(config.words)
    guidance = explain(err, endpoint=config.endpoint, model=model, words=config.words)
    return guidance.steps[0] if guidance.steps else ""


def _whoami_name(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


__all__ = ["PROBE_REPO", "Source", "check_source", "check_token", "parse_source"]
