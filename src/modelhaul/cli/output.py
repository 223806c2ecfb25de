"""Which renderer a command gets: JSON lines, nothing, rich bars on a terminal, or plain lines.

Above both render.py (the plain renderers) and bars.py (rich, loaded only for a terminal), so
neither has to know the other's subclasses.
"""

from __future__ import annotations

import sys

from .render import JsonRenderer, PlainRenderer, QuietRenderer, Renderer


def make_renderer(*, json_mode: bool, quiet: bool, files: int | None = None) -> Renderer:
    if json_mode:
        return JsonRenderer()
    if quiet:
        return QuietRenderer()
    if sys.stderr.isatty():
        from .bars import RichRenderer

        return RichRenderer(files=files)
    return PlainRenderer()
