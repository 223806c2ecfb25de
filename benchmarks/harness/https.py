"""Case E: one big file over HTTPS, 20 MiB/s per connection, 30 ms round trip (tcp-mode proxy).

Every client is given the test CA: curl ``--cacert``, aria2c ``--ca-certificate``, modelhaul
and hf_transfer through ``SSL_CERT_FILE``. The same tools also fetch the same file over plain
HTTP through a tcp-mode proxy of the same RTT (case ``E0``, one rep), so the report can show
what TLS costs each of them in CPU per GiB.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .cases import ARIA2, HF_CODE
from .checks import verify_blob
from .common import HF_CHUNK, RTT_MS, GiB, MiB, clean_env, log
from .data import Blob
from .runner import Case, Ctx, Tool
from .servers import Servers
from .tls import TlsFiles


def hf_transfer_trusts(ctx: Ctx, srv: Servers, tls: TlsFiles) -> str:
    """Empty if hf_transfer can fetch from the test server given SSL_CERT_FILE, else why not."""
    url = srv.url("/plain/1g.bin.sha256", scheme="https")
    out = ctx.lists / "hf_transfer-tls-probe"
    argv = [ctx.peer_python, "-c", HF_CODE, url, str(out), "16", str(HF_CHUNK)]
    env = {**clean_env(), "SSL_CERT_FILE": str(tls.ca)}
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        return "timed out"
    if cp.returncode == 0 and out.exists():
        out.unlink()
        return ""
    lines = (cp.stderr or cp.stdout).strip().splitlines()
    return lines[-1][:200] if lines else f"exit status {cp.returncode}"


def _tools(ctx: Ctx, url: str, blob: Blob, ca: Path | None, hf: bool) -> list[Tool]:
    name = blob.name
    trust = {"SSL_CERT_FILE": str(ca)} if ca else {}

    def curl(out: Path) -> list[str]:
        cacert = ["--cacert", str(ca)] if ca else []
        return ["curl", "-q", "-s", "-f", *cacert, "-o", str(out / name), url]

    def aria2(out: Path) -> list[str]:
        cacert = [f"--ca-certificate={ca}"] if ca else []
        return [*ARIA2, *cacert, "-x16", "-s16", "-k4M", "-d", str(out), "-o", name, url]

    def hf16(out: Path) -> list[str]:
        return [ctx.peer_python, "-c", HF_CODE, url, str(out / name), "16", str(HF_CHUNK)]

    def env(out: Path) -> dict[str, str]:
        return trust

    tools = [Tool("curl", curl), Tool("aria2c-x16", aria2)]
    if hf:
        tools.append(Tool("hf_transfer-16", hf16, env=env))
    if ctx.mh:
        mh = ctx.mh

        def modelhaul(out: Path) -> list[str]:
            return [*mh, "get", url, "-o", str(out / name), "--sha256", blob.sha256, "-q"]

        tools.append(Tool("modelhaul", modelhaul, modelhaul=True, env=env))
    return tools


def https_cases(ctx: Ctx, blob: Blob, tls: TlsFiles) -> tuple[Case, Case, str]:
    """Case E (HTTPS), its plain-HTTP control E0, and why hf_transfer is left out ("" if not)."""
    why_not_hf = hf_transfer_trusts(ctx, ctx.srv, tls)
    if why_not_hf:
        log(f"hf_transfer cannot trust the test CA through SSL_CERT_FILE: {why_not_hf}")
    timeout = 60 + blob.size / (8 * MiB)
    https_url = ctx.srv.url(f"/capped/{blob.name}", via="tls", scheme="https")
    http_url = ctx.srv.url(f"/capped/{blob.name}", via="tcp")
    size = f"{blob.size / GiB:g} GiB"

    def verify(out: Path, rep: int) -> str | None:
        return verify_blob(out, blob.name, blob, seed=rep)

    e = Case(
        key="E",
        title=f"{size} over HTTPS, 20 MiB/s per connection, {RTT_MS} ms RTT",
        emulates="a CDN over HTTPS (every Hub download is): each new connection pays a TCP "
        "and a TLS handshake; peers are given the test CA",
        payload=blob.size,
        tools=_tools(ctx, https_url, blob, tls.ca, not why_not_hf),
        verify=verify,
        timeout=timeout,
        warm=[blob.path],
    )
    e0 = Case(
        key="E0",
        title=f"{size} over plain HTTP through the same tcp-mode proxy (control for TLS CPU)",
        emulates="case E without TLS: the CPU difference is what TLS costs each tool",
        payload=blob.size,
        tools=_tools(ctx, http_url, blob, None, not why_not_hf),
        verify=verify,
        timeout=timeout,
        warm=[blob.path],
    )
    return e, e0, why_not_hf
