"""``modelhaul pull`` and ``modelhaul verify``: models into the Hugging Face cache layout."""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import DownloadConfig, ManagerConfig
from ..errors import InvalidInput, ModelhaulError, NetworkError, RetriesExhausted
from ..events import TaskEvent
from ..manager import DownloadManager
from ..models import ModelPuller, PullResult
from ..sources.hf import HubRef, HubSource, default_token, parse_hf_uri
from ..sources.manifest import format_of, load_manifest_file, parse_manifest_text, sniff_format
from ..sources.model import ModelFile, ModelSpec
from ..store import hf_cache_root
from .options import add_transfer_options, download_config, state_dir
from .render import Renderer, make_renderer, print_error


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
        "-j", "--jobs", type=int, metavar="N", help="files in flight (default: adaptive)"
    )
    add_transfer_options(p)
    p.set_defaults(run=run_pull)

    v = sub.add_parser(
        "verify",
        help="check every file of a stored model; --repair refetches only what is bad",
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
    token: str | None
    offline: bool
    symlinks: bool

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
            token=default_token(),
            offline=offline,
            symlinks=not no_links,
        )


def manager_for(args: argparse.Namespace, config: DownloadConfig) -> DownloadManager:
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
    from ..transport import Transport

    async with Transport(
        connect_timeout_s=config.timeouts.connect_s, stall_timeout_s=config.timeouts.stall_s
    ) as tr:
        resp = await tr.request("GET", url, headers=dict(config.headers))
        chunks: list[bytes] = []
        total = 0
        try:
            while chunk := await resp.read_chunk():
                total += len(chunk)
                if total > 16 * 1024 * 1024:
                    raise InvalidInput(f"manifest {url} is larger than 16 MiB")
                chunks.append(chunk)
        finally:
            resp.close()
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"manifest {url} is not UTF-8 text") from None
    return parse_manifest_text(text, fmt=format_of(url) or sniff_format(text), source=url)


def _renderer_hook(renderer: Renderer, labels: dict[str, str]) -> Any:
    def on_event(ev: TaskEvent) -> None:
        if ev.kind == "progress" and ev.progress is not None:
            renderer.progress(labels.get(ev.task_id, ev.task_id), ev.progress)

    return on_event


async def run_pull(args: argparse.Namespace) -> int:
    env = Environment.read()
    config = download_config(args)
    renderer = make_renderer(json_mode=args.json, quiet=args.quiet)
    local_dir = Path(args.local_dir) if args.local_dir else None
    try:
        result = await _pull(args, env, config, renderer, local_dir)
    except ModelhaulError as exc:
        renderer.stop()
        print_error(exc)
        renderer.result(_failed(exc))
        return 2 if exc.category == "invalid_input" else 1
    except asyncio.CancelledError:
        renderer.stop()
        renderer.result(
            {
                "event": "result",
                "status": "cancelled",
                "path": None,
                "error": {
                    "category": "cancelled",
                    "message": "interrupted; partial data was kept",
                    "hint": "Run the same command again to resume.",
                },
            }
        )
        raise
    renderer.stop()
    if result.offline:
        renderer.notice(f"{result.repo_id} is complete in the cache; used it without the network")
    elif not args.json and not args.quiet:
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
) -> PullResult:
    source = await resolve_source(args.source, env, config)
    async with manager_for(args, config) as mgr:
        puller = ModelPuller(env.cache_root, mgr, symlinks=env.symlinks)
        if isinstance(source, HubRef):
            if env.offline:
                return _offline(puller, source, None)
            hub = HubSource(endpoint=env.endpoint, token=env.token)
            try:
                spec = await hub.resolve(source)
            except (NetworkError, RetriesExhausted) as exc:
                if exc.category not in ("network", "timeout"):
                    raise
                return _offline(puller, source, exc)
        else:
            spec = source
        spec = spec.select(args.include, args.exclude)
        if not spec.files:
            raise InvalidInput("no file of the model matches --include/--exclude")
        labels: dict[str, str] = {}
        mgr.subscribe(_renderer_hook(renderer, labels))
        renderer.start()

        def on_file(path: str, what: str) -> None:
            if what.startswith("queued:"):
                labels[what.split(":", 1)[1]] = path
            elif what.startswith("mirror:"):
                renderer.notice(f"{path}: trying a mirror ({what[8:]})")

        return await puller.pull(
            spec, local_dir=local_dir, on_file=on_file, free_hint=_free_hint(env)
        )


def _free_hint(env: Environment) -> Any:
    def hint(short: int) -> str:
        try:
            from ..inventory import lru_suggestion

            return lru_suggestion(env.cache_root, short)
        except ImportError:
            return ""

    return hint


def _offline(puller: ModelPuller, ref: HubRef, cause: ModelhaulError | None) -> PullResult:
    try:
        return puller.load_cached(ref.repo_id, ref.revision, ref.repo_type)
    except ModelhaulError as exc:
        if cause is not None:
            raise cause from None
        raise ModelhaulError(
            f"offline mode (HF_HUB_OFFLINE) and {exc.message}",
            hint="Unset HF_HUB_OFFLINE to download it, or pull it on a connected machine first.",
        ) from None


def _failed(exc: ModelhaulError) -> dict[str, Any]:
    return {"event": "result", "status": "failed", "path": None, "error": exc.to_dict()}


def parse_model_arg(text: str) -> HubRef:
    return parse_hf_uri(text)


async def run_verify(args: argparse.Namespace) -> int:
    env = Environment.read()
    ref = parse_model_arg(args.model)
    config = download_config(args)
    renderer = make_renderer(json_mode=args.json, quiet=args.quiet)
    hub = HubSource(endpoint=env.endpoint, token=env.token)

    def url_for(commit: str, path: str) -> ModelFile | None:
        from huggingface_hub import hf_hub_url

        url = hf_hub_url(
            ref.repo_id, path, repo_type=ref.repo_type, revision=commit, endpoint=env.endpoint
        )
        return ModelFile(path=path, size=-1, blob_id="", urls=(url,), headers=hub.auth_headers())

    async with manager_for(args, config) as mgr:
        puller = ModelPuller(env.cache_root, mgr, symlinks=env.symlinks)
        report = await puller.verify(
            ref.repo_id,
            ref.revision,
            repo_type=ref.repo_type,
            repair=args.repair,
            url_for=lambda c, p: _complete_source(puller, ref, c, p, url_for),
        )
    for p in report.problems:
        print(f"modelhaul: bad: {p.path}: {p.problem} ({p.detail})", file=__import__("sys").stderr)
    if not args.json and not args.quiet:
        for path in report.repaired:
            renderer.notice(f"repaired: {path}")
        state = "all good" if report.ok else f"{len(report.problems)} bad"
        renderer.notice(
            f"{report.repo_id}@{report.commit[:12]}: {report.checked} files checked, {state}"
        )
    renderer.result(report.to_dict())
    return 0 if report.ok else 1


def _complete_source(
    puller: ModelPuller, ref: HubRef, commit: str, path: str, url_for: Any
) -> ModelFile | None:
    """A repair source for a file known only from its snapshot link."""
    from ..models import local_files
    from ..store import RepoStore

    base = url_for(commit, path)
    for f in local_files(RepoStore(puller.root, ref.repo_id, ref.repo_type), commit):
        if f.path == path:
            return replace(base, size=f.size, blob_id=f.blob_id, sha256=f.sha256)
    return None
