"""``modelhaul doctor``: checks of everything a download depends on, each with a fix.

The endpoint (DNS, TCP, TLS, the proxy in use, an HTTP answer), the token, the clock against the
server's ``Date``, and the cache filesystem (writable, free space, symlinks, file locks, partial
downloads lying around); with a source, that it resolves. A check is a ``Check`` record: ``ok`` is
True, False, or None when it was skipped or could not tell.

This is a diagnostic, so it does its own I/O, including raw sockets and TLS handshakes (to say
which stage fails) and aiohttp requests whose status and headers it reads whatever they are.
Configuration comes in a ``DoctorConfig`` built by the CLI; nothing here reads the environment
except OpenSSL, which honours SSL_CERT_FILE / SSL_CERT_DIR in the default context as downloads do.

    >>> checks = asyncio.run(run_doctor(DoctorConfig(cache_root=Path("/tmp/hub"))))  # doctest: +SKIP
    >>> [c.name for c in checks if c.ok is False]  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from urllib.request import proxy_bypass_environment

import aiohttp
import filelock

from ..config import RetryPolicy
from ..disk.partials import JOURNAL_SUFFIX, PART_SUFFIX, is_downloading
from ..errors import InvalidInput, ModelhaulError, human_bytes, plural, status_info
from ..guidance import GC_COMMAND, TOKENS_PAGE, explain
from ..http.transport import check_url, map_error
from ..sources.hf import DEFAULT_ENDPOINT, HubRef, HubSource, parse_hf_uri
from ..store.repo import RepoStore, check_repo_id, parse_repo_folder

GIB = 1024**3
PROBE_REPO = "openai-community/gpt2"  # a public model: a token check where whoami is missing
_TEMP_PREFIX = ".modelhaul-doctor-"


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: ``ok`` True (fine), False (fix it) or None (skipped, or could not tell)."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""
    items: tuple[str, ...] = ()  # what the detail summarises (e.g. partial file paths)

    @property
    def status(self) -> str:
        return {True: "ok", False: "fail", None: "skip"}[self.ok]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "ok": self.ok,
            "detail": self.detail,
            "fix": self.fix,
        }
        if self.items:
            out["items"] = list(self.items)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class DoctorConfig:
    """What to check and the thresholds; the CLI fills it from the environment."""

    cache_root: Path
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = None
    token_origin: str = "HF_TOKEN"  # where the token came from, for the report
    proxies: Mapping[str, str] = field(default_factory=dict)  # urllib.request.getproxies()
    ca_file: str | None = None  # SSL_CERT_FILE, for the report
    cwd: Path | None = None  # also look for partial downloads here (not recursively)
    lock_dir: Path | None = None  # modelhaul's download locks: tells running downloads apart
    timeout_s: float = 5.0
    clock_tolerance_s: float = 300.0
    min_free_bytes: int = GIB
    stale_partial_s: float = 7 * 24 * 3600.0
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")


Source = HubRef | str  # a Hub reference or an http(s) URL


def parse_source(text: str) -> Source:
    """``hf://ORG/NAME[@REV]``, ``ORG/NAME`` or an http(s) URL; InvalidInput otherwise."""
    if text.startswith(("http://", "https://")):
        return check_url(text)
    if text.startswith("hf://") or "://" not in text:
        return parse_hf_uri(text)
    raise InvalidInput(
        f"cannot check {text!r}", hint="Give hf://ORG/NAME[@REVISION], ORG/NAME or an https:// URL."
    )


