"""Case F: pull a model (4 shards + 20 small files) from the static Hub into the HF cache.

The Hub API and ``/resolve/`` sit behind one http-mode proxy listener and the CDN behind
another (30 ms per new connection and per request each; 20 MiB/s per connection from nginx),
so, as on the real Hub, a connection to the API is never reused for a download. Every tool
gets an empty ``HF_HOME`` and ``HF_HUB_CACHE`` in the output directory and no token.

``modelhaul get -i`` of the same files (their resolve URLs, so the same redirects and bytes,
each with its SHA-256) is in the same table: pull's CPU per GiB is judged against it.
"""

from __future__ import annotations

from pathlib import Path

from .checks import verify_files
from .common import RTT_MS, MiB
from .hubrepo import HubModel
from .runner import Case, Ctx, Tool

HF_ENV = {
    "HF_HUB_DISABLE_XET": "1",  # the static Hub offers no Xet; say so, as users behind one would
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # modelhaul runs with -q too
    "HF_HUB_ENABLE_HF_TRANSFER": "0",
}
SNAPSHOT_CODE = (
    "import sys; from huggingface_hub import snapshot_download; snapshot_download(sys.argv[1])"
)


def _hub_env(ctx: Ctx) -> dict[str, str]:
    return {"HF_ENDPOINT": ctx.srv.url("", via="hub"), **HF_ENV}


def _cache_env(out: Path) -> dict[str, str]:
    return {"HF_HOME": str(out / "hf_home"), "HF_HUB_CACHE": str(out / "hub")}


def verify_cache(out: Path, model: HubModel) -> str | None:
    """The HF cache layout: refs/main names the commit; every snapshot file has its bytes."""
    repo = out / "hub" / model.cache_dir_name
    try:
        ref = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return f"{repo}/refs/main missing"
    if ref != model.commit:
        return f"refs/main is {ref!r}, not {model.commit}"
    snap = repo / "snapshots" / model.commit
    return verify_files(snap, ((f.path, f.size, f.sha256) for f in model.files))


def _get_list(ctx: Ctx, model: HubModel) -> Path:
    """modelhaul's input list: every file's resolve URL, output path and SHA-256."""
    base = ctx.srv.url("", via="hub")
    lines = [
        f"{base}/{model.repo_id}/resolve/{model.commit}/{f.path}\n  out={f.path}\n"
        f"  sha256={f.sha256}\n"
        for f in model.files
    ]
    path = ctx.lists / f"pull-{model.repo_id.replace('/', '--')}.modelhaul"
    path.write_text("".join(lines))
    return path


def pull_case(ctx: Ctx, model: HubModel) -> Case:
    hf_cli = str(Path(ctx.hf_python).parent / "hf")
    ref = model.repo_id

    def cache_env(out: Path) -> dict[str, str]:
        return _cache_env(out)

    tools: list[Tool] = []
    if ctx.mh:
        mh = ctx.mh
        get_list = _get_list(ctx, model)
        tools.append(
            Tool(
                "modelhaul-pull",
                lambda out: [*mh, "pull", f"hf://{ref}", "-q"],
                modelhaul=True,
                env=cache_env,
            )
        )
        tools.append(
            Tool(
                "modelhaul-get-sha256",
                lambda out: [*mh, "get", "-i", str(get_list), "-d", str(out / "get"), "-q"],
                modelhaul=True,
                env=cache_env,
            )
        )
    tools += [
        Tool(
            "snapshot_download",
            lambda out: [ctx.hf_python, "-c", SNAPSHOT_CODE, ref],
            env=cache_env,
        ),
        Tool("hf-download", lambda out: [hf_cli, "download", ref, "-q"], env=cache_env),
    ]

    def verify(out: Path, rep: int) -> str | None:
        if (out / "get").is_dir():
            return verify_files(out / "get", ((f.path, f.size, f.sha256) for f in model.files))
        return verify_cache(out, model)

    shards = [f for f in model.files if f.size >= 64 * MiB]
    return Case(
        key="F",
        title=f"pull {ref}: {len(shards)} shards of {shards[0].size / MiB:.0f} MiB + "
        f"{len(model.files) - len(shards)} small files, 20 MiB/s per connection, {RTT_MS} ms RTT",
        emulates="`pull` of a model from the Hub into the HF cache (API, HEAD per file, 302 to "
        "the CDN); output on the project disk",
        payload=model.payload,
        tools=tools,
        verify=verify,
        timeout=60 + model.payload / (4 * MiB),
        warm=[f.source for f in model.files],
        env=_hub_env(ctx),
    )
