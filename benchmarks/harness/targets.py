"""Targets of issue 15 (and the older B and D ones), each beside what this run measured."""

from __future__ import annotations

from .common import RSS_TARGET
from .limiter import LimiterRun
from .runner import Summary

Row = tuple[str, str, str]  # target, measured, met / not met / n/a


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


class _Finder:
    def __init__(self, sums: dict[str, list[Summary]]) -> None:
        self.sums = sums

    def get(self, case: str, tool: str) -> Summary | None:
        s = next((s for s in self.sums.get(case, []) if s.tool == tool), None)
        return s if s and s.ok else None


def _speed(f: _Finder, label: str, case: str, peer: str, mh: str, need: float) -> Row | None:
    """peer wall / modelhaul wall >= need."""
    if case not in f.sums:
        return None
    a, b = f.get(case, mh), f.get(case, peer)
    if not (a and b):
        return (label, "n/a (missing or failed run)", "n/a")
    r = b.wall / a.wall
    return (label, f"{r:.2f}× ({b.wall:.2f} s vs {a.wall:.2f} s)", _verdict(r >= need))


def _info(label: str, slower: Summary, faster: Summary, detail: str) -> Row:
    """A ratio reported beside the targets, judged against none."""
    return (label, f"{slower.wall / faster.wall:.2f}× ({detail})", "info")


def _case_a(f: _Finder, sha_gib_s: float | None) -> list[Row]:
    if "A" not in f.sums:
        return []
    rows: list[Row] = []
    mh, floor = f.get("A", "modelhaul"), f.get("A", "floor-8+sha256")
    durable = f.get("A", "floor-8+sha256+fsync")
    label = "A 4 GiB to disk: modelhaul time ≤ 1.1× floor-8+sha256"
    if mh and floor:
        r = mh.wall / floor.wall
        side = f"; vs floor-8+sha256+fsync {mh.wall / durable.wall:.2f}×" if durable else ""
        rows.append(
            (label, f"{r:.2f}× ({mh.wall:.2f} s vs {floor.wall:.2f} s){side}", _verdict(r <= 1.1))
        )
    else:
        rows.append((label, "n/a (missing or failed run)", "n/a"))
    row = _speed(f, "A: modelhaul ≥ 1.3× curl", "A", "curl", "modelhaul", 1.3)
    if row:
        rows.append(row)
    curl = f.get("A", "curl")
    if floor and curl:
        # The floor is receive + write + SHA-256 and nothing else: no verifying tool can beat it
        # by much, so when it is not 1.3x curl, "1.3x curl" is out of this machine's reach.
        label = "A: reach, floor-8+sha256 vs curl (the best a verifying tool can be)"
        rows.append(_info(label, curl, floor, f"{floor.wall:.2f} s vs curl {curl.wall:.2f} s"))
    if mh and curl and sha_gib_s:
        # One file's SHA-256 is one sequential pass on one core: no tool that checks it ends
        # sooner than that pass over every byte, at the fastest rate this run measured.
        label = "A: reach, SHA-256 of the payload alone on one core vs curl's time / 1.3"
        hash_s = mh.payload / 2**30 / sha_gib_s
        rows.append(
            (
                label,
                f"{hash_s:.2f} s at {sha_gib_s:.2f} GiB/s vs {curl.wall / 1.3:.2f} s",
                "info: out of reach" if hash_s > curl.wall / 1.3 else "info: within reach",
            )
        )
    hf = f.get("A", "hf_transfer-16")
    if mh and hf:
        label = "A: hf_transfer-16 beside it (verifies nothing)"
        rows.append(_info(label, hf, mh, f"{hf.wall:.2f} s"))
    return rows


def _case_c(f: _Finder) -> list[Row]:
    if "C" not in f.sums:
        return []
    mh = f.get("C", "modelhaul")
    peers = [f.get("C", t) for t in ("curl-parallel-8", "aria2c-j8", "requests-8threads")]
    ok = [p for p in peers if p]
    label = "C 300 files, connection + request RTT: ≥ 1.2× best of curl/aria2c/requests"
    if not (mh and ok):
        return [(label, "n/a (missing or failed run)", "n/a")]
    best = min(ok, key=lambda s: s.wall)
    r = best.wall / mh.wall
    return [
        (
            label,
            f"{r:.2f}× vs {best.tool} ({best.wall:.2f} s vs {mh.wall:.2f} s)",
            _verdict(r >= 1.2),
        )
    ]


