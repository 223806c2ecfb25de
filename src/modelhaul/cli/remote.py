"""``modelhaul queue | pause | resume | cancel | priority | limit``, and ``get``/``pull`` with
``--via-server``: commands that talk to a running ``modelhaul serve`` over its REST API.

The address comes from ``--server``, else ``MODELHAUL_SERVER``, else the default
http://127.0.0.1:8765. The token from ``--token``, else ``MODELHAUL_TOKEN``, else, for a
service on loopback only, the token file in this machine's state directory. Only the standard
library speaks HTTP here, so these commands need no extra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.client
import json
import os
import sys
import threading
import tomllib
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from ..errors import Cancelled, InvalidInput, ModelhaulError, human_bytes
from ..events import Progress
from ..policy.paths import safe_relpath
from ..policy.units import parse_rate
from .options import state_dir
from .render import JsonRenderer, Renderer, make_renderer, print_error

if TYPE_CHECKING:
    from ..sources.url import UrlEntry

DEFAULT_SERVER = "http://127.0.0.1:8765"
REQUEST_TIMEOUT_S = 30.0
_FINAL = frozenset({"completed", "failed", "cancelled"})
_NO_LIMIT = frozenset({"none", "off", "unlimited", "0"})


class RemoteError(ModelhaulError):
    """An error the service reported, with the category it gave."""

    def __init__(self, message: str, *, category: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self._category = category

    @property  # type: ignore[override]
    def category(self) -> str:
        return self._category


class ServiceUnreachable(ModelhaulError):
    category = "network"


# ---------------------------------------------------------------------- the client


class ServiceClient:
    """Blocking JSON-over-HTTP calls to one service (run them in a thread from async code)."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def _request(self, method: str, path: str, body: Any = None) -> urllib.request.Request:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=headers
        )

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; the decoded JSON answer (None for 204).

        Raises:
            ServiceUnreachable: nothing answers at the address.
            RemoteError: the service refused (its category, message and hint).
        """
        try:
            with urllib.request.urlopen(
                self._request(method, path, body), timeout=REQUEST_TIMEOUT_S
            ) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise self._not_ours() from None

    def open_events(self) -> http.client.HTTPResponse:
        """The live event stream (Server-Sent Events), open; read it with ``iter_events``."""
        req = self._request("GET", "/events")
        req.add_header("Accept", "text/event-stream")
        try:
            return urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> ServiceUnreachable:
        reason = getattr(exc, "reason", exc)
        detail = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return ServiceUnreachable(
            f"no modelhaul service is running at {self.base_url} ({detail})",
            hint="Start one with 'modelhaul serve', or point --server (or MODELHAUL_SERVER) "
            "at a running one.",
        )

    def _not_ours(self) -> ModelhaulError:
        return ModelhaulError(
            f"the server at {self.base_url} is not a modelhaul service",
            hint="Check --server / MODELHAUL_SERVER.",
        )

    def _refusal(self, exc: urllib.error.HTTPError) -> ModelhaulError:
        try:
            data = json.loads(exc.read() or b"null")
        except (ValueError, OSError):
            data = None
        if exc.code == 401:
            return RemoteError(
                f"the service at {self.base_url} needs its access token",
                category="auth",
                hint="Pass --token or set MODELHAUL_TOKEN; the token is in the server-token "
                "file of the service's state directory.",
            )
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            err = data["error"]
            category = str(err.get("category") or "client_error")
            message = str(err.get("message") or f"HTTP {exc.code}")
            hint = err.get("hint")
            if category == "invalid_input":
                return InvalidInput(message, hint=hint or None)
            return RemoteError(message, category=category, hint=hint or None)
        if isinstance(data, dict) and isinstance(data.get("detail"), list):
            first = data["detail"][0] if data["detail"] else {}
            where = ".".join(str(p) for p in first.get("loc", ())[1:])
            return InvalidInput(f"the service refused the request: {where}: {first.get('msg')}")
        if exc.code == 404:
            return self._not_ours()
        return RemoteError(f"HTTP {exc.code} from {self.base_url}", category="server_error")


def iter_events(resp: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    """Parse Server-Sent Events: each ``data:`` block as a JSON object."""
    data: list[str] = []
    for line in _lines(resp):
        if not line:
            if data:
                with contextlib.suppress(ValueError):
                    yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


def _lines(resp: http.client.HTTPResponse) -> Iterator[str]:
    # read1, not readline: http.client's readline on a chunked body waits for more data than
    # one event, so an event would sit in the buffer until the next keepalive.
    pending = b""
    while chunk := resp.read1(65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            yield raw.decode("utf-8", "replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", "replace").rstrip("\r")


class EventFollower:
    """The event stream read in a daemon thread and handed to the loop.

    A daemon thread, not the loop's executor: a blocked read must not keep the process alive
    after Ctrl-C.
    """

    def __init__(self, client: ServiceClient) -> None:
        self._client = client
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._resp: http.client.HTTPResponse | None = None
        self._closed = False

    async def start(self) -> dict[str, Any]:
        """Connect; returns the snapshot, so later events are exactly what happens next."""
        self._resp = await asyncio.to_thread(self._client.open_events)
        threading.Thread(target=self._read, name="modelhaul-events", daemon=True).start()
        first = await self.next()
        if first.get("event") != "snapshot":
            raise self._client._not_ours()
        return first

    def _read(self) -> None:
        assert self._resp is not None
        try:
            for event in iter_events(self._resp):
                if self._closed:
                    return
                self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
            error: BaseException = ServiceUnreachable(
                f"the service at {self._client.base_url} closed the event stream",
                hint="It may have stopped; downloads it had queued resume when it starts again.",
            )
        except Exception as exc:  # whatever a dropped stream raises, it ends here
            if self._closed:
                return
            error = self._client._unreachable(exc)
        finally:
            # Closed here, by the reading thread: closing from another thread would wait for
            # the read in progress (the buffer's lock), i.e. for the next event or keepalive.
            with contextlib.suppress(Exception):
                self._resp.close()
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
            self._loop.call_soon_threadsafe(self._queue.put_nowait, error)

    async def next(self) -> dict[str, Any]:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop listening; the reading thread ends with the next message."""
        self._closed = True