async def run_doctor(config: DoctorConfig, source: Source | None = None) -> list[Check]:
    """Run every check (concurrently where they are independent), in report order."""
    probe_repo = source.repo_id if isinstance(source, HubRef) else PROBE_REPO
    root = config.cache_root
    async with _session(config) as session, asyncio.TaskGroup() as tg:
        endpoint = tg.create_task(check_endpoint(config, session))
        token = tg.create_task(check_token(config, session, probe_repo=probe_repo))
        resolved = tg.create_task(check_source(config, source, session)) if source else None
        writable = tg.create_task(check_cache_writable(root))
        symlinks = tg.create_task(check_symlinks(root))
        locks = tg.create_task(check_file_locks(root))
        partials = tg.create_task(check_partials(config))
    need = resolved.result()[1] if resolved else None
    free = await check_free_space(root, need_bytes=need, min_free_bytes=config.min_free_bytes)
    probe = endpoint.result()
    checks = [check_proxy(config.endpoint, config.proxies), probe.check]
    checks.append(check_clock(probe.server_time, probe.local_time, config.clock_tolerance_s))
    checks.append(token.result())
    if resolved:
        checks.append(resolved.result()[0])
    checks += [writable.result(), free, symlinks.result(), locks.result(), partials.result()]
    return checks


@contextlib.asynccontextmanager
async def _session(config: DoctorConfig) -> AsyncIterator[aiohttp.ClientSession]:
    # Like transport.Transport: the default TLS context and the proxies from the environment.
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context())
    timeout = aiohttp.ClientTimeout(
        total=config.timeout_s * 2, sock_connect=config.timeout_s, sock_read=config.timeout_s
    )
    async with aiohttp.ClientSession(
        connector=connector,
        trust_env=True,
        timeout=timeout,
        headers={"User-Agent": "modelhaul-doctor", "Accept-Encoding": "identity"},
    ) as session:
        yield session


# ---------------------------------------------------------------------------- network


def proxy_for(url: str, proxies: Mapping[str, str]) -> str | None:
    """The proxy a request to ``url`` goes through (as aiohttp with trust_env picks it)."""
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme.lower())
    if not proxy or proxy_bypass_environment(parts.hostname or "", dict(proxies)):
        return None
    return proxy


def check_proxy(endpoint: str, proxies: Mapping[str, str]) -> Check:
    try:
        proxy = proxy_for(endpoint, proxies)
    except ValueError:
        proxy = None
    no_proxy = proxies.get("no", "")
    if proxy is None:
        how = "bypassed by NO_PROXY" if proxies.get(_scheme(endpoint)) else "none set"
        return Check("proxy", True, f"direct connection to the endpoint ({how})")
    shown = _redact(proxy)
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if not parts.hostname:
        return Check(
            "proxy",
            False,
            f"the proxy setting {shown!r} has no host",
            "Set HTTPS_PROXY (and HTTP_PROXY) to a URL such as http://proxy.example:3128.",
        )
    extra = f"; NO_PROXY={no_proxy}" if no_proxy else ""
    return Check("proxy", True, f"{shown} (from {_scheme(endpoint).upper()}_PROXY{extra})")


@dataclass(frozen=True, slots=True)
class EndpointProbe:
    """The endpoint check, and the server's clock as its HTTP answer gave it."""

    check: Check
    server_time: float | None = None  # from the Date header
    local_time: float | None = None  # when that answer arrived


async def check_endpoint(config: DoctorConfig, session: aiohttp.ClientSession) -> EndpointProbe:
    """DNS, TCP and (for https, without a proxy) a TLS handshake, then one HTTP request."""
    url = config.endpoint.rstrip("/")
    try:
        check_url(url)
    except InvalidInput as exc:
        return EndpointProbe(_endpoint_fail(url, [], f"not a valid URL: {exc.message}", "url"))
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = proxy_for(url, config.proxies)
    stages: list[str] = []
    if proxy:
        pparts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        stages.append(f"via proxy {_redact(proxy)}")
        host, port = pparts.hostname or "", pparts.port or 80
    failed = await _connect_stages(
        host, port, config, stages, tls=not proxy and parts.scheme == "https"
    )
    if failed:
        return EndpointProbe(_endpoint_fail(url, stages, failed[1], failed[0], proxy, config))
    try:
        async with session.head(url + "/", allow_redirects=False) as resp:
            local_time = config.clock()
            status, date = resp.status, resp.headers.get("Date")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        stage = "tls" if _is_tls(exc) else "proxy" if _is_proxy(exc) else "http"
        err = map_error(exc, url)
        return EndpointProbe(_endpoint_fail(url, stages, err.message, stage, proxy, config))
    stages.append(f"HTTP {status}")
    server_time = _parse_date(date)
    if status == 407 or status >= 500:
        what = "the proxy wants credentials" if status == 407 else "server error"
        check = _endpoint_fail(url, stages, f"HTTP {status} ({what})", "http", proxy, config)
        return EndpointProbe(check, server_time, local_time)
    check = Check("endpoint", True, f"{url}: " + ", ".join(stages))
    return EndpointProbe(check, server_time, local_time)


