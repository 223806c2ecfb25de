"""The command registry: each command module adds its own subparser."""

from __future__ import annotations

import argparse

from . import demo, doctor, get, models, remote, serve, store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    get.register(sub)
    models.register(sub)
    store.register(sub)
    doctor.register(sub)
    demo.register(sub)
    serve.register(sub)
    remote.register(sub)
