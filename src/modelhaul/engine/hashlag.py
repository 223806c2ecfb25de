"""What a download does while its SHA-256 trails the completed prefix: the hash is one serial
thread, and whatever it has not hashed at the last byte is the tail the user waits for.

Three reversible answers, each behind one SegmentPolicy value; the first two steered every
tick, the third asked before each receive:

- ``hash_cpu_lag_bytes``: past this lag the receive threads leave the hash one CPU
  (engine.cpus; machines with 2-4 CPUs), given back once the lag is under a quarter of it.
- ``hash_recv_lag_bytes``: past this lag fewer receives run at once: half as many each tick
  the lag stays over it without shrinking (never fewer than _MIN_RECEIVERS), twice as many
  each tick it is under half of it, until none is held back.
- ``hash_window_bytes``: past this lag, while the hash is on its thread, a receive that would
  start more than this far past the hashed bytes waits for it (wait_hash_window).

Holding back every receive (tried before) idled a core: the answers here only shift the share.
Measured on the shared 2-core VM (4 GiB to ext4, load 7-12 from others, alternating runs,
medians of 4-5): fewer receives past 32 MiB cut the tail after the last byte from 2.3-3.1 s
to 0.7-1.3 s at the same CPU; leaving a CPU did not shorten it (the kernel's balancer moves
other runnable tasks onto the CPU left free), so it is off by default. Later (session 11,
quieter VM, 4 GiB from nginx on loopback, alternating, two A/Bs of 4-6 rounds) the cap alone
left a 0.5-1.4 s tail; with the window as well, 0.2 s, the wall the same within noise.
"""

from __future__ import annotations

import asyncio
import contextlib

from ..config import SegmentPolicy
from .cpus import RECEIVER_CPUS, ReceiverCpus
from .stages import stage
from .transfer import Transfer

# At least one receive always runs: holding every receive back (tried before) idled a core.
# One rather than two: on the loaded 2-core VM, 4 GiB, tail 1.25 -> 0.67 s (32 MiB of lag).
_MIN_RECEIVERS = 1
# The longest one receive is held back: a hash starved by other processes gains little from
# it, and a server may close a connection that sat idle for long.
_HOLD_MAX_S = 2.0


class HashLagGuard:
    """One download's steering by its hash lag, from the first tick to ``release``."""

    def __init__(
        self, t: Transfer, policy: SegmentPolicy, cpus: ReceiverCpus = RECEIVER_CPUS
    ) -> None:
        self._t = t
        self._cpu_lag = policy.hash_cpu_lag_bytes
        self._recv_lag = policy.hash_recv_lag_bytes
        self._cpus = cpus
        self._cpu_held = False
        self._prev_lag = 0

    def steer_nowait(self) -> None:
        """Hold or release the CPU, and set the receive cap, by the lag now (each tick)."""
        if self._cpu_lag is None and self._recv_lag is None:
            return
        hasher = self._t.hasher
        lag = 0 if hasher is None else hasher.unhashed_bytes
        if self._cpu_lag is not None:
            if not self._cpu_held and lag > self._cpu_lag:
                self._cpu_held = self._cpus.hold()
                if not self._cpu_held:
                    self._cpu_lag = None  # not on this machine: stop asking
            elif self._cpu_held and lag < self._cpu_lag // 4:
                self._release_cpu()
        if self._recv_lag is not None:
            cap = next_receive_cap(
                self._t.recv_cap, self._t.alive, lag, self._prev_lag, self._recv_lag
            )
            set_receive_cap(self._t, cap)
        self._prev_lag = lag

    def release(self) -> None:
        """The receives are over (or failed): give everything back."""
        self._release_cpu()
        set_receive_cap(self._t, None)

    def _release_cpu(self) -> None:
        if self._cpu_held:
            self._cpu_held = False
            self._cpus.release()