async def _connect_stages(
    host: str, port: int, config: DoctorConfig, stages: list[str], *, tls: bool
) -> tuple[str, str] | None:
    """Append what worked to ``stages``; return (stage, error) for the first that failed."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(config.timeout_s):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        return "dns", f"DNS lookup of {host} failed: {_os_text(exc)}"
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        return "dns", f"DNS lookup of {host} returned no address"
    shown = ", ".join(addresses[:3]) + (", …" if len(addresses) > 3 else "")
    stages.append(f"address {host}" if _is_ip(host) else f"DNS {host} -> {shown}")
    writer: asyncio.StreamWriter | None = None
    error: BaseException | None = None
    for address in addresses[:3]:
        try:
            started = time.monotonic()
            async with asyncio.timeout(config.timeout_s):
                _, writer = await asyncio.open_connection(address, port)
            stages.append(
                f"TCP {_hostport(address, port)} ({(time.monotonic() - started) * 1000:.0f} ms)"
            )
            break
        except (OSError, TimeoutError) as exc:
            error = exc
    if writer is None:
        return "tcp", f"TCP connect to {_hostport(addresses[0], port)} failed: {_os_text(error)}"
    try:
        if tls:
            try:
                async with asyncio.timeout(config.timeout_s):
                    await writer.start_tls(ssl.create_default_context(), server_hostname=host)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                return "tls", f"TLS handshake with {host} failed: {_tls_text(exc)}"
            stages.append(_tls_summary(writer))
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return None


def _endpoint_fail(
    url: str,
    stages: list[str],
    error: str,
    stage: str,
    proxy: str | None = None,
    config: DoctorConfig | None = None,
) -> Check:
    done = ", ".join(stages)
    detail = f"{url}: " + (f"{done}; " if done else "") + error
    ca = config.ca_file if config else None
    fixes = {
        "url": "Set HF_ENDPOINT to the Hub's URL, e.g. https://huggingface.co (or unset it).",
        "dns": "Check the host name in HF_ENDPOINT and the network's DNS; on a network that only "
        "allows a proxy, set HTTPS_PROXY.",
        "tcp": "Check that the server is up and HF_ENDPOINT's host and port are right; a firewall "
        "may block the port (then set HTTPS_PROXY to the proxy you must use).",
        "tls": "Point SSL_CERT_FILE at a CA bundle that includes your organisation's root "
        "certificate (a proxy or firewall re-signing TLS is the usual cause)"
        + (f"; SSL_CERT_FILE is now {ca}" if ca else "")
        + ". Also check the clock.",
        "proxy": "Check HTTPS_PROXY / HTTP_PROXY (user:password@ in the URL if it asks for "
        "credentials) and that the proxy is up; list hosts to reach directly in NO_PROXY.",
        "http": "The server answers but not well: try again later, or check HF_ENDPOINT.",
    }
    fix = fixes[stage]
    if proxy and stage in ("dns", "tcp"):
        fix = "The proxy is not reachable: " + fixes["proxy"]
    return Check("endpoint", False, detail, fix)


def check_clock(server_time: float | None, local_time: float | None, tolerance_s: float) -> Check:
    """Local clock against the server's Date header (1 s resolution, so ±2 s is noise)."""
    if server_time is None or local_time is None:
        return Check("clock", None, "no Date header from the endpoint to compare")
    skew = local_time - server_time
    ahead = "ahead of" if skew > 0 else "behind"
    if abs(skew) <= 2:
        return Check("clock", True, "in step with the server (within 2 s)")
    text = f"{_duration(abs(skew))} {ahead} the server"
    if abs(skew) <= tolerance_s:
        return Check("clock", True, text)
    return Check(
        "clock",
        False,
        text,
        "Set the clock right (enable NTP: timedatectl set-ntp true, or the system settings); "
        "a wrong clock breaks TLS certificate checks and presigned download links.",
    )


