"""One CPU left to the SHA-256 while it trails the received bytes (few-CPU machines).

The prefix hash is one thread, serial by its nature; the receive threads, the event loop and
the server share the CPUs with it. On a 2-core VM the scheduler gives the hash about its fair
share among ~10 runnable threads, so it trailed the completed prefix by ~2 GiB of 4 and then
finished alone on one core while the other idled: a 1-2 s tail after the last byte.

Pausing the receives while the hash trails cut that tail but idled a core (0.3-0.9 s lost);
nicing the receive threads cannot be undone unprivileged. Here the receive threads are kept off
one CPU instead, only while the hash trails by more than a threshold: the hash then has that
CPU nearly to itself, the receives keep the others, and nothing stops. CPU affinity is allowed
unprivileged and undone exactly (the threads get back the mask the process had). On a busy
machine the kernel still shares the left CPU fairly among other processes. With more than
_MAX_CPUS CPUs a hash has a core anyway, and nothing is done.

Off by default (SegmentPolicy.hash_cpu_lag_bytes; engine.hashlag steers it): on the loaded VM
the tail did not get shorter, since the kernel's balancer moves other runnable tasks (the
server's, other processes') onto the CPU the receives left; on a quiet machine it may. With
the receive cap down to one receive as well, two runs of 4 GiB took 30 s instead of 8: the
hash, on a crowded CPU, set the pace.
"""

from __future__ import annotations

import os
import threading

from .stages import stage

# Above this many usable CPUs, the receive threads leave the hash a core without help.
_MAX_CPUS = 4


class ReceiverCpus:
    """The CPUs the receive threads of this process may run on: all, or all but one while
    any download holds it (``hold``/``release``, counted)."""

    def __init__(self, max_cpus: int = _MAX_CPUS) -> None:
        self._max_cpus = max_cpus
        self._lock = threading.Lock()
        self._tids: set[int] = set()
        self._holds = 0
        self._wide: set[int] = set()  # the mask to give back (the process's, at the first hold)
        self._narrow: set[int] = set()

    def register(self) -> None:
        """In a new receive thread (the pool's initializer): count it in, narrowed if held."""
        tid = threading.get_native_id()
        with self._lock:
            self._tids.add(tid)
            if self._holds:
                self._set_locked(tid, self._narrow)

    @property
    def held(self) -> bool:
        return self._holds > 0

    def thread_ids(self) -> frozenset[int]:
        """The native ids of the receive threads registered so far."""
        with self._lock:
            return frozenset(self._tids)

    def hold(self) -> bool:
        """Keep the receive threads off one CPU until ``release``; False (and nothing held)
        where that does not apply (one CPU, or more than ``max_cpus``, or no affinity)."""
        if not hasattr(os, "sched_setaffinity"):
            return False
        wide = os.sched_getaffinity(0)
        if not 2 <= len(wide) <= self._max_cpus:
            return False
        with self._lock:
            self._holds += 1
            first = self._holds == 1
            if first:
                self._wide = set(wide)
                self._narrow = self._wide - {max(self._wide)}
                self._apply_locked(self._narrow)
        if first:
            stage("hash_cpu_held")
        return True

    def release(self) -> None:
        """Undo one ``hold``; the last one gives the receive threads every CPU back."""
        with self._lock:
            self._holds -= 1
            last = self._holds == 0
            if last:
                self._apply_locked(self._wide)
        if last:
            stage("hash_cpu_released")

    def _apply_locked(self, cpus: set[int]) -> None:
        for tid in list(self._tids):
            self._set_locked(tid, cpus)

    def _set_locked(self, tid: int, cpus: set[int]) -> None:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # the thread has ended (its pool was shut down)
            self._tids.discard(tid)
        except OSError:  # a mask the process may not use (changed from outside): leave it
            pass


RECEIVER_CPUS = ReceiverCpus()


__all__ = ["RECEIVER_CPUS", "ReceiverCpus"]
