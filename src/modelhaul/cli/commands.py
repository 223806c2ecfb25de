"""The command registry: each command module adds its own subparser."""

from __future__ import annotations

import argparse

from . import get


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    get.register(sub)