# ---------------------------------------------------------------------- options


def add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        metavar="URL",
        help=f"the service's address (default: MODELHAUL_SERVER, else {DEFAULT_SERVER})",
    )
    p.add_argument(
        "--token", metavar="TOKEN", help="the service's access token (default: MODELHAUL_TOKEN)"
    )


def add_via_server_option(p: argparse.ArgumentParser) -> None:
    """Add ``--via-server`` (and ``--server``/``--token``) to ``get`` or ``pull``."""
    p.add_argument(
        "--via-server",
        action="store_true",
        help="hand the work to a running 'modelhaul serve' and follow it there",
    )
    add_server_options(p)


def client_from_args(args: argparse.Namespace) -> ServiceClient:
    base = getattr(args, "server", None) or os.environ.get("MODELHAUL_SERVER") or DEFAULT_SERVER
    base = base.strip().rstrip("/")
    try:
        parts = urlsplit(base)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # a bad port raises ValueError
    except ValueError:
        usable = False
    if not usable:
        raise InvalidInput(
            f"bad service address {base!r}", hint="Use http://HOST:PORT, e.g. " + DEFAULT_SERVER
        )
    token = getattr(args, "token", None) or os.environ.get("MODELHAUL_TOKEN") or None
    if token is None and _is_loopback_url(base):
        # The token file is this machine's; never send it to a service elsewhere.
        from ..server.security import read_token, token_path

        with contextlib.suppress(ModelhaulError):
            token = read_token(token_path(state_dir()))
    return ServiceClient(base, token)


def _is_loopback_url(url: str) -> bool:
    from ..server.security import is_loopback_host

    return is_loopback_host(urlsplit(url).hostname or "")


