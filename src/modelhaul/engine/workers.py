"""The connections of one download: workers that take segments, and the autoscaler.

Each file's workers live in one task group, so a failure or a cancel tears down exactly its
children. A worker retries what failed; only attempts that gained nothing spend its budget
(policy.retry). In automatic mode the connection count doubles while the aggregate speed still
grows, and a doubling that bought nothing is undone (policy.segments.next_connection_count).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from ..config import DownloadConfig, MiB
from ..errors import (
    HTTPStatusError,
    ModelhaulError,
    RangeNotHonoured,
    RemoteChanged,
    RetriesExhausted,
    TransferError,
    TruncatedBody,
)
from ..http.response import Response
from ..http.session import Transport, sleep_s
from ..policy.headers import parse_content_range
from ..policy.segments import Segment, next_connection_count
from .hashlag import HashLagGuard
from .plan import save_journal
from .probe import Probe, etag_changed
from .progress import emit_progress
from .stages import stage
from .streams import Streams
from .transfer import UNKNOWN_END, Transfer, retry_of, route, settle

_TICK_S = 0.1
# The chunks in flight at the end complete together (idle connections steal their tails), so
# the hashed prefix jumps by about half of them at the last byte: 16 connections x 64 MiB
# left ~0.5 GiB to hash after the last byte of 4 GiB. When that much is in flight, the last
# chunks get smaller, down to this, so the end leaves a few MiB per connection.
_END_CHUNK_BYTES = 4 * MiB
_END_IN_FLIGHT_BYTES = 256 * MiB


class Workers:
    """Runs the segments of downloads over one transport, as one configuration says."""

    def __init__(self, config: DownloadConfig, transport: Transport) -> None:
        self.config = config
        self.transport = transport
        self.streams = Streams(config)

    async def run(self, t: Transfer, probe: Probe) -> None:
        """Fetch every missing byte, starting with the probe's response; raise what failed."""
        if probe is None:
            return
        t.alive = 0
        t.all_exited = asyncio.Event()
        if t.memory is not None and t.target == 1:
            await self._run_alone(t, probe)
            return
        guard = HashLagGuard(t, self.config.segments)
        try:
            async with asyncio.TaskGroup() as tg:
                if isinstance(probe, Response):
                    seg = Segment(0, t.size if t.size is not None else UNKNOWN_END, 0)
                    t.target = 1
                    self._spawn(tg, t, (seg, probe))
                else:
                    self._spawn(tg, t, probe)
                    for _ in range(t.target - 1):
                        self._spawn(tg, t, None)
                ticker = tg.create_task(self._tick(t, tg, guard))
                await t.all_exited.wait()
                ticker.cancel()
        except ExceptionGroup as eg:
            primary = _primary_error(eg)
            # Hide the group, but keep the error's own cause (`from None` would erase it).
            raise primary from primary.__cause__
        finally:
            # The receives are over: what is left to hash has every CPU (or shares them).
            guard.release()
        if t.size is not None and t.state.done.total() < t.size:
            last = t.history[-1] if t.history else TruncatedBody("the download stopped early")
            raise RetriesExhausted(last, list(t.history))

    async def _run_alone(self, t: Transfer, probe: Probe) -> None:
        """One connection for a body held in memory (no more are ever added, nothing is
        journaled): its worker runs in this task, and the tick is a timer for progress."""
        assert probe is not None
        if isinstance(probe, Response):
            first = (Segment(0, t.size if t.size is not None else UNKNOWN_END, 0), probe)
        else:
            first = probe
        loop = asyncio.get_running_loop()

        def tick() -> None:
            nonlocal timer
            emit_progress(t)
            timer = loop.call_later(_TICK_S, tick)

        timer = loop.call_later(_TICK_S, tick)
        t.alive = 1
        try:
            await self._worker(t, first)
        finally:
            timer.cancel()
        if t.size is not None and t.state.done.total() < t.size:
            last = t.history[-1] if t.history else TruncatedBody("the download stopped early")
            raise RetriesExhausted(last, list(t.history))

    def _spawn(
        self, tg: asyncio.TaskGroup, t: Transfer, first: tuple[Segment, Response] | None
    ) -> None:
        t.alive += 1
        tg.create_task(self._worker(t, first))

    async def _worker(self, t: Transfer, first: tuple[Segment, Response] | None) -> None:
        retry = retry_of(self.config.retry)
        seg, resp = first if first else (None, None)
        try:
            while True:
                if seg is None:
                    if t.single or t.sched is None or t.alive > t.target:
                        return
                    seg = t.sched.next_nowait()
                    if seg is None:
                        wait = t.sched.steal_wait_s()
                        if wait is None:
                            return
                        # Stay for a steal that may become worth it; a release wakes us early.
                        changed = t.sched_changed
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(changed.wait(), max(wait, 0.01))
                        continue
                before = seg.pos
                try:
                    if resp is None:
                        t.attempts += 1
                        resp = await self._open_segment(t, seg)
                    await self.streams.stream(t, seg, resp)
                    settle(t, before, seg.pos - before, None)
                    stage("segment_done_before_journal")
                    resp.release()
                    resp = None
                    retry = retry.reset()
                    self._finish_segment(t, seg)
                    seg = None
                except TransferError as failed:
                    if resp is not None:
                        resp.close()
                        resp = None
                    exc = settle(t, before, seg.pos - before, failed) or failed
                    if isinstance(exc, RemoteChanged) or not exc.retryable:
                        raise  # (a peer's failure became a retryable one)
                    t.history.append(exc)
                    if t.single:
                        # No ranges: whatever arrived is useless for a retry from byte 0.
                        raise RangeNotHonoured(exc.message) from exc
                    gained = seg.pos > before
                    self._finish_segment(t, seg)
                    seg = None
                    retry = retry.increment(exc, gained=gained)
                    if (
                        isinstance(exc, HTTPStatusError)
                        and exc.status in (429, 503)
                        and self.config.segments.connections is None
                    ):
                        # Automatic mode backs off; an explicit -x is the user's to keep.
                        t.throttled = True
                        t.target = max(1, min(t.target, t.alive) // 2)
                    if retry.is_exhausted():
                        return
                    await sleep_s(retry.wait_s(getattr(exc, "retry_after_s", None)))
        finally:
            if resp is not None:
                resp.close()
            if seg is not None:
                self._finish_segment(t, seg)
            t.alive -= 1
            if t.alive <= 0:
                t.all_exited.set()

    def _finish_segment(self, t: Transfer, seg: Segment) -> None:
        if t.sched is not None:
            t.sched.release(seg)
            changed, t.sched_changed = t.sched_changed, asyncio.Event()
            changed.set()

    async def _open_segment(self, t: Transfer, seg: Segment) -> Response:
        headers = dict(t.facts.headers)
        url, credential_url, stop = route(t, headers, seg.pos, seg.end)
        headers["Range"] = f"bytes={seg.pos}-{stop - 1}"
        # From several sources (peers) the file is known by its SHA-256, not a validator.
        validator = t.state.validator() if t.facts.sources is None else None
        if validator:
            headers["If-Range"] = validator
        try:
            resp = await self.transport.request(
                "GET", url, headers=headers, credential_url=credential_url
            )
        except HTTPStatusError as exc:
            if (
                t.resolved_url
                and t.resolved_url != t.facts.url
                and exc.status in (401, 403, 404, 410)
            ):
                # A presigned redirect target may have expired: resolve again from the start.
                t.resolved_url = None
                raise TruncatedBody(f"the redirect target answered {exc.status}") from exc
            if exc.status == 416:
                raise RemoteChanged("the remote file is shorter than before") from exc
            raise
        if resp.status != 206:
            resp.close()
            raise RemoteChanged("the server answered a ranged request with the whole file")
        cr = parse_content_range(resp.headers.get("Content-Range"))
        if cr is None or cr.start != seg.pos or cr.total != t.size:
            resp.close()
            raise RemoteChanged("the server's Content-Range does not match the file")
        if t.facts.sources is None and etag_changed(t.state.etag, resp.headers.get("ETag")):
            resp.close()
            raise RemoteChanged("the remote file changed (another ETag)")
        # The server may send less than asked: the stream stops at the response's end and the
        # rest of the segment goes back to the scheduler when the segment is released.
        resp.end = cr.end
        return resp

    async def _tick(self, t: Transfer, tg: asyncio.TaskGroup, guard: HashLagGuard) -> None:
        """Every tick: progress, journal flush, the hash's CPU, and (automatic mode) the
        connection count."""
        seg_cfg = self.config.segments
        auto = seg_cfg.connections is None and not t.single and t.target > 1
        level_start = time.monotonic()
        window_start: tuple[float, int] | None = None
        # The speed and connection count of the level before the last doubling.
        prev: tuple[float, int] | None = None
        while True:
            await asyncio.sleep(_TICK_S)
            now = time.monotonic()
            emit_progress(t)
            guard.steer_nowait()
            if t.sched is not None and t.size is not None and seg_cfg.chunk_bytes is None:
                base = seg_cfg.chunk_for(t.size, t.target)
                t.sched.set_chunk_bytes(end_chunk_bytes(base, t.sched.unassigned_bytes, t.target))
            if t.journal_dirty and now - t.journal_saved_at >= seg_cfg.journal_every_s:
                save_journal(t)
            if not auto or t.throttled or t.sched is None:
                continue
            if window_start is None:
                if now - level_start >= 0.1:
                    window_start = (now, t.received)
                continue
            if now - window_start[0] < 0.25:
                continue
            speed = (t.received - window_start[1]) / (now - window_start[0])
            grow, final = next_connection_count(speed, t.target, prev, seg_cfg.max_connections)
            if final or t.sched.remaining_bytes < grow * seg_cfg.min_steal_bytes * 2:
                # Fewer connections take effect as workers finish their segments.
                t.target = min(t.target, grow)
                auto = False
                continue
            prev = (speed, t.target)
            # Smaller chunks keep the hashed prefix close behind many connections.
            assert t.size is not None
            t.sched.set_chunk_bytes(seg_cfg.chunk_for(t.size, grow))
            for _ in range(grow - t.target):
                self._spawn(tg, t, None)
            t.target = grow
            level_start, window_start = now, None


def end_chunk_bytes(chunk_bytes: int, unassigned_bytes: int, connections: int) -> int:
    """The chunk to hand out next: ``chunk_bytes``, or less near the end of a file whose
    chunks in flight would hold more than _END_IN_FLIGHT_BYTES (then each connection's next
    chunk is its share of what is left, no less than _END_CHUNK_BYTES)."""
    if chunk_bytes * connections <= _END_IN_FLIGHT_BYTES:
        return chunk_bytes
    share = unassigned_bytes // max(1, connections)
    return max(_END_CHUNK_BYTES, min(chunk_bytes, share - share % MiB))


def _primary_error(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a torn-down task group: ours first, the first one seen."""
    flat: list[BaseException] = []

    def walk(g: BaseExceptionGroup[BaseException]) -> None:
        for e in g.exceptions:
            if isinstance(e, BaseExceptionGroup):
                walk(e)
            else:
                flat.append(e)

    walk(eg)
    for e in flat:
        if isinstance(e, RemoteChanged):
            return e
    for e in flat:
        if isinstance(e, ModelhaulError):
            return e
    return flat[0] if flat else eg


__all__ = ["Workers", "end_chunk_bytes"]