def next_receive_cap(
    cap: int | None, alive: int, lag: int, prev_lag: int, lag_bytes: int
) -> int | None:
    """The receive cap for the next tick: halved while the lag is over ``lag_bytes`` and not
    shrinking since the last tick (``prev_lag``; from the connections alive, never below
    _MIN_RECEIVERS), doubled once it is under half of it, and lifted (None) when that reaches
    every connection. A lag that shrinks on its own is a jump of the prefix the hash is
    clearing at full speed, not a starved hash: holding receives then would only cost time."""
    if lag > lag_bytes and lag >= prev_lag:
        return max(_MIN_RECEIVERS, (alive if cap is None else cap) // 2)
    if cap is None or lag >= lag_bytes // 2:
        return cap
    return None if 2 * cap >= alive else 2 * cap


def set_receive_cap(t: Transfer, cap: int | None) -> None:
    """At most ``cap`` receives of ``t`` at once from now on (None: no cap)."""
    if cap != t.recv_cap:
        if (cap is None) != (t.recv_cap is None):
            stage("receive_cap_lifted" if cap is None else "receive_cap_set")
        t.recv_cap = cap
        _hand_turns(t)


async def wait_receive_turn(t: Transfer, pos: int) -> None:
    """Before a receive at ``pos``: wait while ``t``'s receive cap is reached, _HOLD_MAX_S at
    most; a freed turn goes to the held receive at the lowest offset (engine.turns). The
    receive that continues the completed prefix never waits: held back, the hash would idle
    while the bytes after it pile up, then get them all at once."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_HOLD_MAX_S):
            while (
                t.recv_cap is not None
                and t.recv_active >= t.recv_cap
                and pos > t.state.done.prefix_end()
            ):
                stage("receive_held")
                await t.recv_turns.wait(pos)


async def wait_hash_window(t: Transfer, pos: int, window: int) -> None:
    """Before a receive at ``pos``: while the hash trails the completed prefix by more than
    ``window``, a receive starting more than ``window`` past the hashed bytes waits until it
    is within it (_HOLD_MAX_S at most). The receive that continues the prefix never waits.

    The receive cap alone left the hash ~1 GiB behind on loopback (one splicing receive
    outruns it): 1.1-1.8 s to hash after the last byte of 4 GiB. A window counted from the
    hashed bytes alone also held receives where the network sets the pace (case E: the
    prefix jumps ~90 MiB as 8 MiB chunks land, and segments in flight span ~300 MiB), so it
    applies only while the hash is the one behind."""
    hasher = t.hasher
    # A hash waiting for a pool thread (more large files than hash threads) is not starved of
    # CPU by these receives: holding them would only slow the file down.
    if hasher is None or not hasher.on_thread:
        return
    # A resumed download's hash first reads what an earlier run left: holding this run's
    # receives for that would only delay them (by seconds, on a slow link).
    hashed = max(hasher.hashed_bytes, t.hash_resumed)
    if not must_wait_for_hash(pos, hashed, t.state.done.prefix_end(), window):
        return
    stage("receive_window_held")
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_HOLD_MAX_S):
            await hasher.reached(pos - window)


async def wait_for_hash(t: Transfer, pos: int, window: int | None) -> None:
    """Before a bulk receive at ``pos``: its turn under the receive cap, then the hash window
    (None: none)."""
    if t.recv_cap is not None:
        await wait_receive_turn(t, pos)
    if window is not None:
        await wait_hash_window(t, pos, window)


def must_wait_for_hash(pos: int, hashed: int, prefix: int, window: int) -> bool:
    """Whether a receive at ``pos`` waits for the hash (wait_hash_window): it starts more than
    ``window`` past the ``hashed`` bytes, past the completed ``prefix``, and the hash trails
    that prefix by more than ``window``."""
    return pos > hashed + window and pos > prefix and prefix - hashed > window


def receive_ended(t: Transfer) -> None:
    """A receive of ``t`` ended: its turn goes to a waiting one, if capped."""
    t.recv_active -= 1
    _hand_turns(t)


def _hand_turns(t: Transfer) -> None:
    """Wake as many held receives as the cap has room for now, lowest offsets first."""
    if t.recv_cap is None:
        t.recv_turns.wake()
    elif t.recv_active < t.recv_cap:
        t.recv_turns.wake(t.recv_cap - t.recv_active)


__all__ = [
    "HashLagGuard",
    "must_wait_for_hash",
    "next_receive_cap",
    "receive_ended",
    "set_receive_cap",
    "wait_for_hash",
    "wait_hash_window",
    "wait_receive_turn",
]
