"""Soak: many downloads through random faults and kills; none may end in a wrong file.

The driver runs ``modelhaul get URL -o PATH --sha256 HEX --json`` as real subprocesses against a
fault-injecting `Origin` on loopback. Each download gets a random size (0, 1, chunk multiples,
one byte either side of the engine's boundaries, or anything up to ``max_size``), a random
list of faults for its next requests (drops, stalls, truncation, 500/503/429 bursts, Range
ignored, a wrong Content-Range, gzip forced on, a body longer than promised, slow responses),
sometimes a content change mid-download or a redirect chain, and sometimes a SIGKILL or SIGINT
at a random moment followed by a re-run.

Invariants checked after every run:

- a run that exits 0 leaves exactly the expected bytes at the output path and no partial file;
- a run that fails ends with a categorised JSON result line (no traceback) and no file at the
  output path;
- after a kill, the output path holds nothing or the right file, and every range the journal
  claims holds the right bytes in the partial file;
- a re-run after a kill never asks again for a range the journal recorded, unless that run met
  a fault that obliges a clean restart (the file changed, Range ignored, a garbled response);
- no run hangs past its time limit (a stale lock would).

Usage, for a large local run (the figures table is printed at the end)::

    python tests/support/soak.py --downloads 200 --kills 20 --seed 1 --max-size 300M

`tests/test_soak.py` runs a small count in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))

from origin import Fault, Origin, RequestRecord

KiB = 1024
MiB = 1024 * KiB
CATEGORIES = frozenset(
    {
        "network",
        "timeout",
        "not_found",
        "auth",
        "rate_limited",
        "server_error",
        "client_error",
        "integrity",
        "disk_full",
        "permission",
        "invalid_input",
        "cancelled",
    }
)
# Faults after which the engine must start the file over: a clean restart re-fetches legally.
RESTART_KINDS = frozenset({"ignore_range", "wrong_content_range", "gzip", "content_change"})
# Offsets where the engine or the origin changes what it does (probe size, split threshold,
# chunk sizes, the write batch, the origin's write size, the scheduler's alignment).
BOUNDARIES = (64 * KiB, 128 * KiB, 1 * MiB, 4 * MiB, 8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB)


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakConfig:
    """How much to soak. ``retries`` and ``timeout_s`` go to the CLI as --retries/--timeout."""

    downloads: int = 25
    kills: int = 4
    seed: int = 1
    max_size: int = 16 * MiB
    retries: int = 4
    timeout_s: float = 1.0
    max_faults: int = 4  # planned faulty requests per download, at most

    def __post_init__(self) -> None:
        if self.downloads < 1 or self.kills < 0 or self.max_size < 2 or self.max_faults < 0:
            raise ValueError("downloads >= 1, kills >= 0, max_size >= 2, max_faults >= 0")


@dataclass(slots=True)
class SoakStats:
    """The figures of a soak; ``violations`` lists every broken invariant in words."""

    downloads: int = 0
    without_sha: int = 0  # run without --sha256: the engine's own checks had to suffice
    completed: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # by error category
    runs: int = 0
    faults: Counter[str] = field(default_factory=Counter)  # applied, by kind
    kills: Counter[str] = field(default_factory=Counter)  # by signal name
    wrong_files: int = 0
    violations: list[str] = field(default_factory=list)
    bytes_files: int = 0  # sizes of the files downloaded
    bytes_served: int = 0  # file bytes the origin handed out
    refetched: Counter[str] = field(default_factory=Counter)  # bytes served twice, by cause
    journal_resumes: int = 0  # re-runs after a kill that resumed from a journal
    elapsed_s: float = 0.0

    @property
    def refetched_total(self) -> int:
        return sum(self.refetched.values())

    def table(self) -> str:
        rows: list[tuple[str, str]] = [
            ("downloads", str(self.downloads)),
            ("  of which without --sha256", str(self.without_sha)),
            ("  completed (SHA-256 right)", str(self.completed)),
            ("  categorised failures", _counts(self.failed) or "0"),
            ("CLI runs", str(self.runs)),
            ("faults injected", str(sum(self.faults.values()))),
            *((f"  {k}", str(v)) for k, v in sorted(self.faults.items())),
            ("kills", str(sum(self.kills.values()))),
            *((f"  {k}", str(v)) for k, v in sorted(self.kills.items())),
            ("  re-runs resumed from a journal", str(self.journal_resumes)),
            ("wrong files", str(self.wrong_files)),
            ("invariant violations", str(len(self.violations))),
            ("bytes of the files (minimum)", _mib(self.bytes_files)),
            ("bytes served", _mib(self.bytes_served)),
            ("re-fetched beyond the minimum", _mib(self.refetched_total)),
            *((f"  {k}", _mib(v)) for k, v in sorted(self.refetched.items())),
            ("elapsed", f"{self.elapsed_s:.1f} s"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB ({n} B)"


def _counts(c: Mapping[str, int], fmt: Any = str) -> str:
    return ", ".join(f"{k} {fmt(v)}" for k, v in sorted(c.items()))


# ---------------------------------------------------------------------------------- planning


@dataclass(slots=True)
class _Plan:
    """One download: its bytes, its faults, its kills."""

    index: int
    name: str
    size: int
    data: bytes
    faults: list[Fault]
    connections: int | None
    redirect_hops: int
    change_after: int | None  # switch content after this many GETs
    new_data: bytes | None
    kills: list[tuple[str, float | None]]  # (signal, fraction of size or None: at the probe)
    with_sha: bool  # give --sha256; without it the engine's own checks are all there is


def pick_size(rng: random.Random, max_size: int) -> int:
    """0, 1, chunk multiples, one byte either side of a boundary, or anything up to max_size."""
    roll = rng.random()
    if roll < 0.06:
        return rng.choice((0, 1, 2))
    fits = [b for b in BOUNDARIES if b + 1 <= max_size]
    if roll < 0.40 and fits:
        return rng.choice(fits) + rng.choice((-1, 0, 1))
    if roll < 0.55:
        unit = rng.choice((64 * KiB, 128 * KiB, MiB))
        return unit * rng.randint(1, max(1, max_size // unit))
    # Log-uniform: many small and medium files, now and then a big one.
    return min(max_size, int(2 ** rng.uniform(4, max(4.0, (max_size).bit_length() - 0.01))))


def _offset(rng: random.Random, size: int) -> int:
    """Where in a response body a fault lands: 0, 1, near a boundary, or anywhere."""
    top = max(1, min(size, 8 * MiB))
    roll = rng.random()
    if roll < 0.1:
        return rng.choice((0, 1))
    if roll < 0.35:
        near = [b for b in BOUNDARIES if b < top] or [top]
        return max(0, min(top - 1, rng.choice(near) + rng.choice((-1, 0, 1))))
    return rng.randrange(top)


FAULT_WEIGHTS = {
    "drop": 6,
    "stall": 2,
    "truncate": 4,
    "status": 5,
    "ignore_range": 2,
    "wrong_content_range": 1,
    "gzip": 1,
    "extra_body": 1,
    "slow": 2,
}


def make_faults(rng: random.Random, size: int, max_faults: int) -> list[Fault]:
    """Faults for the next requests of one file, with clean requests between some of them."""
    out: list[Fault] = []
    kinds, weights = zip(*FAULT_WEIGHTS.items(), strict=True)
    for _ in range(rng.randint(0, max_faults)):
        if rng.random() < 0.25:
            out.append(Fault())  # a clean request between faults
        kind = rng.choices(kinds, weights)[0]
        if kind == "status":
            status = rng.choice((500, 503, 429))
            headers = {}
            if status != 500 and rng.random() < 0.5:
                headers["Retry-After"] = rng.choice(("0", "1", "Thu, 01 Jan 1970 00:00:00 GMT"))
            out.extend(Fault(status=status, headers=headers) for _ in range(rng.randint(1, 2)))
        elif kind == "drop":
            out.append(Fault(drop_after=_offset(rng, size)))
        elif kind == "stall":
            out.append(Fault(stall_after=_offset(rng, size), stall_s=3600))
        elif kind == "truncate":
            out.append(Fault(truncate_after=_offset(rng, size)))
        elif kind == "ignore_range":
            out.append(Fault(ignore_range=True))
        elif kind == "wrong_content_range":
            out.append(Fault(wrong_content_range=True))
        elif kind == "gzip" and size <= 32 * MiB:  # the origin compresses the whole file
            out.append(Fault(gzip=True))
        elif kind == "extra_body":
            out.append(Fault(extra_body=rng.choice((1, 100, 64 * KiB))))
        elif kind == "slow":
            # Slow enough to matter, fast enough that a whole-file response takes ~3 s at most.
            out.append(Fault(rate_bytes_per_s=max(2 * MiB, size // 3)))
    return out


def plan_downloads(cfg: SoakConfig) -> Iterator[_Plan]:
    """The downloads of a soak, made one at a time (their bytes can be hundreds of MB)."""
    rng = random.Random(cfg.seed)
    kill_at: Counter[int] = Counter(rng.randrange(cfg.downloads) for _ in range(cfg.kills))
    for i in range(cfg.downloads):
        size = pick_size(rng, cfg.max_size)
        data_rng = random.Random(f"{cfg.seed}-{i}")
        data = _random_bytes(data_rng, size)
        change_after = new_data = None
        if size and rng.random() < 0.08:
            change_after = rng.randint(1, 4)
            new_size = size if rng.random() < 0.7 else rng.randint(1, size)
            new_data = _random_bytes(data_rng, new_size)
        kills = []
        for _ in range(kill_at[i]):
            sig = rng.choice(("SIGKILL", "SIGINT"))
            at = None if size < 2 or rng.random() < 0.15 else rng.uniform(0.05, 0.95)
            kills.append((sig, at))
        kills.sort(key=lambda k: -1.0 if k[1] is None else k[1])
        yield _Plan(
            index=i,
            name=f"soak-{cfg.seed}-{i}.bin",
            size=size,
            data=data,
            faults=make_faults(rng, size, cfg.max_faults),
            connections=rng.choice((None, None, None, 1, 4)),
            redirect_hops=rng.choice((0, 0, 0, 0, 1, 2)),
            change_after=change_after,
            new_data=new_data,
            kills=kills,
            with_sha=rng.random() < 0.8,
        )


def _random_bytes(rng: random.Random, n: int) -> bytes:
    """randbytes in pieces: one call cannot make more than 256 MiB."""
    piece = 64 * MiB
    return b"".join(rng.randbytes(min(piece, n - i)) for i in range(0, n, piece))


def fault_kind(f: Fault | None) -> str | None:
    if f is None:
        return None
    if f.status is not None:
        return f"status_{f.status}"
    for kind in ("drop_after", "stall_after", "truncate_after"):
        if getattr(f, kind) is not None:
            return kind.removesuffix("_after")
    for kind in ("ignore_range", "wrong_content_range", "gzip", "endless"):
        if getattr(f, kind):
            return kind
    if f.extra_body:
        return "extra_body"
    if f.rate_bytes_per_s is not None:
        return "slow"
    return None


# ---------------------------------------------------------------------------------- running


def etag_of(data: bytes) -> str:
    """The strong ETag the test origin gives content by default."""
    return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


@dataclass(slots=True)
class _Run:
    code: int | None  # None: killed by a signal it could not handle
    result: dict[str, Any] | None
    stderr: str
    killed: str | None
    hung: bool
    first_request: int  # index into the file's request records where this run began


class Soak:
    """Runs the downloads of a SoakConfig against ``origin``, files under ``work``."""

    def __init__(
        self,
        origin: Origin,
        work: Path,
        cfg: SoakConfig,
        *,
        env: Mapping[str, str] | None = None,
        log: TextIO | None = None,
    ) -> None:
        self.origin = origin
        self.work = work
        self.cfg = cfg
        self.env = dict(env if env is not None else os.environ)
        self.log = log
        self.stats = SoakStats()

    def run(self) -> SoakStats:
        started = time.monotonic()
        for plan in plan_downloads(self.cfg):
            self._download(plan)
            plan.data = plan.new_data = b""  # let the memory go
        self.stats.elapsed_s = time.monotonic() - started
        return self.stats

    # -------------------------------------------------------------- one download

    def _download(self, plan: _Plan) -> None:
        origin, stats = self.origin, self.stats
        origin.add_file(plan.name, plan.data)
        if plan.change_after is not None:
            assert plan.new_data is not None
            origin.change_content_after(plan.name, plan.change_after, plan.new_data)
        origin.plan(plan.name, plan.faults)
        url = self._url(plan)
        final = plan.new_data if plan.new_data is not None else plan.data
        versions = {etag_of(plan.data): plan.data}
        if plan.new_data is not None:
            versions[etag_of(plan.new_data)] = plan.new_data
        # With --sha256 only the new version is right; without it, either version whole is
        # (the change may come after the download ended), but never a mix of the two.
        right = {
            hashlib.sha256(v).hexdigest()
            for v in (versions.values() if not plan.with_sha else [final])
        }
        out = self.work / f"{plan.index:04d}" / plan.name
        out.parent.mkdir(parents=True)
        stats.downloads += 1
        stats.without_sha += not plan.with_sha
        self._say(
            f"[{plan.index}] {plan.size} B{'' if plan.with_sha else ' (no --sha256)'}, "
            f"{len(plan.faults)} planned, "
            f"kills {plan.kills}, hops {plan.redirect_hops}, change {plan.change_after}"
        )
        held: list[tuple[int, int]] = []  # what the journal vouched for after the last kill
        pending = list(plan.kills)
        last: _Run | None = None
        discarded = False  # a run failed its checksum: the engine threw the bytes away
        for attempt in range(len(plan.kills) + 3):
            kill = pending.pop(0) if pending else None
            run = self._run_once(plan, url, out, final, kill)
            last = run
            self._check_resume(plan, run, held)
            if run.killed:
                if "Traceback" in run.stderr or "internal error" in run.stderr:
                    self._violate(plan, f"traceback after {run.killed}: {run.stderr[-800:]}")
                held = self._check_after_kill(plan, out, right, versions)
                continue
            held = []
            if run.hung or self._judge(plan, run, out, right):
                break
            discarded |= _category(run) == "integrity"
            if attempt >= len(plan.kills) + 1:
                break  # a failure, judged above; one more try was enough
        assert last is not None
        if last.code == 0 and not last.hung:
            stats.completed += 1
        elif last.result is not None:
            stats.failed[str((last.result.get("error") or {}).get("category"))] += 1
        self._account(plan, final, discarded)
        origin.add_file(plan.name, b"")  # the origin keeps files in memory

    def _url(self, plan: _Plan) -> str:
        """The file's URL, behind a chain of redirects that ends on the other loopback host."""
        origin = self.origin
        target = origin.url(plan.name, alt=plan.redirect_hops > 0)
        for hop in range(plan.redirect_hops, 0, -1):
            name = f"{plan.name}.hop{hop}"
            origin.add_redirect(name, target, status=random.Random(hop).choice((302, 307)))
            target = origin.url(name)
        return target

    def _command(self, plan: _Plan, url: str, out: Path, final: bytes) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "modelhaul.cli.main",
            "get",
            url,
            "-o",
            str(out),
            "--retries",
            str(self.cfg.retries),
            "--timeout",
            str(self.cfg.timeout_s),
            "--json",
        ]
        if plan.connections is not None:
            cmd += ["-x", str(plan.connections)]
        if plan.with_sha:
            cmd += ["--sha256", hashlib.sha256(final).hexdigest()]
        return cmd

    def _run_once(
        self, plan: _Plan, url: str, out: Path, final: bytes, kill: tuple[str, float | None] | None
    ) -> _Run:
        origin, stats = self.origin, self.stats
        first = len(origin.requests_for(plan.name))
        limit_s = 60 + plan.size / (10 * MiB)
        deadline = time.monotonic() + limit_s
        logs = out.parent / f"run{stats.runs}"
        stats.runs += 1
        with open(f"{logs}.out", "w+b") as so, open(f"{logs}.err", "w+b") as se:
            proc = subprocess.Popen(
                self._command(plan, url, out, final),
                stdout=so,
                stderr=se,
                env=self.env,
                cwd=out.parent,
            )
            killed = None
            try:
                if kill is not None and self._wait_moment(plan, proc, kill[1], deadline):
                    sig = getattr(signal, kill[0])
                    proc.send_signal(sig)
                    killed = kill[0]
                    stats.kills[kill[0]] += 1
                hung = False
                try:
                    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    hung = True
                    proc.kill()
                    proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=30)
            so.seek(0)
            se.seek(0)
            stdout, stderr = so.read().decode(errors="replace"), se.read().decode(errors="replace")
        # Stalled and endless responses end when their client is gone; wait for that, so the
        # next run's counters start clean.
        try:
            origin.wait_idle(timeout=30)
        except TimeoutError:
            self._violate(plan, "the origin still serves 30 s after the client ended")
        code = proc.returncode if proc.returncode >= 0 else None
        if hung:
            self._violate(plan, f"run hung past {limit_s:.0f} s; stderr: {stderr[-500:]}")
        return _Run(code, _last_result(stdout), stderr, killed, hung, first)

    def _wait_moment(
        self, plan: _Plan, proc: subprocess.Popen[bytes], at: float | None, deadline: float
    ) -> bool:
        """Wait for the kill moment; False if the run ended before it came."""
        origin = self.origin
        if at is None:
            n = len(origin.requests_for(plan.name)) + 1
            wait = lambda t: origin.wait_requests(plan.name, n, timeout=t)  # noqa: E731
        else:
            n = origin.bytes_served(plan.name) + max(1, int(plan.size * at))
            wait = lambda t: origin.wait_bytes(plan.name, n, timeout=t)  # noqa: E731
        while time.monotonic() < deadline:
            try:
                wait(0.2)
                return proc.poll() is None
            except TimeoutError:
                if proc.poll() is not None:
                    return False
        return False

    # -------------------------------------------------------------- judging

    def _judge(self, plan: _Plan, run: _Run, out: Path, right: set[str]) -> bool:
        """Check one run that was not killed; True if it completed."""
        stats = self.stats
        if "Traceback" in run.stderr or "internal error" in run.stderr:
            self._violate(plan, f"traceback or internal error: {run.stderr[-800:]}")
        if run.code == 0:
            if not out.is_file():
                self._violate(plan, "exit 0 but no file at the output path")
                return False
            if _sha_file(out) not in right:
                stats.wrong_files += 1
                self._violate(plan, "WRONG FILE: exit 0 with bytes that do not match")
                return False
            left = [p.name for p in out.parent.iterdir() if ".modelhaul" in p.name]
            if left:
                self._violate(plan, f"completed but left {left}")
            return True
        result = run.result
        category = (result or {}).get("error", {}) or {}
        category = category.get("category") if isinstance(category, dict) else None
        if run.code not in (1, 2) or result is None or category not in CATEGORIES:
            self._violate(
                plan,
                f"uncategorised failure: exit {run.code}, result {result}, {run.stderr[-500:]}",
            )
        if out.exists():
            if _sha_file(out) not in right:
                stats.wrong_files += 1
                self._violate(plan, "WRONG FILE left at the output path after a failure")
            else:
                self._violate(plan, "a failed run left a file at the output path")
        if category == "integrity" and plan.change_after is None:
            # The origin only ever served the right bytes: the engine itself mixed them up.
            self._violate(plan, f"integrity failure on unchanged content: {run.stderr[-500:]}")
        self._say(f"    failed: {category}: {(result or {}).get('error')}")
        return False

    def _check_after_kill(
        self, plan: _Plan, out: Path, right: set[str], versions: Mapping[str, bytes]
    ) -> list[tuple[int, int]]:
        """After a kill: the output is absent or right; the journal claims only true bytes.

        Returns the ranges the journal vouches for (to check that the next run resumes).
        """
        if out.exists() and _sha_file(out) not in right:
            self.stats.wrong_files += 1
            self._violate(plan, "WRONG FILE at the output path after a kill")
        part = out.with_name(out.name + ".modelhaul.part")
        journal = out.with_name(out.name + ".modelhaul.journal")
        try:
            state = json.loads(journal.read_bytes())
        except FileNotFoundError:
            return []
        except ValueError as exc:
            self._violate(plan, f"the journal is not valid JSON after a kill: {exc}")
            return []
        done = [(int(s), int(e)) for s, e in state.get("done", [])]
        if not done:
            return []
        data = versions.get(state.get("etag") or "")
        if data is None:
            self._violate(plan, f"the journal names an ETag the origin never sent: {state}")
            return []
        if state.get("size") != len(data):
            self._violate(plan, f"journal size {state.get('size')} for {len(data)} bytes")
            return []
        try:
            with open(part, "rb") as f:
                for start, end in done:
                    f.seek(start)
                    if f.read(end - start) != data[start:end]:
                        self._violate(plan, f"journal claims [{start}, {end}) but holds others")
                        return []
        except FileNotFoundError:
            return []  # a journal without its partial file only costs the resume
        return done

    def _check_resume(self, plan: _Plan, run: _Run, held: list[tuple[int, int]]) -> None:
        """A run after a kill must not ask again for what the journal held (a lost resume)."""
        if not held:
            return
        every = self.origin.requests_for(plan.name)
        records = every[run.first_request :]
        kinds = {fault_kind(r.fault) for r in records}
        gets = sum(1 for r in every if r.method == "GET")
        if kinds & RESTART_KINDS or (plan.change_after is not None and gets > plan.change_after):
            return  # a clean restart was due
        again = sum(_overlap(_requested(r), held) for r in records if r.method == "GET")
        if again:
            self._violate(plan, f"re-run asked again for {again} B the journal held: a lost resume")
        else:
            self.stats.journal_resumes += 1

    # -------------------------------------------------------------- accounting

    def _account(self, plan: _Plan, final: bytes, discarded: bool) -> None:
        """Faults that took effect, bytes served, and what was served more than once, by cause."""
        stats = self.stats
        records = self.origin.requests_for(plan.name)
        for r in records:
            kind = fault_kind(r.fault)
            if kind is not None:
                stats.faults[kind] += 1
        hops = sum(len(self.origin.requests_for(f"{plan.name}.hop{h}")) for h in (1, 2))
        if hops:
            stats.faults["redirect"] += hops
        if plan.change_after is not None and len(records) > plan.change_after:
            stats.faults["content_change"] += 1
        served = [r.served for r in records if r.served is not None]
        total = sum(e - s for s, e in served)
        twice = total - _union_size(served)
        stats.bytes_files += len(final)
        stats.bytes_served += total
        kinds = {fault_kind(r.fault) for r in records}
        if plan.change_after is not None and len(records) > plan.change_after:
            kinds.add("content_change")
        if kinds & RESTART_KINDS:
            cause = "restart (file changed or Range not honoured)"
        elif discarded:
            cause = "checksum failure (bytes discarded, fetched again)"
        elif plan.kills:
            cause = "kill (" + "+".join(sorted({k for k, _ in plan.kills})) + ")"
        else:
            cause = "other faults (drops, stalls, stealing)"
        stats.refetched[cause] += twice
        self._say(
            f"    served {total} B for {len(final)} B: {twice} B twice ({cause}); {_spans(records)}"
        )

    def _violate(self, plan: _Plan, what: str) -> None:
        text = f"download {plan.index} ({plan.name}, {plan.size} B): {what}"
        self.stats.violations.append(text)
        self._say("    VIOLATION " + text)

    def _say(self, text: str) -> None:
        if self.log is not None:
            print(text, file=self.log, flush=True)