# ---------------------------------------------------------------------- commands


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "queue",
        help="list the downloads of a running service",
        description="List the downloads of a running service (modelhaul serve): state, "
        "progress, speed, time left, priority.",
    )
    p.add_argument("--json", action="store_true", help="one JSON array")
    add_server_options(p)
    p.set_defaults(run=run_queue)

    for name, verb in (
        ("pause", "pause downloads of a running service (partial data kept)"),
        ("resume", "resume paused (or retry failed) downloads of a running service"),
        ("cancel", "cancel downloads of a running service (partial data deleted)"),
    ):
        p = sub.add_parser(name, help=verb, description=verb[0].upper() + verb[1:] + ".")
        p.add_argument(
            "ids", nargs="+", metavar="ID", help="download IDs, as 'modelhaul queue' shows"
        )
        p.add_argument("--json", action="store_true", help="JSON lines, one per download")
        add_server_options(p)
        p.set_defaults(run=run_action, action=name)

    p = sub.add_parser(
        "priority",
        help="change a download's priority (higher runs first)",
        description="Change the priority of a download of a running service; higher "
        "priorities run first.",
    )
    p.add_argument("id", metavar="ID", help="the download's ID, as 'modelhaul queue' shows")
    p.add_argument(
        "priority", type=int, metavar="N", help="the new priority, -1000 to 1000 (new downloads: 0)"
    )
    p.add_argument("--json", action="store_true", help="the download as one JSON object")
    add_server_options(p)
    p.set_defaults(run=run_priority)

    p = sub.add_parser(
        "limit",
        help="show or set a running service's global speed limit",
        description="Show the speed limit of a running service, shared by all its downloads, "
        "or set it with RATE.",
    )
    p.add_argument(
        "rate", nargs="?", metavar="RATE", help="e.g. 20M (bytes/s, 1024-based); 0 or none: off"
    )
    p.add_argument(
        "--json", action="store_true", help='one JSON object, {"rate_bytes_per_s": N or null}'
    )
    add_server_options(p)
    p.set_defaults(run=run_limit)