async def check_token(
    config: DoctorConfig, session: aiohttp.ClientSession, *, probe_repo: str = PROBE_REPO
) -> Check:
    """Is there a token, and does the endpoint accept it (whoami-v2, else an API call)?"""
    if not config.token:
        return Check(
            "token",
            None,
            "no token (HF_TOKEN unset, no token file): public models only",
            f"For private or gated models, create a 'read' token at {TOKENS_PAGE} and set "
            "HF_TOKEN.",
        )
    base = config.endpoint.rstrip("/")
    headers = {"Authorization": f"Bearer {config.token}"}
    origin = f"from {config.token_origin}"
    rejected_fix = f"Create a new token at {TOKENS_PAGE} and set HF_TOKEN to it."
    try:
        status, resp_headers, body = await _get(session, f"{base}/api/whoami-v2", headers)
        how = "whoami"
        if status == 404:  # mirrors and proxies of the Hub often lack whoami
            how = "an API call"
            status, resp_headers, body = await _get(
                session, f"{base}/api/models/{probe_repo}", headers
            )
            if status == 404 and resp_headers.get("X-Error-Code") == "RepoNotFound":
                status = 200  # authenticated, just no such (visible) repository
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        err = map_error(exc, base)
        return Check("token", None, f"present ({origin}); could not ask: {err.message}")
    if status == 200:
        user = _whoami_name(body)
        named = f" as {user}" if user else ""
        return Check("token", True, f"accepted{named} ({origin}, checked by {how})")
    if status == 401:
        why = resp_headers.get("X-Error-Message") or "invalid or expired"
        return Check("token", False, f"rejected ({origin}): HTTP 401, {why}", rejected_fix)
    return Check("token", None, f"present ({origin}); the endpoint answered HTTP {status}")


async def _get(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str]
) -> tuple[int, Mapping[str, str], bytes]:
    # No redirects: the token must not follow one to another host.
    async with session.get(url, headers=headers, allow_redirects=False) as resp:
        body = await resp.content.read(64 * 1024) if resp.status == 200 else b""
        return resp.status, resp.headers, body


async def check_source(
    config: DoctorConfig, source: Source, session: aiohttp.ClientSession
) -> tuple[Check, int | None]:
    """Does the source resolve? Also returns the bytes it would still need in the cache."""
    if isinstance(source, HubRef):
        return await _check_hub_source(config, source)
    return await _check_url_source(config, source, session), None


async def _check_hub_source(config: DoctorConfig, ref: HubRef) -> tuple[Check, int | None]:
    hub = HubSource(endpoint=config.endpoint, token=config.token, retry=RetryPolicy(retries=0))
    try:
        spec = await hub.resolve(ref)
    except ModelhaulError as exc:
        return _source_fail(str(ref), exc, config, ref.repo_id), None
    total = sum(f.size for f in spec.files)
    store = RepoStore(config.cache_root, spec.repo_id, spec.repo_type)
    need = await asyncio.to_thread(_missing_bytes, store, spec.files)
    detail = (
        f"{ref} resolves to commit {spec.commit[:12]}: {plural(len(spec.files), 'file')}, "
        f"{human_bytes(total)} ({human_bytes(need)} not in the cache yet)"
    )
    return Check("source", True, detail), need


