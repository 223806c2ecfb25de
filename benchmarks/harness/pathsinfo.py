"""The static Hub's one dynamic answer: ``POST /api/models/ORG/NAME/paths-info/REV``.

The Hub answers it with the tree entries of the paths named in the body (form fields
``paths=...``, repeatable, or JSON ``{"paths": [...]}``), leaving out paths that do not exist.
nginx cannot pick entries by request body, so it proxies this route here: a small stdlib
server in the harness process, answering from the model's ``tree.json``. olah asks it once per
file (and caches the answer); huggingface_hub's ``snapshot_download`` never does, so the
tools of case F do not touch it.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _requested_paths(body: bytes, content_type: str) -> list[str]:
    if "json" in content_type:
        paths = json.loads(body or b"{}").get("paths", [])
        return [paths] if isinstance(paths, str) else list(paths)
    return urllib.parse.parse_qs(body.decode(), keep_blank_values=True).get("paths", [])


class PathsInfoServer:
    """Answers paths-info for one model on 127.0.0.1:``port``; stopped by ``close``."""

    def __init__(self, tree_json: Path) -> None:
        entries = json.loads(tree_json.read_text())
        by_path = {str(e["path"]): e for e in entries}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet: nginx is the origin's log
                pass

            def _answer(self, with_body: bool) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else b""
                paths = _requested_paths(body, self.headers.get("Content-Type", ""))
                out = json.dumps([by_path[p] for p in paths if p in by_path]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                if with_body:
                    self.wfile.write(out)

            def do_POST(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