def _case_f(f: _Finder) -> list[Row]:
    if "F" not in f.sums:
        return []
    rows: list[Row] = []
    row = _speed(
        f, "F pull: ≥ 2× snapshot_download", "F", "snapshot_download", "modelhaul-pull", 2.0
    )
    if row:
        rows.append(row)
    row = _speed(f, "F pull vs hf download (info)", "F", "hf-download", "modelhaul-pull", 0)
    if row:
        rows.append((row[0], row[1], "info"))
    pull, get = f.get("F", "modelhaul-pull"), f.get("F", "modelhaul-get-sha256")
    label = "F: pull CPU-s/GiB within 10 % of get --sha256 (same bytes)"
    if pull and get:
        r = pull.cpu_per_gib / get.cpu_per_gib
        rows.append(
            (
                label,
                f"{pull.cpu_per_gib:.2f} vs {get.cpu_per_gib:.2f} ({(r - 1) * 100:+.0f} %)",
                _verdict(r <= 1.1),
            )
        )
    else:
        rows.append((label, "n/a (missing or failed run)", "n/a"))
    return rows


def _rss(f: _Finder) -> list[Row]:
    mh = [(s.rss, f"{k} {s.tool}") for k, v in f.sums.items() for s in v if s.modelhaul and s.ok]
    if not mh:
        return []
    top, where = max(mh)
    return [
        (
            "peak RSS < 150 MB, every modelhaul run",
            f"{top / 1e6:.0f} MB ({where})",
            _verdict(top < RSS_TARGET),
        )
    ]


def _limiter(limiter: list[LimiterRun]) -> list[Row]:
    rows: list[Row] = []
    for name in sorted({r.tool for r in limiter if r.tool.startswith("modelhaul")}):
        rs = [r for r in limiter if r.tool == name]
        if not all(r.ok for r in rs):
            rows.append((f"D {name}: limiter", "failed run(s)", _verdict(False)))
            continue
        worst = max(rs, key=lambda r: abs(r.err_pct))
        rows.append(
            (
                f"D {name}: aggregate within 5 % of 20 MiB/s",
                f"{worst.err_pct:+.1f} % (worst rep)",
                _verdict(all(abs(r.err_pct) <= 5 for r in rs)),
            )
        )
        fairs = [r.min_share_of_fair for r in rs if r.min_share_of_fair is not None]
        if fairs:
            rows.append(
                (
                    f"D {name}: no download < ½ fair share",
                    f"min share = {min(fairs):.2f}× fair",
                    _verdict(min(fairs) >= 0.5),
                )
            )
    return rows


def targets_table(
    sums: dict[str, list[Summary]],
    limiter: list[LimiterRun] | None,
    quick: bool,
    *,
    sha_gib_s: float | None = None,
) -> str:
    """``sha_gib_s``: SHA-256 on one core (report.sha256_rate), for case A's reach."""
    f = _Finder(sums)
    rows = _case_a(f, sha_gib_s) + _case_c(f)
    row = _speed(f, "E HTTPS: ≥ 1.3× aria2c -x16", "E", "aria2c-x16", "modelhaul", 1.3)
    rows += [row] if row else []
    rows += _case_f(f) + _rss(f)
    older: list[Row] = []
    for label, peer, need in (
        ("B capped: ≥ 1.1× hf_transfer-16", "hf_transfer-16", 1.1),
        ("B capped: ≥ 1.3× aria2c -x16", "aria2c-x16", 1.3),
    ):
        row = _speed(f, label, "B", peer, "modelhaul", need)
        older += [row] if row else []
    older += _limiter(limiter or [])
    if not rows and not older:
        return ""
    head = "### Targets (issue 15; modelhaul default settings)\n\n"
    if quick:
        head += "_Quick run: smaller files, 1 rep — indicative only._\n\n"
    table = "| target | measured | result |\n|---|---|---|\n"
    body = head + table + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)
    if older:
        body += "\nEarlier targets, kept:\n\n" + table
        body += "".join(f"| {a} | {b} | {c} |\n" for a, b, c in older)
    return body
