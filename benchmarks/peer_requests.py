#!/usr/bin/env python3
"""Peer: a thread pool of ``requests`` GETs with one Session per thread.

This is what ``huggingface_hub.snapshot_download`` does without hf_transfer: ``thread_map``
over the repo's files with ``max_workers=8``, one cached ``requests.Session`` per thread,
streaming each response to disk in 10 MiB ``iter_content`` chunks.

Usage: peer_requests.py LIST OUT_DIR [--threads 8]; LIST has one ``URL<TAB>NAME`` per line.
Runs in the bench venv (needs ``requests``); exits non-zero if any download fails.
"""

from __future__ import annotations

import argparse
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

CHUNK = 10 * 1024 * 1024  # huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE
_local = threading.local()


def _session() -> requests.Session:
    s = getattr(_local, "session", None)
    if s is None:
        s = _local.session = requests.Session()
        s.trust_env = False  # never pick up a proxy for loopback benchmarks
    return s


def fetch(url: str, dest: Path) -> int:
    n = 0
    with _session().get(url, stream=True, timeout=60) as r:
        r.raise_for_status()
        with open(dest, "wb") as f:
            for chunk in r.iter_content(chunk_size=CHUNK):
                f.write(chunk)
                n += len(chunk)
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("list", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args(argv)
    jobs = []
    for line in args.list.read_text().splitlines():
        if line.strip():
            url, name = line.split("\t")
            jobs.append((url, args.out_dir / name))
    with ThreadPoolExecutor(max_workers=args.threads) as ex:
        total = sum(ex.map(lambda j: fetch(*j), jobs))
    print(f"{len(jobs)} files, {total} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