def _missing_bytes(store: RepoStore, files: Any) -> int:
    need = 0
    for f in files:
        try:
            have = store.blob_path(f.blob_id).stat().st_size
        except (OSError, InvalidInput):
            have = 0
        need += 0 if have == f.size else f.size
    return need


async def _check_url_source(
    config: DoctorConfig, url: str, session: aiohttp.ClientSession
) -> Check:
    try:
        async with session.get(url, headers={"Range": "bytes=0-0"}) as resp:
            status, headers = resp.status, resp.headers
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return _source_fail(url, map_error(exc, url), config, None)
    if status >= 400:
        category, _, hint = status_info(status)
        return Check("source", False, f"{url}: {category}: HTTP {status}", hint)
    size = headers.get("Content-Range", "").rpartition("/")[2]
    size_text = f", {human_bytes(int(size))}" if size.isdigit() else ""
    ranges = "ranges supported" if status == 206 else "no ranges: a download cannot resume"
    return Check("source", True, f"{url}: HTTP {status}{size_text}, {ranges}")


def _source_fail(what: str, err: ModelhaulError, config: DoctorConfig, model: str | None) -> Check:
    guidance = explain(err, endpoint=config.endpoint, model=model)
    fix = err.hint or (guidance.steps[0] if guidance.steps else "")
    return Check("source", False, f"{what}: {err.category}: {err.message}", fix)


# ---------------------------------------------------------------------------- filesystem


async def check_cache_writable(root: Path) -> Check:
    return await asyncio.to_thread(_cache_writable, root)


def _cache_writable(root: Path) -> Check:
    fix = (
        f"Fix the owner or mode of {root} (ls -ld, chown, chmod), or point HF_HUB_CACHE (or "
        "HF_HOME) at a writable directory."
    )
    if root.is_dir():
        error = _try_write(root)
        if error:
            return Check("cache_writable", False, f"cannot write in {root}: {error}", fix)
        return Check("cache_writable", True, f"{root} is writable")
    if root.exists():
        return Check("cache_writable", False, f"{root} exists but is not a directory", fix)
    base = _existing_ancestor(root)
    if not base.is_dir():
        return Check(
            "cache_writable",
            False,
            f"{root} cannot be created: {base} is a file, not a directory",
            fix,
        )
    error = _try_write(base)
    if error:
        return Check(
            "cache_writable",
            False,
            f"{root} does not exist and cannot be created: cannot write in {base}: {error}",
            fix,
        )
    return Check(
        "cache_writable",
        True,
        f"{root} does not exist yet; it can be created in {base}",
    )


async def check_free_space(
    root: Path, *, need_bytes: int | None = None, min_free_bytes: int = GIB
) -> Check:
    return await asyncio.to_thread(_free_space, root, need_bytes, min_free_bytes)


def _free_space(root: Path, need_bytes: int | None, min_free_bytes: int) -> Check:
    where = root if root.is_dir() else _existing_ancestor(root)
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return Check("free_space", None, f"cannot tell for {where}: {_os_text(exc)}")
    detail = f"{human_bytes(usage.free)} free of {human_bytes(usage.total)} on {where}"
    want = need_bytes if need_bytes is not None else min_free_bytes
    if usage.free >= want:
        if need_bytes is not None:
            detail += f"; the source needs {human_bytes(need_bytes)}"
        return Check("free_space", True, detail)
    short = want - usage.free
    what = "the source needs" if need_bytes is not None else "less than"
    return Check(
        "free_space",
        False,
        f"{detail}; {what} {human_bytes(want)}",
        f"Free at least {human_bytes(short)}: '{GC_COMMAND}' removes partial downloads and "
        "unused revisions; or set HF_HUB_CACHE to a directory on a bigger disk.",
    )


async def check_symlinks(root: Path) -> Check:
    return await asyncio.to_thread(_symlinks, root)


