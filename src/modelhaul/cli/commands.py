"""The command registry: each command module adds its own subparser.

Only the module of the command being run is imported, so ``modelhaul get`` does not pay for
huggingface_hub, the server or the demo origin at start-up; help and unknown commands load all.
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


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], command: str | None = None
) -> None:
    """Register ``command``'s module, or every module when it is None or unknown."""
    wanted = COMMANDS.get(command or "")
    modules = [wanted] if wanted else list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        importlib.import_module(f"{__package__}.{name}").register(sub)
