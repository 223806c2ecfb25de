"""``get`` and ``pull`` with ``--via-server``: hand the work to a running ``modelhaul serve``,
then follow it in the service's event stream and report it as the local command would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..client.events import EventFollower
from ..client.service import DEFAULT_SERVER, FINAL_STATES, RemoteError, ServiceClient
from ..errors import Cancelled, Category, InvalidInput, ModelhaulError
from ..events import Progress
from .output import make_renderer
from .remote import add_server_options, call, client_from_args, report_failure
from .render import JsonRenderer, Renderer, print_error
from .words import cli_error

if TYPE_CHECKING:
    from ..sources.url import UrlEntry


def add_via_server_option(p: argparse.ArgumentParser) -> None:
    """Add ``--via-server`` (and ``--server``/``--token``) to ``get`` or ``pull``."""
    p.add_argument(
        "--via-server",
        action="store_true",
        help="hand the work to a running 'modelhaul serve' and follow it there",
    )
    add_server_options(p)


async def maybe_via_server(args: argparse.Namespace) -> int | None:
    """For ``get``/``pull``: with ``--via-server``, do the work through the service and return
    the exit status; otherwise None (the command runs locally)."""
    if not getattr(args, "via_server", False):
        return None
    sent = _Sent()
    try:
        if getattr(args, "header", None):
            raise InvalidInput("-H/--header cannot be used with --via-server")
        if getattr(args, "peers", None) or getattr(args, "slice_size", None):
            # The service pulls with its own settings: peers given here would be ignored.
            raise InvalidInput(
                "--peers and --slice-size cannot be used with --via-server",
                hint="Drop --via-server to pull through peers from this process (the "
                "service's pulls take no peers).",
            )
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
                {"event": "result", "status": "failed", "path": None, "error": cli_error(exc)}
            )
        if isinstance(exc, InvalidInput):
            raise
        return report_failure(exc)


async def _local_paths(client: ServiceClient) -> bool:
    """Whether the service takes this machine's absolute paths from us (see the service's
    ``AccessPolicy.trusts_paths_of``); a service that does not say so does not."""
    health = await call(client, "GET", "/api/health")
    if not isinstance(health, dict) or health.get("service") != "modelhaul":
        raise client.not_ours()
    return health.get("local_paths") is True


def _get_entries(args: argparse.Namespace) -> list[UrlEntry]:
    # Imported here: the steering commands should not pay for aiohttp at start-up.
    from ..policy.urls import check_url
    from ..sources.url import UrlEntry
    from .entries import read_input_file

    entries = [UrlEntry(url=check_url(u)) for u in args.urls]
    if args.input_file:
        entries.extend(read_input_file(args.input_file))
    if not entries:
        raise InvalidInput("no URL given", hint="Usage: modelhaul get --via-server URL [URL ...]")
    if args.output is not None and len(entries) > 1:
        raise InvalidInput("-o takes one URL; use out= lines in an input file for several")
    return entries


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
    args.interrupted = f"{err.message} ({(err.hint or '').rstrip('.')})"
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
            view = await call(client, "POST", path, body)
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
        pending = {i for i in ids if views[i]["state"] not in FINAL_STATES}
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
            if view["state"] in FINAL_STATES:
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
                category=str(err.get("category") or Category.CLIENT_ERROR),
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