def _symlinks(root: Path) -> Check:
    where = _probe_dir(root)
    if where is None:
        return Check("symlinks", None, "skipped: no directory to test in")
    target = where / f"{_TEMP_PREFIX}{secrets.token_hex(4)}"
    link = target.with_name(target.name + ".link")
    try:
        target.write_bytes(b"x")
        os.symlink(target.name, link)  # relative, as snapshots/ -> ../../blobs/
        works = link.read_bytes() == b"x"
    except OSError as exc:
        if not target.exists():
            return Check("symlinks", None, f"skipped: cannot write in {where}")
        return Check(
            "symlinks",
            False,
            f"cannot make a symbolic link in {where}: {_os_text(exc)}",
            "Set HF_HUB_DISABLE_SYMLINKS=1 (files are then copied into snapshots/, using "
            "more space), or move the cache to a filesystem with symlinks via HF_HUB_CACHE.",
        )
    finally:
        for p in (link, target):
            with contextlib.suppress(OSError):
                p.unlink()
    if not works:
        return Check("symlinks", False, f"a relative symlink in {where} does not resolve")
    return Check("symlinks", True, f"relative symlinks work in {where}")


async def check_file_locks(root: Path) -> Check:
    return await asyncio.to_thread(_file_locks, root)


def _file_locks(root: Path) -> Check:
    locks = root / ".locks"
    where = locks if locks.is_dir() else _probe_dir(root)
    if where is None:
        return Check("file_locks", None, "skipped: no directory to test in")
    path = where / f"{_TEMP_PREFIX}{secrets.token_hex(4)}.lock"
    first = filelock.FileLock(path, timeout=0)
    fix = (
        "This filesystem does not lock files (some NFS and FUSE mounts): put the cache on a "
        "local disk with HF_HUB_CACHE, and never run two downloads of one model at once."
    )
    try:
        first.acquire()
    except filelock.Timeout:
        return Check("file_locks", False, f"a fresh lock in {where} is held", fix)
    except OSError as exc:
        if not where.exists() or _try_write(where):
            return Check("file_locks", None, f"skipped: cannot write in {where}")
        return Check(
            "file_locks",
            False,
            f"cannot lock a file in {where}: {_os_text(exc)}",
            fix,
        )
    try:
        second = filelock.FileLock(path, timeout=0)
        try:
            second.acquire()
        except filelock.Timeout:
            return Check("file_locks", True, f"exclusive file locks work in {where}")
        second.release()
        return Check(
            "file_locks",
            False,
            f"a lock in {where} does not exclude others",
            fix,
        )
    finally:
        first.release()
        with contextlib.suppress(OSError):
            path.unlink()


async def check_partials(config: DoctorConfig) -> Check:
    return await asyncio.to_thread(_partials, config, config.clock())


def _partials(config: DoctorConfig, now: float) -> Check:
    """Partial files in the cache's blobs/ (ours and huggingface_hub's) and in ``cwd``."""
    root = config.cache_root
    patterns = [(root, f"*/blobs/*{PART_SUFFIX}"), (root, "*/blobs/*.incomplete")]
    if config.cwd is not None:
        patterns.append((config.cwd, f"*{PART_SUFFIX}"))
    found: list[tuple[Path, int, float]] = []
    active = 0
    for base, pattern in patterns:
        with contextlib.suppress(OSError):
            for path in sorted(base.glob(pattern)):
                with contextlib.suppress(OSError):
                    st = path.stat()
                    if config.lock_dir and is_downloading(config.lock_dir, path.absolute()):
                        active += 1  # a running download's file is not "lying around"
                        continue
                    found.append((path, st.st_blocks * 512, st.st_mtime))
    running = f" ({active} downloading now)" if active else ""
    if not found:
        return Check("partials", True, f"no partial downloads lying around{running}")
    n, total = len(found), sum(size for _, size, _ in found)
    stale = [p for p, _, mtime in found if now - mtime > config.stale_partial_s]
    shown = ", ".join(str(p) for p, _, _ in found[:5]) + (f" and {n - 5} more" if n > 5 else "")
    detail = (
        f"{n} partial download{'s' if n != 1 else ''}, {human_bytes(total)} on disk, oldest "
        f"untouched for {_duration(now - min(m for _, _, m in found))}: {shown}{running}"
    )
    if stale:
        detail += f"; {len(stale)} untouched for over {_duration(config.stale_partial_s)}"
    repos = sorted({r for p, _, _ in found if (r := _repo_of(root, p))})
    resume = "".join(f"; modelhaul pull hf://{r}" for r in repos[:3])
    fix = (
        f"Run the pull or get that started them again to resume{resume}. '{GC_COMMAND}' removes "
        "partial downloads in the cache untouched for 7 days (--partial-age 1d for sooner); "
        f"delete a *{PART_SUFFIX} file and its *{JOURNAL_SUFFIX} to abandon it."
    )
    return Check("partials", not stale, detail, fix, items=tuple(str(p) for p, _, _ in found))


