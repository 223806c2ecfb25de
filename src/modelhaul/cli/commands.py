"""The command registry: each command module adds its own subparser.

Only the module of the command being run is imported, so ``modelhaul get`` does not pay for
huggingface_hub, the server or the demo origin at start-up. Without a known command
(``--version``, ``--help``, a typo) no command module is imported at all: the list help shows
comes from ``SUMMARIES``, and a test keeps it equal to what the modules register.
"""

from __future__ import annotations

import argparse
import importlib

# command -> module under modelhaul.cli, in the order help lists them
COMMANDS: dict[str, str] = {
    "get": "get",
    "pull": "models",
    "verify": "models",
    "ls": "store",
    "rm": "store",
    "pin": "store",
    "unpin": "store",
    "gc": "store",
    "doctor": "doctor",
    "serve": "serve",
    "queue": "remote",
    "pause": "remote",
    "resume": "remote",
    "cancel": "remote",
    "priority": "remote",
    "limit": "remote",
    "demo": "demo",
}

# command -> its line in ``modelhaul --help``, as its module registers it (a test compares them)
SUMMARIES: dict[str, str] = {
    "get": "download URLs (segmented, resumable, verified)",
    "pull": "fetch a model (hf://ORG/NAME[@REV] or a manifest) into the Hugging Face cache",
    "verify": "check every file of a stored model; --repair refetches only what is bad",
    "ls": "list the models in the store",
    "rm": "remove a model or one revision and its unreferenced blobs",
    "pin": "pin a model (never evicted by gc)",
    "unpin": "unpin a model (again evicted by gc)",
    "gc": "evict least recently used unpinned models to fit a size",
    "doctor": "check the endpoint, token, clock and cache (and that SOURCE resolves), with fixes",
    "serve": "run the download service: REST API, live events and a web page",
    "queue": "list the downloads of a running service",
    "pause": "pause downloads of a running service (partial data kept)",
    "resume": "resume paused (or retry failed) downloads of a running service",
    "cancel": "cancel downloads of a running service (partial data deleted)",
    "priority": "change a download's priority (higher runs first)",
    "limit": "show or set a running service's global speed limit",
    "demo": "offline demo: a verified download that survives drops, stalls and 503s",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], command: str) -> None:
    """Register ``command``'s module; for anything else, only the names and summaries.

    The summaries are enough for what argparse does without a command: ``--version``, the
    command list of ``--help``, and the choices an unknown command is told about.
    """
    wanted = COMMANDS.get(command)
    if wanted is not None:
        importlib.import_module(f"{__package__}.{wanted}").register(sub)
        return
    for name, summary in SUMMARIES.items():
        sub.add_parser(name, help=summary)


def register_all(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Every command with all its options (for tests and tools that inspect the whole CLI)."""
    for name in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(f"{__package__}.{name}").register(sub)
