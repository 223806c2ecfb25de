"""``modelhaul ls | rm | pin | unpin | gc``: managing the local model store."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..errors import InvalidInput, ModelhaulError, human_bytes, plural
from ..policy.units import parse_size
from .options import state_dir
from .words import cli_error, cli_hint

if TYPE_CHECKING:
    from ..store.inventory import Inventory, StoredModel

# inventory pulls in huggingface_hub; imported inside the commands so that other commands
# (and --help) start without it.


# Parsers are declared whole, a command at a time: alike in shape only (each names its own
# flags and help, the CLI contract), so nothing is shared but add_transfer_options.
def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ls",
        help="list the models in the store",
        description="List the models in the Hugging Face cache: revisions, files, size (a blob "
        "shared by revisions counted once), status, pinned, last use; then the total and the "
        "free space.",
    )
    p.add_argument("--json", action="store_true", help="one JSON array, one object per model")
    p.set_defaults(run=run_ls)

    p = sub.add_parser(
        "rm",
        help="remove a model or one revision and its unreferenced blobs",
        description="Remove a model from the Hugging Face cache, or with @REVISION only that "
        "revision, together with the blobs nothing else uses. Asks first when run on a "
        "terminal and refuses without --yes when there is none; refuses a pinned model or one "
        "being downloaded unless --force.",
    )
    p.add_argument(
        "model",
        metavar="MODEL[@REVISION]",
        help="ORG/NAME (datasets/ORG/NAME for a dataset), optionally @ a branch, tag or commit",
    )
    p.add_argument(
        "--force", action="store_true", help="remove even a pinned model, or one downloading"
    )
    p.add_argument(
        "-y", "--yes", action="store_true", help="do not ask (needed without a terminal)"
    )
    p.add_argument("--json", action="store_true", help="one JSON result object")
    p.set_defaults(run=run_rm)

    for name, pinned in (("pin", True), ("unpin", False)):
        p = sub.add_parser(
            name,
            help=f"{name} a model ({'never' if pinned else 'again'} evicted by gc)",
            description="Pin a model: gc and --max-store-size never evict it."
            if pinned
            else "Unpin a model: gc and --max-store-size may evict it again.",
        )
        p.add_argument("model", metavar="MODEL", help="ORG/NAME (datasets/ORG/NAME for a dataset)")
        p.add_argument("--json", action="store_true", help="one JSON result object")
        p.set_defaults(run=run_pin, pinned=pinned)

    p = sub.add_parser(
        "gc",
        help="evict least recently used unpinned models to fit a size",
        description="Remove partial downloads untouched for --partial-age and, with --max-size, "
        "evict least recently used models until the store fits. Pinned models and models "
        "being downloaded are kept.",
    )
    p.add_argument("--max-size", metavar="SIZE", help="the store's size cap, e.g. 50G")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed")
    p.add_argument(
        "--partial-age",
        default="7d",
        metavar="AGE",
        help="remove partial downloads untouched for this long (e.g. 12h, 7d; default 7d)",
    )
    p.add_argument(
        "--json", action="store_true", help="one JSON object: what was removed, sizes before/after"
    )
    p.set_defaults(run=run_gc)


def open_inventory() -> Inventory:
    from ..store.inventory import Inventory, default_db_path
    from ..store.repo import hf_cache_root
    from ..store.statedb import StateDB

    root = hf_cache_root(os.environ)
    db = StateDB(default_db_path(root, os.environ.get("MODELHAUL_DB")))
    return Inventory(root, db, lock_dir=state_dir() / "locks")


def parse_age(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise InvalidInput(f"bad age {text!r}", hint="Use a number with s, m, h, d or w, e.g. 12h.")
    mult = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    return float(m.group(1)) * mult


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    delta = datetime.now(UTC).timestamp() - ts
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= secs:
            return f"{int(delta // secs)}{unit} ago"
    return "just now"


async def run_ls(args: argparse.Namespace) -> int:
    # rich only for the table: pull records its use through open_inventory, and rich is slow to
    # import (the same reason as in remote.py)
    from rich.console import Console
    from rich.table import Table

    inv = open_inventory()
    models = inv.scan()
    if args.json:
        print(json.dumps([m.to_dict() for m in models]))
        return 0
    used, free = inv.total_size(models), inv.disk_free()
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "REVISIONS", "FILES", "SIZE", "STATUS", "PINNED", "LAST USED"):
        table.add_column(col, justify="right" if col in ("FILES", "SIZE") else "left")
    for m in models:
        table.add_row(
            m.name if m.repo_type == "model" else f"{m.repo_type}s/{m.name}",
            ", ".join(m.revisions) or "-",
            _files_text(m),
            human_bytes(m.size),
            _status_text(m),
            "yes" if m.pinned else "",
            _ago(m.last_used),
        )
    console = Console(width=None if sys.stdout.isatty() else 160)
    if models:
        console.print(table)
    else:
        console.print(f"No models in {inv.root}.")
    console.print(
        f"{plural(len(models), 'model')}, {human_bytes(used)} used, {human_bytes(free)} free "
        f"in {inv.root}"
    )
    return 0


def _status_text(m: StoredModel) -> str:
    if m.partial_bytes and m.status in ("partial", "downloading"):
        return f"{m.status} (+{human_bytes(m.partial_bytes)} received)"
    return m.status


def _files_text(m: StoredModel) -> str:
    """``2/3`` when a revision's listing names files the store lacks."""
    if m.files_listed is not None and m.files < m.files_listed:
        return f"{m.files}/{m.files_listed}"
    return str(m.files)


