"""The receive paths of one segment: from a response into the partial file, at its offset.

Three paths, chosen per segment: aiohttp chunks batched into pwritev (small or rate-capped
bodies), and for a large body whatever ``Response.take_over`` picks (http/ owns the choice and
the connection): a BodyPump's reusable buffers (TLS, or an in-order hash) or blocking receives in
a worker thread (plain HTTP, http.receive: spliced on Linux). This is the hot path: per chunk
only a length check, the limiter and a list append.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Future

from ..config import DownloadConfig
from ..disk.files import Buffer, WriteFailed, os_error, pwritev_all, pwritev_locked
from ..disk.journal import JournalState
from ..errors import IntegrityError, TruncatedBody, human_bytes
from ..http.bodies import BodyPump, SocketBody
from ..http.receive import FileSink, most_per_receive, receive_into
from ..http.response import BulkReceive, Response
from ..policy.segments import Segment
from .hashlag import receive_ended, wait_for_hash, wait_hash_window
from .plan import save_journal
from .pools import RECV_POOL, WRITE_POOL
from .transfer import BATCH_MAX_AGE_S, UNKNOWN_END, Transfer

_IOV_MAX = 512
_READ_FAST_BYTES = 1024 * 1024
_READ_CAPPED_BYTES = 64 * 1024
# A response with at least this much body left is received past aiohttp (threads, or a
# BodyPump). Taking over a lone connection's 1-4 MiB too (tried in session 12) moved the loop's
# hashing to threads but left a slow origin's progress at 0 for the first poll interval; the
# files a list holds most of are held in memory and published by one thread job instead
# (Downloader._fits_in_memory), and a lone connection's 2-4 MiB stays hashed in order here.
_BULK_MIN_BYTES = 4 * 1024 * 1024
_BULK_BLOCKS = 2
# A BodyPump's buffer (mostly TLS bodies: plain HTTP goes through threads). Every connection
# holds _BULK_BLOCKS of them; at 32 connections over HTTPS 1 MiB buffers took peak RSS to
# 160-174 MB, 512 KiB to 124-137 MB at the same speed (1 GiB, 20 MiB/s per connection).
_PUMP_BLOCK_BYTES = 512 * 1024
# What a blocking receive asks for first, and the least it asks for (SocketBody).
_SOCKET_FIRST_ASK = 1024 * 1024
_SOCKET_MIN_ASK = 64 * 1024
# Journal saves the bytes trigger are at least this far apart: at hundreds of MB/s every
# journal_every_bytes would be dozens of file replacements a second on the event loop.
_JOURNAL_MIN_GAP_S = 0.25


class Streams:
    """Receives segments for the downloads of one Downloader (its configuration)."""

    def __init__(self, config: DownloadConfig) -> None:
        self.config = config

    async def stream(self, t: Transfer, seg: Segment, resp: Response) -> None:
        """Receive into ``seg`` until its end; bytes are written in batches with pwritev.

        This is the hot path: per chunk only a length check, the limiter and a list append.
        """
        read = resp.read_chunk
        limiters = t.facts.limiters
        stop = resp.end
        # Decided per segment, so a cap set while running applies from the next segment on.
        capped = any(lim.rate_bytes_per_s is not None for lim in limiters)
        batch = self.config.segments.write_batch_bytes
        if (
            not capped
            and min(seg.end, stop) - seg.pos >= _BULK_MIN_BYTES
            and await self._stream_taken_over(t, seg, resp)
        ):
            return
        resp.set_read_size(_READ_CAPPED_BYTES if capped else _READ_FAST_BYTES)
        bufs: list[bytes] = []
        pending = 0
        write_at = seg.pos
        since_journal = 0
        clock = time.monotonic
        # A slow or capped connection would take seconds to fill a batch; flush by age too,
        # so progress moves steadily and little is lost to a crash.
        flush_at = clock() + BATCH_MAX_AGE_S
        try:
            while seg.pos < seg.end and seg.pos < stop:
                chunk = await read()
                if not chunk:
                    if seg.end >= UNKNOWN_END:  # unknown length: the body's end is the file's
                        t.size = seg.pos
                        seg.end = seg.pos
                        break
                    raise TruncatedBody(
                        f"the server closed the connection {human_bytes(seg.end - seg.pos)} early"
                    )
                n = len(chunk)
                over = seg.pos + n - min(seg.end, stop)
                if over > 0:  # another connection stole the rest, or the body runs long
                    n -= over
                    chunk = chunk[:n]
                # Keep the chunk before waiting on the limiter: a pause while waiting must not
                # throw away bytes that already arrived.
                bufs.append(chunk)
                pending += n
                seg.pos += n
                t.received += n
                for lim in limiters:
                    await lim.acquire(n)
                if pending >= batch or len(bufs) >= _IOV_MAX or clock() >= flush_at:
                    flush_at = clock() + BATCH_MAX_AGE_S
                    await self._write(t, bufs, write_at)
                    write_at += pending
                    since_journal = self._after_write(t, seg, since_journal + pending)
                    bufs, pending = [], 0
        finally:
            if bufs and t.memory is not None:
                self._keep(t, bufs, write_at)  # nothing to wait for, so no task to shield it
            elif bufs:
                # Keep what arrived even when failing or cancelled: a resume needs less.
                await asyncio.shield(self._write(t, bufs, write_at))

    async def _stream_taken_over(self, t: Transfer, seg: Segment, resp: Response) -> bool:
        """Receive into ``seg`` past aiohttp, by the path ``Response.take_over`` picks; False
        when the response cannot be taken over (then stream reads it in chunks)."""
        how = BulkReceive(
            # Blocking receives in threads, unless an in-order hash must see the bytes here.
            thread_block_bytes=self.config.segments.recv_block_for(
                max(t.target, t.alive), t.recv_bytes, t.recv_bodies
            )
            if t.inline_hash is None
            else None,
            use_pipe=t.splice_ok,
            pump_block_bytes=min(self.config.segments.write_batch_bytes, _PUMP_BLOCK_BYTES),
            pump_blocks=_BULK_BLOCKS,
        )
        taken = resp.take_over(how)
        if taken is None:
            return False
        head, body = taken
        if isinstance(body, BodyPump):
            await self._stream_bulk(t, seg, resp, head, body)
            return True
        held = body.buffer_bytes  # none when spliced through a pipe
        t.recv_bytes += held
        t.recv_bodies += bool(held)
        try:
            await self._stream_socket(t, seg, resp, head, body)
        finally:
            t.recv_bytes -= held
            t.recv_bodies -= bool(held)
        return True

    async def _stream_bulk(
        self, t: Transfer, seg: Segment, resp: Response, head: bytes, pump: BodyPump
    ) -> None:
        """Like stream, for a body taken over by a BodyPump: one write per filled block.

        A block goes back to the pump only after its write completed; a block whose write was
        interrupted stays with the write job, which may still be running in its thread.
        """
        limiters = t.facts.limiters
        window = self._hash_window(t)
        since_journal = 0
        # Received and counted in seg.pos, not yet written; it starts at held_at.
        held: memoryview | bytes | None = None
        held_at = seg.pos
        block: bytearray | None = None
        try:
            if head:
                held = head[: max(0, min(seg.end, resp.end) - seg.pos)]
                seg.pos += len(held)
                t.received += len(held)
            while True:
                if held is not None:
                    n = len(held)
                    for lim in limiters:
                        await lim.acquire(n)
                    await self._write(t, [held], held_at)
                    held = None
                    if block is not None:
                        pump.recycle(block)
                        block = None
                    since_journal = self._after_write(t, seg, since_journal + n)
                # Re-read every time: another connection may have stolen the tail.
                stop = min(seg.end, resp.end)
                if seg.pos >= stop:
                    return
                if window is not None:  # as in _stream_socket
                    await wait_hash_window(t, seg.pos, window)
                got = await pump.next_block(BATCH_MAX_AGE_S, resp.url)
                if got is None:
                    raise TruncatedBody(
                        f"the server closed the connection {human_bytes(stop - seg.pos)} early"
                    )
                block, n = got
                n = min(n, stop - seg.pos)
                held, held_at = memoryview(block)[:n], seg.pos
                seg.pos += n
                t.received += n
        finally:
            # Keep what arrived even when failing or cancelled: a resume needs less.
            rest: list[memoryview | bytes] = []
            if held is not None:
                rest.append(held)
            else:
                held_at = seg.pos
            for buf, n in pump.drain():
                take = min(n, min(seg.end, resp.end) - seg.pos)
                if take > 0:
                    rest.append(memoryview(buf)[:take])
                    seg.pos += take
                    t.received += take
            if rest:
                await asyncio.shield(self._write(t, rest, held_at))

    async def _stream_socket(
        self, t: Transfer, seg: Segment, resp: Response, head: bytes, body: SocketBody
    ) -> None:
        """Like stream, for a plain-HTTP body read by blocking receives: each job in a worker
        thread receives one block and writes it; the loop only does the bookkeeping.

        A receive asks for about what the connection delivers in half a poll interval (up to
        the whole block): a fast one gets whole blocks, and a slow one never claims more than
        it can bring soon, so idle connections can still steal the rest of its segment.
        """
        since_journal = 0
        if head:
            head = head[: max(0, min(seg.end, resp.end) - seg.pos)]
            at = seg.pos
            seg.pos += len(head)
            t.received += len(head)
            await self._write(t, [head], at)
            since_journal = self._after_write(t, seg, len(head))
        loop = asyncio.get_running_loop()
        job: Future[int] | None = None
        state = t.state
        block = most_per_receive(body)
        sink = FileSink(t.fd, t.write_lock, t.splice_ok)
        ask = min(block, _SOCKET_FIRST_ASK)
        window = self._hash_window(t)

        def landed(at: int, n: int) -> None:
            self._record_write(t, state, at, n)
            seg.pos = max(seg.pos, at + n)
            t.received += n

        try:
            while True:
                await wait_for_hash(t, seg.pos, window)  # while it trails: hashlag.py
                # Re-read every time: another connection may have stolen the tail.
                stop = min(seg.end, resp.end)
                if seg.pos >= stop:
                    return
                at = seg.pos
                want = min(ask, stop - at)
                seg.claimed = at + want
                job = RECV_POOL.submit(receive_into, body, sink, seg, at, want)
                t.track(job)
                asked_at = loop.time()
                t.recv_active += 1
                try:
                    n = await asyncio.wrap_future(job)
                finally:
                    receive_ended(t)
                job = None
                if n == want and loop.time() - asked_at < BATCH_MAX_AGE_S / 2:
                    ask = min(block, 2 * ask)
                elif 0 <= n < want:  # the poll interval ended the receive
                    ask = max(_SOCKET_MIN_ASK, n - n % _SOCKET_MIN_ASK)
                if n == 0:
                    continue  # SocketBody raises StallTimeout once nothing came for too long
                if n < 0:
                    raise TruncatedBody(
                        f"the server closed the connection {human_bytes(stop - seg.pos)} early"
                    )
                landed(at, n)
                for lim in t.facts.limiters:  # a cap set while running
                    await lim.acquire(n)
                since_journal = self._after_write(t, seg, since_journal + n)
        except WriteFailed as exc:
            if exc.written:
                # What reached the disk before it filled up is kept for the resume.
                landed(at, exc.written)
            job = None
            raise os_error(exc.cause, t.facts.part, t.dest) from exc.cause
        finally:
            t.splice_ok = t.splice_ok and sink.splice_ok
            if job is not None:
                # Cancelled or failed mid-receive: wake the thread and keep what it wrote.
                body.abort()
                n = await _outcome_of(job)
                if n > 0:
                    landed(at, n)

    def _hash_window(self, t: Transfer) -> int | None:
        """How far past the hashed bytes a receive of ``t`` may start (engine.hashlag); None
        for a file readers wait on (the Hub mirror's): they must not wait for the hash."""
        return None if t.facts.demand is not None else self.config.segments.hash_window_bytes

    def _after_write(self, t: Transfer, seg: Segment, since_journal: int) -> int:
        """After each batch: save the journal every few MiB, refuse a body longer than promised.

        Returns the bytes written since the journal was last saved."""
        if since_journal >= self.config.segments.journal_every_bytes:
            if time.monotonic() - t.journal_saved_at >= _JOURNAL_MIN_GAP_S:
                save_journal(t)  # which advances the writeback too
            elif t.writeback is not None:
                # The save waits for the next trigger or the tick (journal_dirty); the disk
                # need not: what is left dirty at the end is what the final fsync waits for.
                t.writeback.advance(t.state.done)
            since_journal = 0
        if t.facts.expected_size is not None and seg.pos > t.facts.expected_size:
            raise IntegrityError(f"{t.dest.name}: the server sent more than expected")
        return since_journal

    async def _write(self, t: Transfer, bufs: Sequence[Buffer], offset: int) -> None:
        """Write ``bufs`` at ``offset`` (in a thread, but on the loop for a small file in order)."""
        # The state of the attempt this write belongs to, taken before anything can be
        # awaited. A write shielded in a worker's finally outlives the worker when a failing
        # task group cancels it mid-wait, and may finish after a clean restart has begun: its
        # bytes went to the old partial file, so the restart's fresh state must not hear of them.
        state = t.state
        if t.memory is not None:
            self._keep(t, list(bufs), offset)
            return
        if t.inline_hash is not None:
            if offset == t.inline_pos:
                try:
                    n = pwritev_all(t.fd, bufs, offset)
                except WriteFailed as exc:
                    raise os_error(exc.cause, t.facts.part, t.dest) from exc.cause
                for b in bufs:
                    t.inline_hash.update(b)
                t.inline_pos += n
                t.state.done.add(offset, offset + n)
                t.journal_dirty = True
                return
            # Out of order (a retry, a second connection): the file hasher takes over.
            t.inline_hash = None
        job = WRITE_POOL.submit(pwritev_locked, t.fd, t.write_lock, bufs, offset)
        t.track(job)
        try:
            n = await asyncio.wrap_future(job)
        except WriteFailed as exc:
            if exc.written:
                self._record_write(t, state, offset, exc.written)
            raise os_error(exc.cause, t.facts.part, t.dest) from exc.cause
        self._record_write(t, state, offset, n)

    @staticmethod
    def _keep(t: Transfer, bufs: list[Buffer], offset: int) -> None:
        """A small file's bytes stay in memory until the thread job that verifies and
        publishes it (see Transfer.memory)."""
        assert t.memory is not None
        t.memory.append((offset, bufs))
        t.state.done.add(offset, offset + sum(map(len, bufs)))

    @staticmethod
    def _record_write(t: Transfer, state: JournalState, offset: int, n: int) -> None:
        """``n`` bytes at ``offset`` reached the partial file of the attempt ``state`` is of."""
        state.done.add(offset, offset + n)
        if t.state is not state:
            return
        t.journal_dirty = True
        if t.hasher is not None:
            t.hasher.advance(state.done.prefix_end())


async def _outcome_of(job: Future[int]) -> int:
    """What a receive job wrote, once it ends: 0 if it never ran or failed on its way out.

    A running thread cannot be stopped, so the bytes it wrote are waited for even while
    cancelled (shielded); a new cancel still propagates.
    """
    if job.cancelled():
        return 0
    try:
        return await asyncio.shield(asyncio.wrap_future(job))
    except Exception:  # the receive failed after the abort: nothing more is known written
        return 0


__all__ = ["Streams"]