def _requested(r: RequestRecord) -> tuple[int, int]:
    header = r.range_header
    if not header or not header.startswith("bytes="):
        return (0, 2**62)
    first, _, last = header[6:].partition("-")
    if not first:
        return (0, 0)
    return int(first), int(last) + 1 if last else 2**62


def _spans(records: Iterable[RequestRecord]) -> str:
    """Requests in brief, for the verbose log: status, range asked, range served, fault."""
    out = []
    for r in records:
        kind = fault_kind(r.fault) or ""
        out.append(f"{r.status}:{r.range_header or '-'}->{r.served}{':' + kind if kind else ''}")
    return " ".join(out)


def _overlap(span: tuple[int, int], held: Iterable[tuple[int, int]]) -> int:
    start, end = span
    return sum(max(0, min(end, e) - max(start, s)) for s, e in held)


def _union_size(spans: Iterable[tuple[int, int]]) -> int:
    total, reach = 0, -1
    for s, e in sorted(spans):
        if e <= reach:
            continue
        total += e - max(s, reach)
        reach = e
    return total


def _category(run: _Run) -> str | None:
    error = (run.result or {}).get("error")
    return error.get("category") if isinstance(error, dict) else None


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def _last_result(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == "result":
                return record
    return None


@contextlib.contextmanager
def soak_environment(root: Path) -> Iterator[dict[str, str]]:
    """Environment for the CLI: a private HOME and state directory, no proxies."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        env.pop(var, None)
    env.update(
        HOME=str(home),
        MODELHAUL_STATE_DIR=str(home / ".cache" / "modelhaul"),
        NO_PROXY="127.0.0.1,127.0.0.2,localhost",
    )
    yield env


def run_soak(
    cfg: SoakConfig,
    work: Path,
    *,
    origin: Origin | None = None,
    env: Mapping[str, str] | None = None,
    log: TextIO | None = None,
) -> SoakStats:
    """Run a soak in ``work``; starts (and stops) its own origin unless one is given."""
    with contextlib.ExitStack() as stack:
        if origin is None:
            origin = stack.enter_context(Origin())
        if env is None:
            env = stack.enter_context(soak_environment(work))
        return Soak(origin, work / "downloads", cfg, env=env, log=log).run()


def _parse_bytes(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": KiB, "M": MiB, "G": 1024 * MiB}.get(text[-1:], 1)
    return int(float(text.rstrip("KMG")) * mult)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--downloads", type=int, default=200)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-size", type=_parse_bytes, default=300 * MiB, metavar="BYTES")
    p.add_argument("--retries", type=int, default=4)
    p.add_argument("--timeout", type=float, default=1.0, metavar="SECONDS")
    p.add_argument("--max-faults", type=int, default=4, metavar="N", help="per download")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per download")
    args = p.parse_args(argv)
    cfg = SoakConfig(
        downloads=args.downloads,
        kills=args.kills,
        seed=args.seed,
        max_size=args.max_size,
        retries=args.retries,
        timeout_s=args.timeout,
        max_faults=args.max_faults,
    )
    work = Path(tempfile.mkdtemp(prefix="modelhaul-soak-"))
    try:
        stats = run_soak(cfg, work, log=sys.stderr if args.verbose else None)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    print(f"soak: seed {cfg.seed}, max size {_mib(cfg.max_size)}")
    print(stats.table())
    for v in stats.violations:
        print("VIOLATION", v)
    return 1 if stats.violations or stats.wrong_files else 0


if __name__ == "__main__":
    sys.exit(main())
