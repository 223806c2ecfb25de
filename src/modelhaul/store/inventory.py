"""What is in the store and what to do about it: list, remove, pin, and evict to a size.

The cache folders are scanned with huggingface_hub's ``scan_cache_dir`` (so models fetched by
other tools are listed too); modelhaul's StateDB adds pins, last-used times and known
corruption. Sizes count each blob once per model, as on disk.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..disk.partials import is_downloading
from ..errors import Category, InvalidInput, ModelhaulError, human_bytes
from ..policy.paths import JOURNAL_SUFFIX, PART_SUFFIX
from ..policy.validate import check_repo_id, parse_repo_folder, split_model_ref
from ..remedies import LIBRARY_WORDS, Remedy, Words, say
from .health import judge_by_partials, judge_model, partial_files
from .repo import NotInStore, RepoStore
from .statedb import StateDB


class Busy(ModelhaulError):
    category = Category.CLIENT_ERROR
    default_remedy = Remedy.FORCE


class Pinned(ModelhaulError):
    """Removing a pinned model takes an explicit force: pinning says 'keep this'."""

    category = Category.CLIENT_ERROR
    default_hint = "Unpin it first, or remove it with force."


@dataclass(frozen=True, slots=True)
class StoredModel:
    name: str
    repo_type: str
    revisions: tuple[str, ...]  # ref names (main, v1.0); commits that no ref names
    commits: tuple[str, ...]
    files: int
    size: int
    status: str  # ready | partial | downloading | corrupt
    pinned: bool
    last_used: float | None
    path: Path
    partial_bytes: int = 0  # received so far by unfinished downloads (not their preallocation)
    files_listed: int | None = None  # what the revision should hold, when a listing says so
    partial_disk_bytes: int = 0  # what unfinished downloads occupy on disk (freed by removal)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "repo_type": self.repo_type,
            "revisions": list(self.revisions),
            "commits": list(self.commits),
            "files": self.files,
            "size": self.size,
            "status": self.status,
            "pinned": self.pinned,
            "last_used": _iso(self.last_used),
            "last_used_ts": self.last_used,
            "path": str(self.path),
            "partial_bytes": self.partial_bytes,
            "files_listed": self.files_listed,
        }


@dataclass(frozen=True, slots=True)
class Partial:
    path: Path
    size: int
    age_s: float
    model: str | None


@dataclass(slots=True)
class GcResult:
    evicted: list[StoredModel] = field(default_factory=list)
    partials: list[Partial] = field(default_factory=list)
    freed: int = 0
    size_before: int = 0
    size_after: int = 0
    dry_run: bool = False
    unmet: bool = False  # pinned or busy models alone exceed the cap

    def to_dict(self) -> dict[str, object]:
        return {
            "event": "result",
            "status": "completed",
            "dry_run": self.dry_run,
            "evicted": [{"name": m.name, "size": m.size} for m in self.evicted],
            "partials_removed": [{"path": str(p.path), "size": p.size} for p in self.partials],
            "freed": self.freed,
            "size_before": self.size_before,
            "size_after": self.size_after,
            "fits": not self.unmet,
        }


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_model_ref(text: str) -> tuple[str, str, str | None]:
    """``ORG/NAME[@REV]``, ``hf://[datasets/]ORG/NAME[@REV]`` -> (repo_type, repo_id, revision).

    The revision is not checked here: it may be a commit prefix, matched against the store.
    """
    repo_type, name, rev = split_model_ref(text)
    return repo_type, check_repo_id(name), rev


class Inventory:
    """The store seen as a list of models, with the actions that change it."""

    def __init__(self, root: Path, db: StateDB, *, lock_dir: Path | None = None) -> None:
        self.root = root
        self.db = db
        self.lock_dir = lock_dir

    # ------------------------------------------------------------------ listing

    def scan(self) -> list[StoredModel]:
        # Here, not at the top: a pull records its use through this module and must not load
        # huggingface_hub (0.2-0.3 s) for it.
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound

        try:
            info = scan_cache_dir(self.root)
        except CacheNotFound:
            return []
        facts = self.db.facts()
        models = []
        for repo in info.repos:
            f = facts.get((repo.repo_type, repo.repo_id))
            refs: set[str] = set()
            for rev in repo.revisions:
                refs.update(rev.refs)
            named = {c for rev in repo.revisions for c in [rev.commit_hash] if rev.refs}
            unnamed = sorted(
                r.commit_hash[:12] for r in repo.revisions if r.commit_hash not in named
            )
            try:
                rs = RepoStore(self.root, repo.repo_id, repo.repo_type)
                health = judge_model(rs, repo.repo_path, f, self.lock_dir)
            except InvalidInput:  # a name huggingface_hub allows and modelhaul does not
                health = judge_by_partials(repo.repo_path, self.lock_dir)
            last_used = f.last_used if f and f.last_used is not None else repo.last_accessed
            models.append(
                StoredModel(
                    name=repo.repo_id,
                    repo_type=repo.repo_type,
                    revisions=tuple(sorted(refs)) + tuple(unnamed),
                    commits=tuple(sorted(r.commit_hash for r in repo.revisions)),
                    files=max(
                        max((len(r.files) for r in repo.revisions), default=0), health.present
                    ),
                    size=repo.size_on_disk,
                    status=health.status,
                    pinned=bool(f and f.pinned),
                    last_used=last_used,
                    path=repo.repo_path,
                    partial_bytes=health.received,
                    files_listed=health.listed,
                    partial_disk_bytes=health.on_disk,
                )
            )
        models.extend(self._unscanned({(m.repo_type, m.name) for m in models}, facts))
        return sorted(models, key=lambda m: (m.repo_type != "model", m.name.lower()))

    def _unscanned(self, seen: set[tuple[str, str]], facts: dict) -> list[StoredModel]:
        """Repo folders huggingface_hub skipped (no snapshot yet, or a snapshot it calls
        corrupt, such as a link to a missing blob)."""
        out = []
        if not self.root.is_dir():
            return out
        for d in self.root.iterdir():
            parsed = parse_repo_folder(d.name)
            if parsed is None or parsed in seen or not d.is_dir():
                continue
            repo_type, repo_id = parsed
            f = facts.get(parsed)
            try:
                health = judge_model(RepoStore(self.root, repo_id, repo_type), d, f, self.lock_dir)
            except InvalidInput:  # a folder name no model of ours could have
                continue
            out.append(
                StoredModel(
                    name=repo_id,
                    repo_type=repo_type,
                    revisions=(),
                    commits=(),
                    files=health.present,
                    size=_blobs_size(d),
                    # huggingface_hub could not read it: never ready, whatever the files say
                    status="partial" if health.status == "ready" else health.status,
                    pinned=bool(f and f.pinned),
                    last_used=f.last_used if f else None,
                    path=d,
                    partial_bytes=health.received,
                    files_listed=health.listed,
                    partial_disk_bytes=health.on_disk,
                )
            )
        return out

    def find(self, repo_id: str, repo_type: str = "model") -> StoredModel:
        for m in self.scan():
            if m.name == repo_id and m.repo_type == repo_type:
                return m
        raise NotInStore(f"{repo_id} is not in the store at {self.root}")

    def total_size(self, models: list[StoredModel] | None = None) -> int:
        return sum(m.size for m in (models if models is not None else self.scan()))

    def disk_free(self) -> int:
        probe = self.root if self.root.exists() else self.root.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return shutil.disk_usage(probe).free

    # ------------------------------------------------------------------ changing

    def touch(self, repo_id: str, repo_type: str = "model") -> None:
        self.db.touch(repo_type, repo_id)

    def set_pinned(self, repo_id: str, pinned: bool, repo_type: str = "model") -> StoredModel:
        model = self.find(repo_id, repo_type)
        self.db.set_pinned(repo_type, repo_id, pinned)
        return model

    def remove(
        self,
        repo_id: str,
        revision: str | None = None,
        *,
        repo_type: str = "model",
        force: bool = False,
    ) -> int:
        """Remove a model or one revision with its now-unreferenced blobs; returns bytes freed."""
        model = self.find(repo_id, repo_type)
        if model.status == "downloading" and not force:
            raise Busy(f"{repo_id} is downloading right now")
        if model.pinned and not force:
            raise Pinned(f"{repo_id} is pinned")
        if revision is None:
            freed = model.size + model.partial_disk_bytes
            shutil.rmtree(model.path, ignore_errors=False)
            shutil.rmtree(self.root / ".locks" / model.path.name, ignore_errors=True)
            self.db.forget(repo_type, repo_id)
            return freed
        commit = self._commit_of(model, revision)
        from huggingface_hub import scan_cache_dir  # see scan()

        info = scan_cache_dir(self.root)
        strategy = info.delete_revisions(commit)
        freed = strategy.expected_freed_size
        strategy.execute()
        rs = RepoStore(self.root, repo_id, repo_type)
        for name in (f"files-{commit}.json", f"files-{commit}.lock"):
            (rs.meta / name).unlink(missing_ok=True)
        rs.tree_path(commit).unlink(missing_ok=True)
        for blob in strategy.blobs:
            rs.forget_record(Path(blob).name)
        if not model.path.exists():
            self.db.forget(repo_type, repo_id)
        return freed

    def _commit_of(self, model: StoredModel, revision: str) -> str:
        rs = RepoStore(self.root, model.name, model.repo_type)
        commit = rs.read_ref(revision)
        if commit and commit in model.commits:
            return commit
        matches = (
            [c for c in model.commits if c.startswith(revision.lower())]
            if len(revision) >= 7
            else []
        )
        if len(matches) == 1:
            return matches[0]
        raise NotInStore(
            f"revision {revision!r} of {model.name} is not in the store",
            hint=f"Stored revisions: {', '.join(model.revisions) or 'none'}.",
        )

    def partials(self, *, older_than_s: float = 0.0) -> list[Partial]:
        now = time.time()
        out = []
        if not self.root.is_dir():
            return out
        for d in self.root.iterdir():
            parsed = parse_repo_folder(d.name)
            if parsed is None:
                continue
            for part in partial_files(d):
                try:
                    st = part.stat()
                except OSError:
                    continue
                age = now - st.st_mtime
                if age < older_than_s:
                    continue
                if self.lock_dir is not None and is_downloading(self.lock_dir, part):
                    continue
                out.append(Partial(part, st.st_blocks * 512, age, parsed[1]))
        return out

    def lru(self, models: list[StoredModel], *, keep: Iterable[str] = ()) -> list[StoredModel]:
        """Models that may be evicted, least recently used first."""
        kept = set(keep)
        candidates = [
            m for m in models if not m.pinned and m.status != "downloading" and m.name not in kept
        ]
        return sorted(candidates, key=lambda m: (m.last_used or 0.0, m.name))

    def gc(
        self,
        max_size: int | None,
        *,
        dry_run: bool = False,
        partial_age_s: float = 7 * 24 * 3600,
        keep: Iterable[str] = (),
    ) -> GcResult:
        """Evict LRU unpinned models until the store fits ``max_size``; drop stale partials."""
        models = self.scan()
        result = GcResult(dry_run=dry_run, size_before=self.total_size(models))
        for p in self.partials(older_than_s=partial_age_s):
            result.partials.append(p)
            result.freed += p.size
            if not dry_run:
                p.path.unlink(missing_ok=True)
                p.path.with_name(p.path.name.replace(PART_SUFFIX, JOURNAL_SUFFIX)).unlink(
                    missing_ok=True
                )
        size = result.size_before
        if max_size is not None:
            for m in self.lru(models, keep=keep):
                if size <= max_size:
                    break
                if not dry_run:
                    try:
                        self.remove(m.name, repo_type=m.repo_type)
                    except (Pinned, Busy):  # pinned or started since the scan: it stays
                        continue
                result.evicted.append(m)
                size -= m.size
                result.freed += m.size
            result.unmet = size > max_size
        result.size_after = size
        return result

    def suggest_lru(
        self, short: int, *, keep: Iterable[str] = (), words: Words = LIBRARY_WORDS
    ) -> str:
        """A hint naming least recently used models that would free ``short`` bytes, in
        ``words`` (a face's: the CLI's name its gc command)."""
        picked, freed = [], 0
        models = self.scan()
        for m in self.lru(models, keep=keep):
            if freed >= short:
                break
            picked.append(m)
            freed += m.size
        if not picked:
            return say(words, Remedy.NOTHING_TO_EVICT)
        names = ", ".join(
            f"{m.name} ({human_bytes(m.size)}, last used {_iso(m.last_used) or 'never'})"
            for m in picked
        )
        target = max(0, self.total_size(models) - freed)
        remedy = Remedy.EVICT_ENOUGH if freed >= short else Remedy.EVICT_SOME
        return say(words, remedy, names=names, cap_bytes=target)


def _blobs_size(repo_path: Path) -> int:
    total = 0
    blobs = repo_path / "blobs"
    if blobs.is_dir():
        for p in blobs.iterdir():
            if p.is_file() and len(p.name) in (40, 64):
                total += p.stat().st_size
    return total


def lru_suggestion(
    root: Path,
    short: int,
    *,
    words: Words = LIBRARY_WORDS,
    db_path: Path | None = None,
    lock_dir: Path | None = None,
) -> str:
    """Used by 'pull' when the disk is short: which models to evict, in ``words``."""
    db = StateDB(db_path or default_db_path(root))
    try:
        return Inventory(root, db, lock_dir=lock_dir).suggest_lru(short, words=words)
    finally:
        db.close()


def default_db_path(root: Path, explicit: str | None = None) -> Path:
    """The state database: ``explicit`` (MODELHAUL_DB, read by the CLI), else
    ``modelhaul.sqlite`` beside the cache root."""
    return Path(explicit) if explicit else root.parent / "modelhaul.sqlite"
