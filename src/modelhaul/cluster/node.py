"""What runs on each node of a Ray cluster: its mirror (``modelhaul serve``) and its pull
(``modelhaul pull --json``), each the command line in a child process of the Ray worker.

Why the command line: a node's pull is then exactly ``modelhaul pull`` run on that node, with that
node's environment (store root, token, proxies) and the same flags; and no byte of a model goes
through Ray: the child writes into the node's store and the mirrors serve each other over HTTP.
Only the ``--json`` result line comes back through Ray.

Why tied: each child is killed with its Ray worker (Linux ``PR_SET_PDEATHSIG``), so a node or an
actor that dies leaves no pull writing into its store and no mirror holding its port.

This module imports nothing of Ray at import time; the functions that ask Ray where they run
import it when they run (always inside a Ray worker).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

# Run by the child before it becomes the command: ask the kernel for SIGKILL when the parent (the
# Ray worker) dies, then check the parent is still the one that started us (it may have died
# before the request), then exec. PR_SET_PDEATHSIG is 1; it survives exec.
_TIED = (
    "import ctypes, os, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, 9)\n"
    "    if os.getppid() != int(sys.argv[1]):\n"
    "        os._exit(137)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)

# What a failure quotes of a child's stderr.
_STDERR_TAIL_BYTES = 4000


def modelhaul_argv(*args: str) -> list[str]:
    """The command line ``modelhaul ARGS`` as a child tied to this process."""
    return [sys.executable, "-c", _TIED, str(os.getpid()), "-m", "modelhaul.cli.main", *args]


def options_argv(options: Mapping[str, Any]) -> list[str]:
    """Keywords to command-line options: True is a bare flag, False and None are left out, a
    list repeats the option."""
    argv: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def node_env(
    *, store_root: str | None, endpoint: str | None, peers: Sequence[str] = ()
) -> dict[str, str]:
    """This node's environment, with what the driver decided for every node on top.

    The store root is the node's own unless the driver named one (the same path on every node):
    ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``, as the Ray worker's
    environment says (it inherits ``ray start``'s). ``MODELHAUL_PEERS`` is how ``modelhaul pull``
    takes its peers from the environment; a pull that predates peers ignores it.
    """
    env = dict(os.environ)
    if store_root:
        env["HF_HUB_CACHE"] = store_root
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    if peers:
        env["MODELHAUL_PEERS"] = ",".join(peers)
    else:
        env.pop("MODELHAUL_PEERS", None)
    return env


def node_address() -> str:
    """The address Ray knows this node by: where its mirror listens for the other nodes."""
    import ray

    return str(ray.util.get_node_ip_address())


def stderr_tail(log: IO[bytes]) -> str:
    log.seek(0, os.SEEK_END)
    log.seek(max(0, log.tell() - _STDERR_TAIL_BYTES))
    return log.read().decode("utf-8", "replace").strip()


class Mirror:
    """One node's ``modelhaul serve`` on the node's address and a free port; its store is the
    node's store root, so it serves what this node has pulled and fetches what it lacks upstream
    once (the mirror's single flight).

    Made a Ray actor by the driver (``ray.remote(Mirror)``) and pinned to its node.
    """

    def __init__(
        self, *, upstream: str | None, store_root: str | None, start_timeout_s: float = 60.0
    ) -> None:
        options = {"host": node_address(), "port": 0, "json": True, "upstream": upstream}
        args = ["serve", *options_argv(options)]
        self._env = node_env(store_root=store_root, endpoint=upstream)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - kept open while the mirror runs
        self._proc = subprocess.Popen(
            modelhaul_argv(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=self._env,
            text=True,
        )
        self._url = self._wait_listening(start_timeout_s)

    def _wait_listening(self, timeout_s: float) -> str:
        """The URL from serve's ``listening`` line; the rest of stdout is drained in a thread so
        the service never blocks on a full pipe."""
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = self._proc.stdout
        assert stdout is not None

        def drain() -> None:
            for line in stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, name="modelhaul-mirror-stdout", daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            record = _json_or_none(line)
            if record and record.get("event") == "listening":
                return str(record["url"])
        self.stop()
        raise RuntimeError(
            f"modelhaul serve did not start on {node_address()} within {timeout_s:g} s: "
            f"{stderr_tail(self._log) or 'no output'}"
        )

    def url(self) -> str:
        return self._url

    def upstream_bytes(self) -> int | None:
        """What the mirror fetched upstream since it started (slices for peers included), as
        its ``GET /api/mirror/totals`` says; None when it does not say (gone, or older)."""
        import urllib.request

        from ..config import default_state_dir
        from ..errors import ModelhaulError
        from ..server.security import read_token, token_path

        request = urllib.request.Request(f"{self._url}/api/mirror/totals")
        try:
            token = read_token(token_path(default_state_dir(self._env)))
            if token:  # needed off loopback
                request.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(request, timeout=10) as answer:
                value = json.loads(answer.read()).get("upstream_bytes")
        except (ModelhaulError, OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, int) else None

    def stop(self) -> int | None:
        """Stop the service gracefully (SIGTERM), then for good after 10 s; its exit status."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self._proc.returncode


def pull_here(
    source: str,
    argv: Sequence[str],
    *,
    peers: Sequence[str],
    endpoint: str | None,
    store_root: str | None,
) -> dict[str, Any]:
    """Run ``modelhaul pull SOURCE ARGV --json`` on this node; what the driver needs of it.

    Returns the node's id and address, the exit status, the ``--json`` result line (None if the
    command printed none), the wall time and, on failure, the tail of its stderr. Reads stdout a
    line at a time, keeping only the result line, so memory stays flat however long the pull.
    """
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    started = time.monotonic()
    result: dict[str, Any] | None = None
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            modelhaul_argv("pull", source, *argv, *options_argv({"json": True})),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=node_env(store_root=store_root, endpoint=endpoint, peers=peers),
            text=True,
        )
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                record = _json_or_none(line)
                if record and record.get("event") == "result":
                    result = record
        status = proc.wait()
        tail = stderr_tail(log) if status else ""
    return {
        "node_id": node_id,
        "address": node_address(),
        "exit_status": status,
        "result": result,
        "wall_s": time.monotonic() - started,
        "stderr": tail,
    }


def _json_or_none(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