# ---------------------------------------------------------------------------- helpers


def _repo_of(root: Path, path: Path) -> str | None:
    try:
        folder = path.relative_to(root).parts[0]
    except (ValueError, IndexError):
        return None
    parsed = parse_repo_folder(folder)
    if parsed is None or parsed[0] != "model":
        return None
    with contextlib.suppress(InvalidInput):
        return check_repo_id(parsed[1])
    return None


def _existing_ancestor(path: Path) -> Path:
    """The nearest of ``path`` and its parents that exists (may be a file)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_dir(root: Path) -> Path | None:
    """Where to test filesystem features: the cache root, or what it will be created in."""
    if root.is_dir():
        return root
    base = _existing_ancestor(root)
    return base if base.is_dir() else None


def _try_write(directory: Path) -> str | None:
    """None if a file can be created and removed in ``directory``, else why not."""
    path = directory / f"{_TEMP_PREFIX}{secrets.token_hex(4)}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return _os_text(exc)
    os.close(fd)
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def _os_text(exc: BaseException | None) -> str:
    if isinstance(exc, TimeoutError) or exc is None:
        return "timed out"
    if isinstance(exc, OSError) and not isinstance(exc, socket.gaierror) and exc.errno:
        return os.strerror(exc.errno)  # asyncio words refusals as "Connect call failed (...)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _tls_text(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _tls_summary(writer: asyncio.StreamWriter) -> str:
    obj = writer.get_extra_info("ssl_object")
    if not isinstance(obj, ssl.SSLObject):
        return "TLS ok"
    cert = obj.getpeercert() or {}
    subject = dict(x[0] for x in cert.get("subject", ()) if x)
    issuer = dict(x[0] for x in cert.get("issuer", ()) if x)
    parts = [f"TLS {obj.version()}"]
    if subject.get("commonName"):
        parts.append(f"certificate {subject['commonName']}")
    if issuer.get("organizationName") or issuer.get("commonName"):
        parts.append(f"issued by {issuer.get('organizationName') or issuer.get('commonName')}")
    if cert.get("notAfter"):
        parts.append(f"valid until {cert['notAfter']}")
    return " ".join(parts)


def _is_tls(exc: BaseException) -> bool:
    return isinstance(exc, ssl.SSLError | aiohttp.ClientSSLError)


def _is_proxy(exc: BaseException) -> bool:
    return isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError)


def _parse_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _whoami_name(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower() or "https"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _duration(seconds: float) -> str:
    s = abs(seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


__all__ = [
    "Check",
    "DoctorConfig",
    "EndpointProbe",
    "Source",
    "check_cache_writable",
    "check_clock",
    "check_endpoint",
    "check_file_locks",
    "check_free_space",
    "check_partials",
    "check_proxy",
    "check_source",
    "check_symlinks",
    "check_token",
    "parse_source",
    "proxy_for",
    "run_doctor",
]