def _confirm(question: str) -> bool:
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def print_refusal(exc: ModelhaulError) -> None:
    """The error in the store's own words: no guidance, which is about web addresses."""
    print(f"modelhaul: error: {exc.message}", file=sys.stderr)
    hint = cli_hint(exc)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)


def _refuse(args: argparse.Namespace, exc: ModelhaulError) -> int:
    """A store command that cannot do what it was asked: the error, a JSON result with
    --json, exit status 2."""
    print_refusal(exc)
    if getattr(args, "json", False):
        print(json.dumps({"event": "result", "status": "failed", "error": cli_error(exc)}))
    return 2


def _print_completed(**fields: object) -> None:
    """The --json result line of a store command that did what it was asked."""
    print(json.dumps({"event": "result", "status": "completed", **fields, "error": None}))


def _not_in_store(exc: ModelhaulError) -> ModelhaulError:
    """The model is not in the store: say where to look, not how to pull it."""
    return type(exc)(exc.message, hint="`modelhaul ls` lists what is.")


async def run_rm(args: argparse.Namespace) -> int:
    from ..store.inventory import Pinned, parse_model_ref
    from ..store.repo import NotInStore

    repo_type, repo_id, revision = parse_model_ref(args.model)
    inv = open_inventory()
    try:
        model = inv.find(repo_id, repo_type)
    except NotInStore as exc:
        return _refuse(args, _not_in_store(exc))
    what = f"{repo_id}@{revision}" if revision else f"{repo_id} ({human_bytes(model.size)})"
    if model.pinned and not args.force:
        return _refuse(
            args,
            Pinned(
                f"{repo_id} is pinned; nothing removed",
                hint=f"Unpin it first (modelhaul unpin {repo_id}), or pass --force.",
            ),
        )
    if not args.yes:
        if not sys.stdin.isatty():
            return _refuse(
                args,
                InvalidInput(
                    f"not removing {what} without confirmation, and there is no terminal to ask",
                    hint="Pass --yes to remove it without asking.",
                ),
            )
        if not _confirm(f"Remove {what}?"):
            print("modelhaul: nothing removed", file=sys.stderr)
            return 1
    try:
        freed = inv.remove(repo_id, revision, repo_type=repo_type, force=args.force)
    except NotInStore as exc:  # a revision the model does not have
        return _refuse(args, exc)
    if args.json:
        _print_completed(name=repo_id, revision=revision, freed=freed)
    else:
        print(f"removed {what}, freed {human_bytes(freed)}")
    return 0


async def run_pin(args: argparse.Namespace) -> int:
    from ..store.inventory import parse_model_ref
    from ..store.repo import NotInStore

    repo_type, repo_id, _rev = parse_model_ref(args.model)
    inv = open_inventory()
    try:
        inv.set_pinned(repo_id, args.pinned, repo_type)
    except NotInStore as exc:
        return _refuse(args, _not_in_store(exc))
    if args.json:
        _print_completed(name=repo_id, pinned=args.pinned)
    else:
        print(f"{'pinned' if args.pinned else 'unpinned'} {repo_id}")
    return 0


async def run_gc(args: argparse.Namespace) -> int:
    max_size = parse_size(args.max_size, what="--max-size") if args.max_size is not None else None
    inv = open_inventory()
    result = inv.gc(max_size, dry_run=args.dry_run, partial_age_s=parse_age(args.partial_age))
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for m in result.evicted:
        print(f"{verb} {m.name} ({human_bytes(m.size)}, last used {_ago(m.last_used)})")
    for p in result.partials:
        print(
            f"{verb} partial {p.path} ({human_bytes(p.size)}, untouched for {p.age_s / 3600:.0f}h)"
        )
    print(
        f"{'would free' if args.dry_run else 'freed'} {human_bytes(result.freed)}; "
        f"store {human_bytes(result.size_before)} -> {human_bytes(result.size_after)}"
    )
    if result.unmet and max_size is not None:
        print(
            f"modelhaul: the store still exceeds {human_bytes(max_size)}: the rest is pinned or "
            "downloading (modelhaul unpin MODEL to allow eviction)",
            file=sys.stderr,
        )
    return 0
