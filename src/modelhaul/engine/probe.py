"""The first request of a download: learn the size and validator, keep the response's bytes.

A ranged GET (``If-Range`` carries the validator when resuming) decides the path: a 206 plans
segments, a 200 means one connection from byte 0, a mismatch raises RemoteChanged or
RangeNotHonoured for the clean restart in downloader.py.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from ..config import DownloadConfig
from ..errors import (
    HTTPStatusError,
    IntegrityError,
    ModelhaulError,
    RangeNotHonoured,
    RemoteChanged,
    RetriesExhausted,
    TransferError,
)
from ..http.response import Response
from ..http.session import Transport, sleep_s
from ..policy.headers import (
    filename_from_disposition,
    filename_from_url,
    parse_content_range,
    sanitize_filename,
)
from ..policy.ranges import RangeSet
from ..policy.segments import Segment
from .plan import journaled, may_split, plan_segments
from .transfer import Transfer, retry_of, route, settle

_PROBE_BYTES = 8 * 1024 * 1024

# What the probe hands the workers: the first segment and its response, the whole body of a
# 200, or nothing (the partial file already holds every byte).
Probe = tuple[Segment, Response] | Response | None


async def probe(t: Transfer, config: DownloadConfig, transport: Transport) -> Probe:
    """First request: learn size and validator, and keep the response for its bytes."""
    retry = retry_of(config.retry)
    while True:
        t.attempts += 1
        try:
            return await _probe_once(t, config, transport)
        except TransferError as exc:
            if isinstance(exc, RemoteChanged | RangeNotHonoured) or not exc.retryable:
                raise
            t.history.append(exc)
            retry = retry.increment(exc)
            if retry.is_exhausted():
                raise RetriesExhausted(exc, list(t.history)) from exc
            await sleep_s(retry.wait_s(getattr(exc, "retry_after_s", None)))


async def _probe_once(t: Transfer, config: DownloadConfig, transport: Transport) -> Probe:
    """One probe request; see the module docstring for what each answer means."""
    st = t.state
    headers = dict(t.facts.headers)
    resuming = st.size is not None and bool(st.done)
    wanted = _first_range(t, config, resuming=resuming)
    if wanted is None:
        return None
    start, stop = wanted
    url, credential_url, stop = route(t, headers, start, stop)
    # From several sources (peers) the file is known by its SHA-256, not a validator.
    validated = t.facts.sources is None
    if not t.single:
        headers["Range"] = f"bytes={start}-" + ("" if stop is None else str(stop - 1))
        validator = st.validator() if resuming and validated else None
        if validator:
            headers["If-Range"] = validator
    try:
        resp = await transport.request("GET", url, headers=headers, credential_url=credential_url)
    except TransferError as exc:
        if (again := settle(t, start, 0, exc)) is not exc:
            raise again from exc  # a peer failed: the next source, whatever the status
        if not isinstance(exc, HTTPStatusError):
            raise
        if exc.status == 416 and not resuming and not t.single:
            # An empty file cannot satisfy bytes=0-...; ask again without Range.
            t.single = True
            return await _probe_once(t, config, transport)
        if exc.status == 416 and resuming:
            raise RemoteChanged("the remote file is shorter than the partial data") from exc
        raise
    if resp.status not in (200, 206):
        # A redirect without Location, 202 Accepted, 204 No Content: whatever the body is,
        # it is not the file, and publishing it would report success.
        resp.close()
        raise HTTPStatusError(
            resp.status,
            resp.url,
            message=f"HTTP {resp.status} from {urlsplit(resp.url).netloc} is not the file",
        )
    t.resolved_url = resp.url
    if t.name_pending:
        _take_name(t, resp)
    etag = resp.headers.get("ETag")
    last_modified = resp.headers.get("Last-Modified")
    encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
    if resp.status == 206 and not encoded:
        cr = parse_content_range(resp.headers.get("Content-Range"))
        if cr is None or cr.total is None or cr.start != start:
            resp.close()
            raise RangeNotHonoured("the server sent a Content-Range that does not match")
        if resuming and (cr.total != st.size or (validated and etag_changed(st.etag, etag))):
            resp.close()
            raise RemoteChanged("the remote file changed since the partial download")
        t.size = cr.total
        st.size, st.etag, st.last_modified = cr.total, etag, last_modified
        _check_expected_size(t, resp)
        plan_segments(t, config.segments)
        assert t.sched is not None
        seg = t.sched.claim_nowait(cr.start, cr.end)
        return seg, resp
    if resp.status == 206:  # ranged and content-encoded: meaningless, start plainly
        resp.close()
        raise RangeNotHonoured("the server encoded a ranged response")
    if resuming and "If-Range" in headers:
        resp.close()
        raise RemoteChanged("the remote file changed since the partial download")
    # 200: the whole body from byte 0, in one connection.
    t.single = True
    length = resp.headers.get("Content-Length")
    size = int(length) if length and length.isdigit() and not encoded else None
    t.size = size
    st.size, st.etag, st.last_modified = size, etag, last_modified
    st.done = RangeSet()
    if t.fd >= 0:  # a probe sent before the partial file was opened has nothing to drop
        os.ftruncate(t.fd, 0)
    _check_expected_size(t, resp)
    return resp


def _first_range(
    t: Transfer, config: DownloadConfig, *, resuming: bool
) -> tuple[int, int | None] | None:
    """The range the probe asks for (start, stop or open-ended); None if nothing is missing."""
    st = t.state
    if t.single:
        return 0, None
    if resuming:
        assert st.size is not None
        holes = st.done.missing(st.size)
        if not holes:
            t.size = st.size
            return None
        start = holes[0][0]
        return start, min(holes[0][1], start + _PROBE_BYTES)
    return 0, _PROBE_BYTES if may_split(config.segments) else None


def _take_name(t: Transfer, resp: Response) -> None:
    """Name the target after the response (Content-Disposition, else the URL path)."""
    named = filename_from_disposition(resp.headers.get("Content-Disposition"))
    fallback = filename_from_url(t.facts.url) or filename_from_url(resp.url)
    t.dest = t.dest.with_name(sanitize_filename(named or fallback))
    t.name_pending = False
    try:
        t.claim(t.dest)
    except ModelhaulError:
        resp.close()
        raise


def _check_expected_size(t: Transfer, resp: Response) -> None:
    if t.facts.expected_size is not None and t.size is not None and t.size != t.facts.expected_size:
        resp.close()
        raise IntegrityError(
            f"{t.dest.name}: the server has {t.size} bytes, expected {t.facts.expected_size}",
            expected_size=t.facts.expected_size,
            actual_size=t.size,
            hint="The file on the server differs from the one published; check the source.",
        )


def arrives_whole(t: Transfer, probe: Probe) -> bool:
    """Whether the probe's response carries the whole file, and the file is too small to
    keep a journal (it would restart, not resume, after a failure anyway)."""
    if t.size is None or journaled(t.size) or probe is None:
        return False
    if isinstance(probe, Response):
        return True  # a 200 of known length
    seg, _ = probe
    return seg.pos == 0 and seg.end == t.size


def close_probe(probe: Probe) -> None:
    resp = probe[1] if isinstance(probe, tuple) else probe
    if resp is not None:
        resp.close()


def etag_changed(known: str | None, seen: str | None) -> bool:
    return bool(known and seen and known != seen)


__all__ = ["Probe", "arrives_whole", "close_probe", "etag_changed", "probe"]
