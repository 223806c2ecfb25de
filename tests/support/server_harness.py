"""Real modelhaul services for tests: uvicorn in a thread, or ``modelhaul serve`` in a subprocess,
always on 127.0.0.1 with an ephemeral port; plus readers for the live event streams.

Waits are bounded and wait on real conditions (an event arriving, a line printed, a file
appearing); nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from conftest import cli_env, modelhaul_cmd
from modelhaul.config import DownloadConfig, RetryPolicy, SegmentPolicy
from modelhaul.server.app import create_app
from modelhaul.server.config import ServiceConfig
from modelhaul.server.runner import bind_socket, bound_url, make_server, run_service
from modelhaul.server.security import AccessPolicy
from modelhaul.server.service import Service
from modelhaul.store.inventory import default_db_path

KiB = 1024
MiB = 1024 * KiB
FINAL = ("completed", "failed", "cancelled")


def wait_until(condition: Callable[[], Any], timeout_s: float = 20.0, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; bounded by ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s} s: {what or condition}")
        time.sleep(0.02)


def service_config(
    tmp_path: Path, *, hf_endpoint: str = "http://127.0.0.1:9", **kw: Any
) -> ServiceConfig:
    """A service in the test's isolated home (see conftest), with fast retries."""
    state = Path(os.environ["MODELHAUL_STATE_DIR"])
    store = Path(os.environ["HF_HUB_CACHE"])
    values: dict[str, Any] = {
        "download_dir": tmp_path / "downloads",
        "store_root": store,
        "state_dir": state,
        "store_db": default_db_path(store),
        "hf_endpoint": hf_endpoint,
        "download": DownloadConfig(
            retry=RetryPolicy(retries=1, initial_delay_s=0.01, max_delay_s=0.05),
            segments=SegmentPolicy(read_buffer_bytes=64 * KiB, write_batch_bytes=64 * KiB),
        ),
    }
    values.update(kw)
    return ServiceConfig(**values)


class ServerThread:
    """The real app under uvicorn, in a thread of this process."""

    def __init__(self, config: ServiceConfig, policy: AccessPolicy | None = None) -> None:
        self.config = config
        self.policy = policy or AccessPolicy(bind_host="127.0.0.1")
        self.service = Service(config)
        self._sock = bind_socket("127.0.0.1", 0)
        self.url = bound_url(self._sock)
        self._started = threading.Event()
        self._server = make_server(
            create_app(self.service, self.policy), self.service, on_started=self._started.set
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-service", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(run_service(self._server, self._sock))
        except BaseException as exc:  # reported to the test by start()/stop()
            self._error = exc
        finally:
            self._started.set()

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._started.wait(20) or self._error is not None or not self._server.started:
            raise RuntimeError(f"the service did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        self._server.request_exit()
        self._thread.join(20)
        self._sock.close()
        if self._thread.is_alive():
            raise RuntimeError("the service did not stop within 20 s")
        if self._error is not None and not isinstance(self._error, SystemExit):
            raise self._error

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=15, **kw)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess:
    """``modelhaul serve --port 0 --json`` as a user runs it."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log = tmp_path / f"serve-{time.monotonic_ns()}.log"
        self._stderr = self.log.open("wb")
        self.proc = subprocess.Popen(
            modelhaul_cmd("serve", "--port", "0", "--json", *args),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env or cli_env(),
        )
        lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
        try:
            line = lines.get(timeout=30)
        except queue.Empty:
            self.kill()
            raise RuntimeError(f"modelhaul serve did not start: {self.log.read_text()}") from None
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"modelhaul serve exited: {self.log.read_text()}")
        self.listening = json.loads(line)
        self.url: str = self.listening["url"]

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=15, **kw)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a crash or the OOM killer would."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(15)
        self._stderr.close()

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(
                f"modelhaul serve did not stop within 20 s:\n{self.output()}"
            ) from None
        self._stderr.close()
        return code

    def output(self) -> str:
        """What the service wrote to stderr (printed by tests, shown when they fail)."""
        return self.log.read_text(errors="replace")


class EventReader:
    """Reads ``/events`` (Server-Sent Events) in a thread; tests wait for matching events."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._client = httpx.Client(base_url=url, timeout=httpx.Timeout(15, read=None))
        self._headers = headers or {}
        self._error: BaseException | None = None
        self._done = False
        self._thread = threading.Thread(target=self._run, name="test-sse", daemon=True)
        self._thread.start()
        self.snapshot = self.wait_for(lambda e: e["event"] == "snapshot", what="the snapshot")

    def _run(self) -> None:
        try:
            with self._client.stream("GET", "/events", headers=self._headers) as resp:
                resp.raise_for_status()
                for event in _sse_events(resp.iter_lines()):
                    with self._cond:
                        self.events.append(event)
                        self._cond.notify_all()
        except BaseException as exc:  # surfaced by wait_for
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout_s: float = 20.0, what: str = ""
    ) -> dict[str, Any]:
        """The first event (since the stream opened) that matches."""
        with self._cond:
            found = self._cond.wait_for(
                lambda: any(match(e) for e in self.events) or self._done, timeout_s
            )
            for e in self.events:
                if match(e):
                    return e
        if found and self._done:
            raise RuntimeError(f"the event stream ended before {what}: {self._error!r}")
        raise TimeoutError(f"no event within {timeout_s} s: {what}")

    def wait_download(
        self, download_id: str, state: str, timeout_s: float = 20.0
    ) -> dict[str, Any]:
        event = self.wait_for(
            lambda e: (
                e["event"] == "download"
                and e["download"]["id"] == download_id
                and e["download"]["state"] == state
            ),
            timeout_s,
            f"download {download_id} {state}",
        )
        return event["download"]

    def close(self) -> None:
        self._client.close()


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


def wait_state(
    client: httpx.Client, download_id: str, states: tuple[str, ...], timeout_s: float = 30
) -> dict[str, Any]:
    """Poll GET /api/downloads/ID until its state is one of ``states``."""

    def check() -> dict[str, Any] | None:
        view = client.get(f"/api/downloads/{download_id}").json()
        return view if view.get("state") in states else None

    return wait_until(check, timeout_s, f"download {download_id} in {states}")


def point_hub_at_mirror(server: ServerThread, tmp_path: Path, monkeypatch: Any) -> None:
    """Point huggingface_hub in this process at ``server``'s mirror: its import-time constants,
    Xet off, and its agent registry pre-cached (so nothing reaches for the network)."""
    from huggingface_hub import constants

    registry = tmp_path / "agent_harnesses.json"
    registry.write_text(json.dumps({"standardEnvVars": [], "harnesses": {}}))
    endpoint = server.url + "/hf"
    for name, value in {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "AGENT_HARNESSES_PATH": str(registry),
    }.items():
        monkeypatch.setattr(constants, name, value)