def _report(exc: ModelhaulError) -> int:
    """What went wrong talking to the service: one line and the hint, exit status 1.

    Not print_error: its download-failure guidance (endpoint, proxy, HF_TOKEN) would send
    someone whose service is simply not running down the wrong path.
    """
    print(f"modelhaul: error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"  hint: {exc.hint}", file=sys.stderr)
    return 1


def _service_errors(
    fn: Callable[[argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], Awaitable[int]]:
    @functools.wraps(fn)
    async def run(args: argparse.Namespace) -> int:
        try:
            return await fn(args)
        except InvalidInput:
            raise  # a usage error: the CLI's own report, exit status 2
        except ModelhaulError as exc:
            return _report(exc)

    return run


async def _call(client: ServiceClient, method: str, path: str, body: Any = None) -> Any:
    return await asyncio.to_thread(client.call, method, path, body)


def _id_path(download_id: str) -> str:
    return quote(download_id, safe="")


@_service_errors
async def run_queue(args: argparse.Namespace) -> int:
    client = client_from_args(args)
    data = await _call(client, "GET", "/api/downloads")
    downloads = data.get("downloads", []) if isinstance(data, dict) else []
    if args.json:
        print(json.dumps(downloads))
        return 0
    from rich.console import Console  # only for the table: rich is slow to import
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    if not downloads:
        console.print(f"Nothing queued at {client.base_url}.")
        return 0
    table = Table(box=None, header_style="bold")
    for col in ("ID", "STATE", "PROGRESS", "SPEED", "ETA", "PRI", "NAME"):
        table.add_column(col, justify="right" if col in ("ID", "SPEED", "ETA", "PRI") else "left")
    for d in downloads:
        table.add_row(
            str(d["id"]),
            str(d["state"]),
            _progress_text(d),
            f"{human_bytes(d['speed'])}/s" if d.get("speed") else "",
            f"{d['eta']:.0f}s" if d.get("eta") is not None else "",
            str(d["priority"]),
            str(d["name"]),
            style="dim" if d["state"] in _FINAL else None,
        )
    console.print(table)
    return 0


def _progress_text(d: dict[str, Any]) -> str:
    done, total = d.get("bytes_done") or 0, d.get("total")
    if total:
        return f"{100 * done / total:5.1f}% {human_bytes(done)}/{human_bytes(total)}"
    return human_bytes(done)


def _say(args: argparse.Namespace, verb: str, d: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(d))
    else:
        print(f"{verb} {d['id']}: {d['name']} ({d['state']})")


@_service_errors
async def run_action(args: argparse.Namespace) -> int:
    client = client_from_args(args)
    past = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[args.action]
    failed = 0
    for download_id in args.ids:
        try:
            d = await _call(client, "POST", f"/api/downloads/{_id_path(download_id)}/{args.action}")
        except ServiceUnreachable:
            raise
        except ModelhaulError as exc:
            if len(args.ids) == 1:
                raise
            print_error(exc, what=download_id)
            failed += 1
            continue
        _say(args, past, d)
    return 1 if failed else 0


@_service_errors
async def run_priority(args: argparse.Namespace) -> int:
    client = client_from_args(args)
    d = await _call(
        client,
        "PUT",
        f"/api/downloads/{_id_path(args.id)}/priority",
        {"priority": args.priority},
    )
    _say(args, f"priority {d['priority']} for", d)
    return 0


@_service_errors
async def run_limit(args: argparse.Namespace) -> int:
    client = client_from_args(args)
    if args.rate is None:
        data = await _call(client, "GET", "/api/limit")
    else:
        text = args.rate.strip().lower()
        rate = None if text in _NO_LIMIT else parse_rate(text)
        data = await _call(client, "PUT", "/api/limit", {"rate": rate})
    rate = data.get("rate_bytes_per_s") if isinstance(data, dict) else None
    if args.json:
        print(json.dumps({"rate_bytes_per_s": rate}))
    else:
        print(f"limit: {f'{human_bytes(rate)}/s' if rate else 'unlimited'}")
    return 0


# ---------------------------------------------------------------------- get/pull --via-server


async def maybe_via_server(args: argparse.Namespace) -> int | None:
    """For ``get``/``pull``: with ``--via-server``, do the work through the service and return
    the exit status; otherwise None (the command runs locally)."""
    if not getattr(args, "via_server", False):
        return None
    sent = _Sent()
    try:
        if getattr(args, "header", None):
            raise InvalidInput("-H/--header cannot be used with --via-server")
        if args.command == "get":
            entries = _get_entries(args)
        elif args.command == "pull":
            body = _pull_body(args)
        else:
            raise InvalidInput(f"--via-server does not apply to '{args.command}'")
        client = client_from_args(args)
        local = await _local_paths(client)
        if args.command == "get":
            requests = _get_requests(args, entries, local=local)
        else:
            requests = [("/api/pulls", body)]
        return await _follow(args, client, requests, sent, local=local)
    except asyncio.CancelledError:
        _say_interrupted(args, _interruption(sent))
        raise
    except ModelhaulError as exc:
        if getattr(args, "json", False):  # --json promises a result line last, whatever failed
            JsonRenderer(sys.stdout).result(
                {"event": "result", "status": "failed", "path": None, "error": exc.to_dict()}
            )
        if isinstance(exc, InvalidInput):
            raise
        return _report(exc)


async def _local_paths(client: ServiceClient) -> bool:
    """Whether the service takes this machine's absolute paths from us (see the service's
    ``AccessPolicy.trusts_paths_of``); a service that does not say so does not."""
    health = await _call(client, "GET", "/api/health")
    if not isinstance(health, dict) or health.get("service") != "modelhaul":
        raise client._not_ours()
    return health.get("local_paths") is True


def _get_entries(args: argparse.Namespace) -> list[UrlEntry]:
    # Imported here: the steering commands should not pay for aiohttp at start-up.
    from ..policy.urls import check_url
    from ..sources.url import UrlEntry, parse_input_list

    entries = [UrlEntry(url=check_url(u)) for u in args.urls]
    if args.input_file:
        try:
            text = Path(args.input_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read input file {args.input_file}: {exc}") from exc
        for entry in parse_input_list(text, source=args.input_file):
            if entry.out is not None:
                _check_out(entry.out, args.input_file)
            entries.append(entry)
    if not entries:
        raise InvalidInput("no URL given", hint="Usage: modelhaul get --via-server URL [URL ...]")
    if args.output is not None and len(entries) > 1:
        raise InvalidInput("-o takes one URL; use out= lines in an input file for several")
    return entries


def _check_out(out: str, source: str) -> None:
    """An ``out=`` name stays inside -d, as for ``get`` without ``--via-server``."""
    try:
        safe_relpath(out, where=f"{source}: out=")
    except InvalidInput:
        raise InvalidInput(
            f"{source}: out={out!r} is not a relative path inside the output directory",
            hint="Use a plain name or a relative path without '..' (the directory comes from -d).",
        ) from None


def _get_requests(
    args: argparse.Namespace, entries: list[UrlEntry], *, local: bool
) -> list[tuple[str, dict[str, Any]]]:
    """The bodies for ``get``: with ``local``, absolute paths resolved here, so files land
    where ``get`` without ``--via-server`` would put them; else names in the service's
    download directory (-d a folder there)."""
    given_dir = args.dir not in (".", "./", "")
    folder = os.path.abspath(args.dir) if local else (args.dir if given_dir else None)
    out: list[tuple[str, dict[str, Any]]] = []
    for entry in entries:
        name = args.output if args.output is not None else entry.out
        body: dict[str, Any] = {"url": entry.url}
        if name is not None and local:
            body["out"] = os.path.abspath(os.path.join(folder, name))
        elif name is not None:
            body["out"] = name
            if folder is not None:
                body["dir"] = folder
        elif folder is not None:
            body["dir"] = folder
        sha = args.sha256 if args.sha256 and len(entries) == 1 else entry.sha256
        if sha:
            body["sha256"] = sha
        out.append(("/api/downloads", body))
    return out


def _pull_body(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "local_dir", None):
        raise InvalidInput(
            "--local-dir cannot be used with --via-server",
            hint="The service writes only into its store; link or copy from there.",
        )
    body: dict[str, Any] = {"include": list(args.include), "exclude": list(args.exclude)}
    from ..sources.manifest import format_of

    source = args.source
    path = Path(source)
    if not source.startswith(("http://", "https://")) and (
        format_of(source) is not None or path.is_file()
    ):
        body["manifest"] = _read_manifest(path)
    else:
        body["source"] = source
    return body


def _read_manifest(path: Path) -> Any:
    """A local manifest's data, sent inline: the service never reads client-named paths."""
    import yaml

    from ..sources.manifest import MAX_MANIFEST_BYTES, format_of, sniff_format

    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise InvalidInput(f"{path}: the manifest is larger than 16 MiB")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read manifest {path}: {exc}") from None
    fmt = format_of(path.name) or sniff_format(text)
    try:
        if fmt == "toml":
            return tomllib.loads(text)
        if fmt == "json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, ValueError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInput(f"{path}: not valid {fmt.upper()}: {first}") from None


@dataclass(slots=True)
class _Sent:
    """What a ``--via-server`` run has handed to the service so far: what Ctrl-C leaves there."""

    server: str = DEFAULT_SERVER
    ids: list[str] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)
    sending: bool = False  # a request is on its way: the service may take it, answer unread

    def going_on(self) -> list[str]:
        return [i for i in self.ids if i not in self.ended]


def _interruption(sent: _Sent) -> Cancelled:
    """What Ctrl-C means here: this client stops following, and the service goes on with
    every download it took (only 'modelhaul cancel' stops one)."""
    server = "" if sent.server == DEFAULT_SERVER else f" --server {sent.server}"
    going_on = sent.going_on()
    if not going_on and not sent.sending:
        return Cancelled(
            "interrupted; nothing was left running in the service", hint="Run the command again."
        )
    if not going_on:
        return Cancelled(
            "interrupted while handing the work to the service; it may have taken it",
            hint=f"'modelhaul queue{server}' shows what it holds; 'modelhaul cancel ID{server}' "
            "stops a download.",
        )
    it = "it" if len(going_on) == 1 else "them"
    message = (
        f"interrupted; download {going_on[0]} goes on in the service"
        if len(going_on) == 1
        else f"interrupted; downloads {', '.join(going_on)} go on in the service"
    )
    if sent.sending:
        message += ", and it may have taken the next one too"
    return Cancelled(
        message,
        hint=f"'modelhaul queue{server}' shows {it}; "
        f"'modelhaul cancel {' '.join(going_on)}{server}' stops {it}.",
    )


def _say_interrupted(args: argparse.Namespace, err: Cancelled) -> None:
    """Tell main what to say on stderr, and with --json end with the result line."""
    args.interrupted = f"{err.message} ({err.hint.rstrip('.')})"
    if getattr(args, "json", False):
        JsonRenderer(sys.stdout).result(
            {"event": "result", "status": "cancelled", "path": None, "error": err.to_dict()}
        )


async def _follow(
    args: argparse.Namespace,
    client: ServiceClient,
    requests: list[tuple[str, dict[str, Any]]],
    sent: _Sent,
    *,
    local: bool,
) -> int:
    """Submit, then follow the downloads in the event stream until each one ends; ``sent``
    keeps what the service holds, for an interruption to say."""
    follower = EventFollower(client)
    renderer: Renderer = Renderer()
    sent.server = client.base_url
    ids = sent.ids
    try:
        snapshot = await follower.start()  # before submitting: no event can fall in between
        views: dict[str, dict[str, Any]] = {}
        for path, body in requests:
            sent.sending = True
            view = await _call(client, "POST", path, body)
            sent.sending = False
            ids.append(view["id"])
            views[view["id"]] = view
        # The stdout of now, not of import time (JsonRenderer's default), so a redirected
        # stdout gets the result line.
        renderer = (
            JsonRenderer(sys.stdout)
            if args.json
            else make_renderer(json_mode=False, quiet=args.quiet, files=len(ids))
        )
        for download_id in ids:
            renderer.notice(f"download {download_id} queued at {client.base_url}")
        if args.command == "get" and not local and snapshot.get("download_dir"):
            renderer.notice(f"the service writes into its directory {snapshot['download_dir']}")
        renderer.start()
        pending = {i for i in ids if views[i]["state"] not in _FINAL}
        sent.ended.update(set(ids) - pending)
        while pending:
            event = await follower.next()
            view = event.get("download")
            if not isinstance(view, dict) or view.get("id") not in views:
                continue
            views[view["id"]] = view
            if view["id"] not in pending:
                continue
            renderer.progress(view["name"], _as_progress(view))
            if view["state"] in _FINAL:
                pending.discard(view["id"])
                sent.ended.add(view["id"])
                _file_done(renderer, view)
    except asyncio.CancelledError:
        renderer.stop()  # before main says what the interruption left behind
        raise
    finally:
        follower.close()
    renderer.stop()
    if not (args.json or args.quiet):
        for download_id in ids:
            _say_where(renderer, views[download_id])
    return _finish(views, ids, renderer)


def _file_done(renderer: Renderer, view: dict[str, Any]) -> None:
    """A download ended: a URL's result is a file's; a model's is the whole pull, so its bar
    ends at the bytes the pull fetched (its summary follows in ``_say_where``)."""
    if view["kind"] == "model" and view["state"] == "completed":
        fetched = int((view.get("result") or {}).get("bytes_fetched") or 0)
        done = {**view, "bytes_done": fetched, "total": fetched, "speed": 0.0, "eta": None}
        renderer.progress(view["name"], _as_progress(done))
        return
    renderer.file_done(view["name"], _record(view))


def _say_where(renderer: Renderer, view: dict[str, Any]) -> None:
    result = view.get("result") or {}
    if view["state"] != "completed" or not result.get("path"):
        return
    if view["kind"] == "model":
        fetched = len(result.get("fetched") or ())
        present = int(result.get("files") or 0) - fetched
        commit = str(result.get("commit") or "")[:12]
        renderer.notice(
            f"{result.get('model')}@{commit}: {fetched} fetched, {present} already present "
            f"-> {result['path']}"
        )
    else:
        renderer.notice(f"download {view['id']} saved as {result['path']}")


def _as_progress(view: dict[str, Any]) -> Progress:
    return Progress(
        url=view["source"],
        path=view.get("path") or view["name"],
        bytes_done=view.get("bytes_done") or 0,
        total=view.get("total"),
        speed_bytes_per_s=view.get("speed") or 0.0,
        eta_s=view.get("eta"),
        connections=view.get("connections") or 0,
        attempts=0,
        resumed_from=0,
        elapsed_s=0.0,
    )


def _record(view: dict[str, Any]) -> dict[str, Any]:
    if view["state"] == "completed" and view.get("result"):
        return dict(view["result"])
    return {
        "event": "result",
        "status": view["state"],
        "url": view["source"],
        "path": None,
        "error": view.get("error") or {"category": view["state"], "message": view["state"]},
        "id": view["id"],
    }


def _finish(views: dict[str, dict[str, Any]], ids: list[str], renderer: Renderer) -> int:
    records = [_record(views[i]) for i in ids]
    failed = [r for r in records if r.get("status") != "completed"]
    for r in failed:
        err = r.get("error") or {}
        print_error(
            RemoteError(
                str(err.get("message") or "failed"),
                category=str(err.get("category") or "client_error"),
                hint=err.get("hint") or None,
            ),
            what=r.get("id") if len(records) > 1 else None,
        )
    if len(records) == 1:
        renderer.result(records[0])
    else:
        renderer.result(
            {
                "event": "result",
                "status": "failed" if failed else "completed",
                "files": records,
                "error": failed[0].get("error") if failed else None,
            }
        )
    if not failed:
        return 0
    categories = {(r.get("error") or {}).get("category") for r in failed}
    if categories == {"invalid_input"}:
        return 2
    if categories == {"cancelled"}:
        return 130  # as for 'get' without --via-server: cancelled, not failed
    return 1
