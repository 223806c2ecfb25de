"""What the kernel's page cache holds of one file: cachestat(2), Linux 6.5 and later.

Tests read it to see whether a file's pages are still dirty (waiting for a writeback) or were
handed to the disk already; where the system has no cachestat they skip.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from dataclasses import dataclass

import pytest

_SYS_CACHESTAT = 451  # the same number on every architecture (added after the tables merged)


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [
        ("nr_cache", ctypes.c_uint64),
        ("nr_dirty", ctypes.c_uint64),
        ("nr_writeback", ctypes.c_uint64),
        ("nr_evicted", ctypes.c_uint64),
        ("nr_recently_evicted", ctypes.c_uint64),
    ]


@dataclass(frozen=True, slots=True)
class CacheStat:
    cached_bytes: int
    dirty_bytes: int  # not yet handed to the disk
    writeback_bytes: int  # being written to the disk now


def cachestat(fd: int, offset: int = 0, length: int = 0) -> CacheStat:
    """The page-cache state of ``[offset, offset + length)`` of ``fd`` (length 0: to the end);
    skips the calling test where the system has no cachestat."""
    if not sys.platform.startswith("linux"):
        pytest.skip("cachestat is Linux-only")
    libc = ctypes.CDLL(None, use_errno=True)
    rng = _Range(offset, length)
    st = _Stat()
    if libc.syscall(_SYS_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(st), 0) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM):
            pytest.skip("this kernel has no cachestat (Linux 6.5+)")
        raise OSError(err, os.strerror(err))
    page = os.sysconf("SC_PAGE_SIZE")
    return CacheStat(
        cached_bytes=st.nr_cache * page,
        dirty_bytes=st.nr_dirty * page,
        writeback_bytes=st.nr_writeback * page,
    )
