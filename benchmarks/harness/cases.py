"""Cases A, B (one big file, unshaped or capped per flow) and C (300 small files, round trips)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .checks import verify_blob, verify_many
from .common import DATA, HERE, HF_CHUNK, RTT_MS, GiB
from .data import Blob, ManyFile
from .runner import Case, Ctx, Tool

HF_CODE = (
    "import sys, hf_transfer; hf_transfer.download(sys.argv[1], sys.argv[2], "
    "max_files=int(sys.argv[3]), chunk_size=int(sys.argv[4]), parallel_failures=3, max_retries=5)"
)

ARIA2 = ["aria2c", "--no-conf", "-q", "--allow-overwrite=true", "--auto-file-renaming=false"]


def single_file_tools(ctx: Ctx, url: str, blob: Blob, *, floors: bool = False) -> list[Tool]:
    name = blob.name
    py = ctx.peer_python

    def floor(*flags: str) -> Callable[[Path], list[str]]:
        script = str(HERE / "floor.py")
        return lambda out: [py, script, url, str(out / name), "8", *flags]

    def hf(n: int) -> Callable[[Path], list[str]]:
        return lambda out: [py, "-c", HF_CODE, url, str(out / name), str(n), str(HF_CHUNK)]

    def aria2(out: Path) -> list[str]:
        return [*ARIA2, "-x16", "-s16", "-k4M", "-d", str(out), "-o", name, url]

    tools = [
        Tool("curl", lambda out: ["curl", "-q", "-s", "-f", "-o", str(out / name), url]),
        Tool("aria2c-x16", aria2),
        Tool("hf_transfer-8", hf(8)),
        Tool("hf_transfer-16", hf(16)),
    ]
    if floors:
        # Not peers: the least any tool can spend here, with and without verification.
        tools += [
            Tool("floor-8", floor()),
            Tool("floor-8+sha256", floor("--sha256")),
            Tool("floor-8+sha256+fsync", floor("--sha256", "--fsync")),
        ]
    if ctx.mh:
        mh = ctx.mh

        def modelhaul(extra: list[str]) -> Callable[[Path], list[str]]:
            def argv(out: Path) -> list[str]:
                verify = ["--sha256", blob.sha256]
                return [*mh, "get", url, "-o", str(out / name), *verify, "-q", *extra]

            return argv

        tools.append(Tool("modelhaul", modelhaul([]), modelhaul=True))
        tools.append(Tool("modelhaul-x8", modelhaul(["-x", "8"]), modelhaul=True))
        tools.append(Tool("modelhaul-x16", modelhaul(["-x", "16"]), modelhaul=True))
    return tools


def blob_case(ctx: Ctx, key: str, loc: str, blob: Blob, emulates: str, floor: float) -> Case:
    url = ctx.srv.url(f"/{loc}/{blob.name}")
    return Case(
        key=key,
        title=f"{blob.size / GiB:g} GiB from /{loc}/",
        emulates=emulates,
        payload=blob.size,
        tools=single_file_tools(ctx, url, blob, floors=key == "A"),
        verify=lambda out, rep: verify_blob(out, blob.name, blob, seed=rep),
        timeout=60 + blob.size / floor,
        warm=[blob.path],
    )


def many_lists(ctx: Ctx, files: Sequence[ManyFile], via: str | None, tag: str) -> dict[str, Path]:
    urls = [ctx.srv.url(f"/many/{f.name}", via) for f in files]
    paths = {k: ctx.lists / f"many-{tag}.{k}" for k in ("modelhaul", "aria2", "requests")}
    paths["modelhaul"].write_text(
        "".join(
            f"{u}\n  out={f.name}\n  sha256={f.sha256}\n" for u, f in zip(urls, files, strict=True)
        )
    )
    paths["aria2"].write_text(
        "".join(f"{u}\n  out={f.name}\n" for u, f in zip(urls, files, strict=True))
    )
    paths["requests"].write_text(
        "".join(f"{u}\t{f.name}\n" for u, f in zip(urls, files, strict=True))
    )
    return paths


def many_tools(ctx: Ctx, files: Sequence[ManyFile], via: str | None, tag: str) -> list[Tool]:
    lists = many_lists(ctx, files, via, tag)
    urls = [ctx.srv.url(f"/many/{f.name}", via) for f in files]
    curl_cfg = ctx.lists / f"many-{tag}.curl"

    def curl_argv(out: Path) -> list[str]:
        curl_cfg.write_text(
            "".join(
                f'url = "{u}"\noutput = "{out / f.name}"\n'
                for u, f in zip(urls, files, strict=True)
            )
        )
        return ["curl", "-q", "-s", "-f", "--parallel", "--parallel-max", "8", "-K", str(curl_cfg)]

    def mh_argv(out: Path) -> list[str]:
        return [*(ctx.mh or []), "get", "-i", str(lists["modelhaul"]), "-d", str(out), "-q"]

    def aria2_argv(out: Path) -> list[str]:
        return [*ARIA2, "-i", str(lists["aria2"]), "-j", "8", "-d", str(out)]

    def requests_argv(out: Path) -> list[str]:
        script = str(HERE / "peer_requests.py")
        return [ctx.peer_python, script, str(lists["requests"]), str(out), "--threads", "8"]

    tools = [Tool("modelhaul", mh_argv, modelhaul=True)] if ctx.mh else []
    tools += [
        Tool("aria2c-j8", aria2_argv),
        Tool("curl-parallel-8", curl_argv),
        Tool("requests-8threads", requests_argv),
    ]
    return tools


def many_case(ctx: Ctx, files: Sequence[ManyFile]) -> Case:
    return Case(
        key="C",
        title=f"{len(files)} files ({sum(f.size for f in files) / 1e6:.0f} MB), "
        f"{RTT_MS} ms per new connection and per request",
        emulates="a model repo snapshot (many shards/configs) from a far-away server: every new "
        "connection pays a TCP handshake's round trip, every request one more",
        payload=sum(f.size for f in files),
        tools=many_tools(ctx, files, str(RTT_MS), "delay"),
        verify=lambda out, rep: verify_many(out, files),
        timeout=180,
        warm=[DATA / "many" / f.name for f in files],
    )
