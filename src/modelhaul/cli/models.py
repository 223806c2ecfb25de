"""``modelhaul pull`` and ``modelhaul verify``: models into the Hugging Face cache layout."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DownloadConfig, ManagerConfig
from ..errors import (
    Category,
    InvalidInput,
    ModelhaulError,
    NetworkError,
    RetriesExhausted,
    human_bytes,
    plural,
)
from ..events import EventKind, FileEvent, FilePhase, State, TaskEvent
from ..policy.urls import same_host
from ..sources.hf import (
    HubRef,
    HubSource,
    default_token,
    explain_download_error,
    parse_hf_uri,
    resolve_url,
)
from ..sources.manifest import format_of, load_manifest_file
from ..sources.model import ModelFile, ModelSpec
from ..store.chunks import CHUNK_BYTES
from ..store.listing import local_files
from ..store.repo import NotInStore, RepoStore, hf_cache_root
from . import ray_pull, via_server
from .options import add_transfer_options, download_config, state_dir
from .output import make_renderer
from .peers import add_peer_options, peer_options
from .render import Renderer, error_dict, interrupted_error, print_error

if TYPE_CHECKING:  # the engine and aiohttp: imported where the commands run, not to parse
    from ..manager.downloads import DownloadManager
    from ..store.pull import ModelPuller, PullResult
    from ..store.verify import VerifyReport


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "pull",
        help="fetch a model (hf://ORG/NAME[@REV] or a manifest) into the Hugging Face cache",
        description="Fetch only the files of a model that are missing or fail verification.",
    )
    p.add_argument(
        "source", metavar="SOURCE", help="hf://ORG/NAME[@REV], ORG/NAME, or a manifest path/URL"
    )
    p.add_argument(
        "--include", action="append", default=[], metavar="GLOB", help="only files matching"
    )
    p.add_argument(
        "--exclude", action="append", default=[], metavar="GLOB", help="skip files matching"
    )
    p.add_argument("--local-dir", metavar="DIR", help="also place plain files in DIR (hard links)")
    p.add_argument(
        "--max-store-size",
        metavar="SIZE",
        help="evict least recently used unpinned models first so the store stays under SIZE "
        "(default: $MODELHAUL_MAX_STORE_SIZE, else no cap)",
    )
    p.add_argument(
        "-j", "--jobs", type=int, metavar="N", help="files in flight (default: adaptive)"
    )
    add_transfer_options(p)
    add_peer_options(p)
    via_server.add_via_server_option(p)
    ray_pull.add_ray_option(p)
    p.set_defaults(run=run_pull)

    v = sub.add_parser(
        "verify",
        help="check every file of a stored model; --repair refetches only what is bad",
        description="Hash every file of a model in the Hugging Face cache and report the ones "
        "that are missing or do not match their checksum (exit status 1 if any). With "
        "--repair, refetch them, only the bad chunks of a damaged file.",
    )
    v.add_argument("model", metavar="MODEL", help="ORG/NAME[@REVISION] (hf://ORG/NAME also works)")
    v.add_argument(
        "--repair", action="store_true", help="refetch bad or missing files (only bad chunks)"
    )
    add_transfer_options(v)
    v.set_defaults(run=run_verify)


@dataclass(frozen=True, slots=True)
class Environment:
    """What the Hugging Face ecosystem's environment variables say, read once at the edge."""

    cache_root: Path
    endpoint: str
    offline: bool
    symlinks: bool

    @property
    def token(self) -> str | None:
        """Read when the Hub is asked: a manifest pull never loads huggingface_hub for it."""
        return default_token()

    @classmethod
    def read(cls) -> Environment:
        env = os.environ
        offline = any(
            env.get(v, "").strip().lower() in ("1", "true", "yes", "on")
            for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
        )
        no_links = env.get("HF_HUB_DISABLE_SYMLINKS", "").strip().lower() in (
            "1",
            "true",
            "yes",
            "on",
        )
        return cls(
            cache_root=hf_cache_root(env),
            endpoint=(env.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/"),
            offline=offline,
            symlinks=not no_links,
        )


def manager_for(args: argparse.Namespace, config: DownloadConfig) -> DownloadManager:
    from ..manager.downloads import DownloadManager

    jobs = getattr(args, "jobs", None)
    if jobs is not None and not 1 <= jobs <= 256:
        raise InvalidInput(f"-j must be between 1 and 256, got {jobs}")
    mconf = (
        ManagerConfig(max_active_files=jobs, max_small_files=jobs, adaptive=False)
        if jobs
        else ManagerConfig()
    )
    return DownloadManager(mconf, download_config=config, state_dir=state_dir())


async def resolve_source(text: str, env: Environment, config: DownloadConfig) -> ModelSpec | HubRef:
    """A manifest is parsed here; an hf:// reference is returned for the caller to resolve."""
    if text.startswith(("http://", "https://")):
        return await fetch_manifest(text, config)
    path = Path(text)
    if format_of(text) is not None or path.is_file():
        if not path.is_file():
            raise InvalidInput(f"manifest {text} does not exist")
        return load_manifest_file(path)
    return parse_hf_uri(text)


async def fetch_manifest(url: str, config: DownloadConfig) -> ModelSpec:
    from ..sources.manifest import fetch_manifest as fetch

    return await fetch(url, timeouts=config.timeouts, headers=dict(config.headers))


def _renderer_hook(renderer: Renderer, labels: dict[str, str], held: dict[str, bool]) -> Any:
    """Show progress, and keep in ``held`` each file in flight: whether its partial data can
    be resumed (the engine's ``resumable``), for what an interruption says."""

    def on_event(ev: TaskEvent) -> None:
        label = labels.get(ev.task_id, ev.task_id)
        if ev.kind is EventKind.PROGRESS and ev.progress is not None:
            renderer.progress(label, ev.progress)
            held[label] = ev.progress.resumable
        elif ev.kind is EventKind.STATE and ev.state is State.VERIFYING:
            renderer.verifying(label)
        elif ev.kind is EventKind.STATE and ev.state.final:
            held.pop(label, None)

    return on_event


def exit_status(exc: ModelhaulError) -> int:
    if exc.category is Category.INVALID_INPUT:
        return 2
    if exc.category is Category.CANCELLED:
        return 130
    return 1


def _fail(renderer: Renderer, exc: ModelhaulError) -> int:
    """Stop the bars, say what went wrong and what to try, end with the result line; the exit
    status."""
    renderer.stop()
    print_error(exc)
    renderer.result(_failed(exc))
    return exit_status(exc)


def _cancelled(args: argparse.Namespace, renderer: Renderer, held: dict[str, bool]) -> None:
    """Stop the bars (the manager has closed: each partial file is kept or dropped), then say what
    the interruption left behind: the result line, and main's line on stderr."""
    renderer.stop()
    err = interrupted_error(held)
    renderer.result(
        {"event": "result", "status": "cancelled", "path": None, "error": err.to_dict()}
    )
    args.interrupted = err.message


async def run_pull(args: argparse.Namespace) -> int:
    if ray_pull.wants_ray(args):
        return await ray_pull.run_ray_pull(args)
    if (code := await via_server.maybe_via_server(args)) is not None:
        return code
    # Created first: --json promises a result line last, even for a bad command line.
    renderer = make_renderer(json_mode=args.json, quiet=args.quiet)
    held: dict[str, bool] = {}
    try:
        env = Environment.read()
        config = download_config(args)
        local_dir = Path(args.local_dir) if args.local_dir else None
        result = await _pull(args, env, config, renderer, local_dir, held)
        _touch(result.repo_id)
    except ModelhaulError as exc:
        return _fail(renderer, exc)
    except asyncio.CancelledError:
        _cancelled(args, renderer, held)
        raise
    renderer.stop()
    if not result.offline and not args.json and not args.quiet:
        renderer.notice(
            f"{result.repo_id}@{result.commit[:12]}: {len(result.fetched)} fetched, "
            f"{len(result.present)} already present -> {result.snapshot}"
        )
    renderer.result(result.to_dict())
    return 0


async def _pull(
    args: argparse.Namespace,
    env: Environment,
    config: DownloadConfig,
    renderer: Renderer,
    local_dir: Path | None,
    held: dict[str, bool],
) -> PullResult:
    from ..store.pull import ModelPuller

    source = await resolve_source(args.source, env, config)
    async with manager_for(args, config) as mgr:
        puller = ModelPuller(env.cache_root, mgr, symlinks=env.symlinks, **peer_options(args))
        if isinstance(source, HubRef):
            if env.offline:
                return _offline(puller, source, None, renderer)
            hub = HubSource(
                endpoint=env.endpoint,
                token=env.token,
                retry=config.retry,
                # With a complete copy at hand, an unreachable Hub is not worth waiting for.
                network_retries=0 if _cached_or_none(puller, source) is not None else None,
                timeouts=config.timeouts,
            )
            try:
                spec = await hub.resolve(source)
            except (NetworkError, RetriesExhausted) as exc:
                if exc.category not in (Category.NETWORK, Category.TIMEOUT):
                    raise
                return _offline(puller, source, exc, renderer)
        else:
            spec = source
        spec = spec.select(args.include, args.exclude)
        if not spec.files:
            raise InvalidInput("no file of the model matches --include/--exclude")
        labels: dict[str, str] = {}
        by_path = {f.path: f for f in spec.files}
        rs = RepoStore(env.cache_root, spec.repo_id, spec.repo_type)
        mgr.subscribe(_renderer_hook(renderer, labels, held))
        renderer.start()

        def on_file(event: FileEvent) -> None:
            path = event.path
            if event.download_id is not None:
                labels[event.download_id] = path
            elif event.phase in (FilePhase.MIRROR, FilePhase.WAITING):
                verb = "trying a mirror" if event.phase is FilePhase.MIRROR else "waiting"
                renderer.notice(f"{path}: {verb} ({event.reason})")
            elif event.phase is FilePhase.DONE:
                f = by_path[path]
                record: dict[str, object] = {"status": "completed", "file": path}
                record |= {
                    "path": str(rs.snapshot_file(spec.commit, path)),
                    "size": f.size,
                    "sha256": f.sha256 or f.blob_id,
                    "bytes_from_peers": event.bytes_from_peers or 0,
                    "bytes_from_upstream": event.bytes_from_upstream or 0,
                    "dropped_peers": [d.to_dict() for d in event.dropped_peers],
                }
                renderer.file_done(path, record)

        cap = _store_cap(args)
        if cap is not None:
            _make_room(rs, spec, cap, renderer)
        try:
            return await puller.pull(
                spec, local_dir=local_dir, on_file=on_file, free_hint=_free_hint(env)
            )
        except ModelhaulError as exc:
            if isinstance(source, HubRef):
                raise explain_download_error(exc, source, env.endpoint) from None
            raise


def _store_cap(args: argparse.Namespace) -> int | None:
    from ..policy.units import parse_size

    text = args.max_store_size or os.environ.get("MODELHAUL_MAX_STORE_SIZE")
    return parse_size(text, what="store size cap") if text else None


def _make_room(rs: RepoStore, spec: ModelSpec, cap: int, renderer: Renderer) -> None:
    """With a store cap, evict least recently used unpinned models before fetching."""
    from .store import open_inventory

    blobs = {f.blob_id: f.size for f in spec.files}
    needed = sum(size for blob, size in blobs.items() if not rs.blob_path(blob).is_file())
    if not needed:
        return
    inv = open_inventory()
    if inv.total_size() + needed <= cap:
        return
    result = inv.gc(max(0, cap - needed), keep=[spec.repo_id])
    for m in result.evicted:
        renderer.notice(f"evicted {m.name} ({human_bytes(m.size)}) to stay under the store cap")


def _touch(repo_id: str) -> None:
    """Record the use for least-recently-used eviction; never fatal."""
    from .store import open_inventory

    # The state database is an index; a pull must not fail on it.
    with contextlib.suppress(Exception):
        open_inventory().touch(repo_id)


def _free_hint(env: Environment) -> Any:
    def hint(short: int) -> str:
        try:
            from ..store.inventory import lru_suggestion
            from .words import CLI_WORDS

            return lru_suggestion(env.cache_root, short, words=CLI_WORDS)
        except Exception:  # a hint that cannot be computed must not hide the disk_full error
            return ""

    return hint


def _cached_or_none(puller: ModelPuller, ref: HubRef) -> PullResult | None:
    try:
        return puller.load_cached(ref.repo_id, ref.revision, ref.repo_type)
    except ModelhaulError:
        return None


def _offline(
    puller: ModelPuller, ref: HubRef, cause: ModelhaulError | None, renderer: Renderer
) -> PullResult:
    try:
        result = puller.load_cached(ref.repo_id, ref.revision, ref.repo_type)
    except ModelhaulError as exc:
        if cause is not None:
            raise cause from None
        raise ModelhaulError(
            f"offline mode (HF_HUB_OFFLINE) and {exc.message}",
            hint="Unset HF_HUB_OFFLINE to download it, or pull it on a connected machine first.",
        ) from None
    why = "offline mode (HF_HUB_OFFLINE)" if cause is None else f"the Hub is unreachable: {cause}"
    renderer.notice(
        f"{why}; {ref.repo_id} is complete in the cache, used it without the network "
        f"-> {result.snapshot}"
    )
    return result


def _failed(exc: ModelhaulError) -> dict[str, Any]:
    """The result of a failure, with the guidance print_error gives (as ``get`` has it)."""
    return {"event": "result", "status": "failed", "path": None, "error": error_dict(exc)}


def parse_model_arg(text: str) -> HubRef:
    return parse_hf_uri(text)


async def run_verify(args: argparse.Namespace) -> int:
    renderer = make_renderer(json_mode=args.json, quiet=args.quiet)
    held: dict[str, bool] = {}
    try:
        env = Environment.read()
        ref = parse_model_arg(args.model)
        config = download_config(args)
        report = await _verify(args, env, ref, config, renderer, held)
    except NotInStore as exc:  # the store's words, not the guidance for a web address
        from .store import print_refusal

        renderer.stop()
        print_refusal(exc)
        renderer.result(_failed(exc))
        return 1
    # Ends as run_pull does (a failure rendered, a cancel recorded), each line a shared helper
    # already: the five that stay are the control flow, which a helper would only hide.
    except ModelhaulError as exc:
        return _fail(renderer, exc)
    except asyncio.CancelledError:
        _cancelled(args, renderer, held)
        raise
    renderer.stop()
    for p in report.problems:
        print(f"modelhaul: {_KIND[p.problem]}: {p.path} ({p.detail})", file=sys.stderr)
    if not args.json and not args.quiet:
        for path in report.repaired:
            renderer.notice(f"repaired: {path}")
        renderer.notice(
            f"{report.repo_id}@{report.commit[:12]}: {plural(report.checked, 'file')} checked, "
            f"{_verdict(report)}"
        )
    renderer.result(report.to_dict())
    return 0 if report.ok else 1


# What each problem of a verify report is called on the terminal.
_KIND = {
    "missing": "missing",
    "size": "corrupt",
    "hash": "corrupt",
    "link": "bad link",
    "ref": "unfinished",
}


def _verdict(report: VerifyReport) -> str:
    """``all good``, or how many files are missing, corrupt, ... (each named above it)."""
    if report.ok:
        return "all good"
    counts: dict[str, int] = {}
    for p in report.problems:
        counts[_KIND[p.problem]] = counts.get(_KIND[p.problem], 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


async def _verify(
    args: argparse.Namespace,
    env: Environment,
    ref: HubRef,
    config: DownloadConfig,
    renderer: Renderer,
    held: dict[str, bool],
) -> VerifyReport:
    from ..store.pull import ModelPuller

    hub = HubSource(endpoint=env.endpoint, token=env.token, timeouts=config.timeouts)

    def headers_for(url: str) -> tuple[tuple[str, str], ...]:
        # Stored URLs carry no token: the Hub's own host gets it back, nobody else.
        return hub.auth_headers() if same_host(url, env.endpoint) else ()

    def url_for(commit: str, path: str) -> ModelFile | None:
        """A source for a file known only from its snapshot link (a huggingface_hub cache)."""
        rs = RepoStore(env.cache_root, ref.repo_id, ref.repo_type)
        for f in local_files(rs, commit):
            if f.path == path:
                url = resolve_url(env.endpoint, ref.repo_id, path, commit, ref.repo_type)
                return replace(f, urls=(url,))
        return None

    labels: dict[str, str] = {}

    def on_file(event: FileEvent) -> None:
        if event.download_id is not None:
            labels[event.download_id] = event.path

    if args.repair:
        # A repair fetches whole bad chunks; splitting one already in flight between two
        # connections fetches the bytes on the wire twice (the victim's buffers are lost).
        segments = replace(
            config.segments, min_steal_bytes=max(config.segments.min_steal_bytes, CHUNK_BYTES)
        )
        config = replace(config, segments=segments)
    async with manager_for(args, config) as mgr:
        mgr.subscribe(_renderer_hook(renderer, labels, held))
        if args.repair:
            renderer.start()
        puller = ModelPuller(env.cache_root, mgr, symlinks=env.symlinks)
        return await puller.verify(
            ref.repo_id,
            ref.revision,
            repo_type=ref.repo_type,
            repair=args.repair,
            url_for=url_for,
            headers_for=headers_for,
            on_file=on_file,
        )
