"""nginx and the delay proxy in front of it, started for one harness run and stopped after.

The proxy starts first (it connects to nginx per client connection, so nginx need not be up
yet): the Hub's redirects must name the CDN's proxy port, which is only known once the proxy
listens.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
from pathlib import Path

from .common import HERE, RTT_MS, WORK, free_port, log, process_cpu, stop_child, wait_port
from .hubrepo import HubModel
from .nginx import NginxPorts, render, upstream_log
from .pathsinfo import PathsInfoServer
from .tls import TlsFiles

# Proxy listeners by name: (mode, RTT ms, which nginx server).
LISTENERS: dict[str, tuple[str, int, str]] = {
    str(RTT_MS): ("http", RTT_MS, "http"),  # case C: per connection + per request
    "0": ("http", 0, "http"),  # self-check: the proxy's own cost
    "tcp": ("tcp", RTT_MS, "http"),  # case E's plain-HTTP control
    "tls": ("tcp", RTT_MS, "https"),  # case E
    "hub": ("http", RTT_MS, "hub"),  # case F: Hub API and /resolve/
    "cdn": ("http", RTT_MS, "cdn"),  # case F: LFS downloads
}


class Servers:
    """nginx on 127.0.0.1 plus the delay proxy in front of it; stopped on exit."""

    def __init__(self, peer_python: str, tls: TlsFiles | None, hub: HubModel | None) -> None:
        self.peer_python = peer_python
        self.tls = tls
        self.hub = hub
        self.nginx: subprocess.Popen[bytes] | None = None
        self.proxy: subprocess.Popen[bytes] | None = None
        self.ports = NginxPorts(free_port())
        self.proxy_ports: dict[str, int] = {}
        self.paths_info: PathsInfoServer | None = None

    @property
    def port(self) -> int:
        return self.ports.http

    def __enter__(self) -> Servers:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        if self.hub:
            self.paths_info = PathsInfoServer(self.hub.root / "tree.json")
        self.ports = NginxPorts(
            http=self.ports.http,
            https=free_port() if self.tls else None,
            hub=free_port() if self.hub else None,
            cdn=free_port() if self.hub else None,
            paths_info=self.paths_info.port if self.paths_info else None,
        )
        self._start_proxy()
        prefix = WORK / "nginx"
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        upstream_log(prefix).unlink(missing_ok=True)  # counts start at 0 for this harness run
        cdn_base = f"http://127.0.0.1:{self.proxy_ports['cdn']}" if self.hub else ""
        conf.write_text(render(prefix, self.ports, self.tls, self.hub, cdn_base))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        argv = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        subprocess.run([*argv, "-t", "-q"], check=True)
        self.nginx = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        for port in (self.ports.http, self.ports.https, self.ports.hub, self.ports.cdn):
            if port:
                wait_port(port)
        log(f"nginx on 127.0.0.1:{self.ports}; delay proxy ports {self.proxy_ports}")

    def _start_proxy(self) -> None:
        upstream = {
            "http": self.ports.http,
            "https": self.ports.https,
            "hub": self.ports.hub,
            "cdn": self.ports.cdn,
        }
        argv = [self.peer_python, str(HERE / "delay_proxy.py")]
        for name, (mode, ms, server) in LISTENERS.items():
            if upstream[server]:
                argv += ["--listen", f"{name}={mode}:{ms}@127.0.0.1:{upstream[server]}"]
        self.proxy = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True
        )
        assert self.proxy.stdout is not None
        line = self.proxy.stdout.readline()
        self.proxy_ports = {k: int(v) for k, v in json.loads(line)["ports"].items()}

    def cpu(self) -> float:
        """CPU seconds used so far by nginx (master + workers) and the delay proxy."""
        pids = [p.pid for p in (self.nginx, self.proxy) if p]
        if self.nginx:
            with contextlib.suppress(OSError):
                kids = Path(f"/proc/{self.nginx.pid}/task/{self.nginx.pid}/children").read_text()
                pids += [int(x) for x in kids.split()]
        return sum(process_cpu(pid) for pid in pids)

    def upstream_bytes(self) -> int:
        """Body bytes the Hub and the CDN have sent so far (responses that have ended)."""
        try:
            lines = upstream_log(WORK / "nginx").read_text().splitlines()
        except FileNotFoundError:
            return 0
        return sum(int(line.split()[2]) for line in lines if len(line.split()) >= 3)

    def url(self, path: str, via: str | None = None, scheme: str = "http") -> str:
        """A URL on nginx (``via=None``) or through one of the proxy's listeners."""
        if via is None:
            port = self.ports.https if scheme == "https" else self.ports.http
        else:
            port = self.proxy_ports[via]
        return f"{scheme}://127.0.0.1:{port}{path}"

    def __exit__(self, *exc: object) -> None:
        if self.proxy:
            stop_child(self.proxy)
        if self.nginx:
            stop_child(self.nginx, signal.SIGQUIT)  # graceful nginx shutdown
        if self.paths_info:
            self.paths_info.close()
