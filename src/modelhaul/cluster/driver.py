"""``pull_on_ray``: one model onto every alive node of a Ray cluster, fetched upstream once.

The driver only places work and collects results: one mirror actor and then one pull task per
node, each pinned to its node (``NodeAffinitySchedulingStrategy(soft=False)``), every node's pull
given all the mirrors as its peers. Ray carries a few hundred bytes a node; the model moves over
HTTP between the mirrors and into each node's own store (see ``node.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..errors import InvalidInput, ModelhaulError
from . import node
from .results import ClusterPullResult, NodeResult, node_failure, node_result

# The options of ``modelhaul pull`` a node may be given, as keywords (the CLI's long flag names
# with ``_`` for ``-``). Peers are not among them: the cluster's mirrors are the peers.
PULL_OPTIONS = frozenset(
    {
        "include",
        "exclude",
        "local_dir",
        "max_store_size",
        "jobs",
        "connections",
        "max_connections",
        "limit_rate",
        "retries",
        "timeout",
        "header",
        "allow_insecure_redirects",
        "insecure",
        "slice_size",
    }
)
# How long a mirror may take to start, and to stop, before it is given up on.
MIRROR_START_S = 120.0
MIRROR_STOP_S = 30.0
_RAY_MISSING_HINT = "Install the Ray extra: pip install 'modelhaul[ray]'"
_RERUN_HINT = (
    "Run the same pull again once the node is back: nodes that completed find the model in "
    "their store, the others resume from their partial files."
)


def pull_on_ray(
    source: str,
    *,
    address: str | None = None,
    store_root: str | None = None,
    endpoint: str | None = None,
    **pull_options: Any,
) -> ClusterPullResult:
    """Pull ``source`` onto every alive node of a Ray cluster, the nodes serving each other.

    Connects to the cluster at ``address`` (``None``: ``RAY_ADDRESS``, else a cluster running on
    this machine, else a new local one; a connection this process already has is used as is and
    left open). On each alive node it starts a mirror (``modelhaul serve`` on the node's address
    and a free port), then runs exactly one ``modelhaul pull`` there with every mirror as a peer.
    A node that fails (or dies) does not stop the others; its result says why. The mirrors are
    stopped before this returns.

    Args:
        source: what ``modelhaul pull`` takes: ``hf://ORG/NAME[@REV]``, ``ORG/NAME``, or a
            manifest URL (a manifest path must exist on every node).
        address: the Ray cluster, as ``ray.init`` takes it.
        store_root: the store on every node (the same path, each node's own disk). ``None``: each
            node's own Hugging Face cache, as its environment says (``HF_HUB_CACHE``, else
            ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``).
        endpoint: the Hub the pulls and the mirrors use (``None``: each node's ``HF_ENDPOINT``,
            else huggingface.co).
        pull_options: options of ``modelhaul pull`` by their long names, e.g.
            ``include=["*.safetensors"], connections=8, limit_rate="200M"``.

    Raises:
        InvalidInput: an option ``modelhaul pull`` does not take here.
        ModelhaulError: Ray is not installed, or the cluster has no alive node.

    Example::

        result = pull_on_ray("hf://org/model", address="ray://head:10001")
        for n in result.nodes:
            print(n.node_id, n.status, n.path, n.bytes_from_upstream, n.bytes_from_peers)
    """
    argv = node.options_argv(check_pull_options(pull_options))
    ray = import_ray()
    owned = connect(ray, address)
    try:
        return _pull_everywhere(ray, source, argv, store_root=store_root, endpoint=endpoint)
    finally:
        if owned:
            ray.shutdown()


def check_pull_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - PULL_OPTIONS)
    if unknown:
        raise InvalidInput(
            f"pull_on_ray does not take {', '.join(unknown)}",
            hint=f"Options it passes to each node's pull: {', '.join(sorted(PULL_OPTIONS))}.",
        )
    local_dir = options.get("local_dir")
    if local_dir is not None and not os.path.isabs(local_dir):
        # Each node resolves it in its Ray worker's directory, which is nobody's choice.
        raise InvalidInput(
            f"local_dir must be an absolute path on the nodes, got {local_dir}",
            hint="Name the folder as every node sees it, from the root.",
        )
    return dict(options)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ModelhaulError(
            "pulling on a Ray cluster needs Ray, which is not installed", hint=_RAY_MISSING_HINT
        ) from None
    return ray


def connect(ray: Any, address: str | None) -> bool:
    """Connect (or start a local cluster); True when this call made the connection."""
    if ray.is_initialized():
        return False
    _check_reachable(address)
    try:
        # Nodes' logs stay on the nodes: each node's result carries what its failure needs.
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:  # what ray.init raises for these
        raise ModelhaulError(
            f"cannot connect to the Ray cluster at {address or 'RAY_ADDRESS or this machine'}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
            hint="Check the address ('ray status' on the head node), or give none to start a "
            "local cluster.",
        ) from exc
    return True


def _check_reachable(address: str | None) -> None:
    """A HOST:PORT that refuses at once is said at once (``ray.init`` retries it for minutes)."""
    host, _, port = (address or "").rpartition(":")
    if not host or "://" in host or not port.isdigit():
        return  # none, "auto", "ray://...": Ray finds or checks these itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise ModelhaulError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}",
            hint="Check the address ('ray status' on the head node), or give none to start a "
            "local cluster.",
        ) from None


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """A connection to the cluster for the block (made here, in this thread: Ray wants the main
    thread for its signal handlers), closed after it if this made it."""
    ray = import_ray()
    owned = connect(ray, address)
    try:
        yield
    finally:
        if owned:
            ray.shutdown()


def _on(node_id: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


def _alive_nodes(ray: Any) -> dict[str, str]:
    """Alive node id -> address, in id order."""
    alive = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
    if not alive:
        raise ModelhaulError("the Ray cluster has no alive node", hint=_RERUN_HINT)
    return dict(sorted(alive.items()))


def _pull_everywhere(
    ray: Any, source: str, argv: Sequence[str], *, store_root: str | None, endpoint: str | None
) -> ClusterPullResult:
    nodes = _alive_nodes(ray)
    mirror_actor = ray.remote(num_cpus=0, max_restarts=0)(node.Mirror)
    mirrors = {
        nid: mirror_actor.options(scheduling_strategy=_on(nid)).remote(
            upstream=endpoint, store_root=store_root
        )
        for nid in nodes
    }
    try:
        urls, results = _mirror_urls(ray, mirrors, nodes)
        # Every node gets the same list, so every node picks the same owner for a slice.
        peers = tuple(urls[nid] for nid in sorted(urls))
        task = ray.remote(num_cpus=0, max_retries=0)(node.pull_here)
        pulls = {
            nid: task.options(scheduling_strategy=_on(nid)).remote(
                source, list(argv), peers=peers, endpoint=endpoint, store_root=store_root
            )
            for nid in urls
        }
        results += [_outcome(ray, nid, nodes[nid], ref) for nid, ref in pulls.items()]
        results = _with_mirror_bytes(ray, mirrors, results)
    finally:
        _stop(ray, mirrors)
    return ClusterPullResult(
        source=source, nodes=tuple(sorted(results, key=lambda r: r.node_id)), peers=peers
    )


def _mirror_urls(
    ray: Any, mirrors: Mapping[str, Any], nodes: Mapping[str, str]
) -> tuple[dict[str, str], list[NodeResult]]:
    """Each started mirror's URL; a node whose mirror did not start is a failed node (no pull
    runs there: it could not serve its share to the others)."""
    urls: dict[str, str] = {}
    failed: list[NodeResult] = []
    for nid, actor in mirrors.items():
        try:
            urls[nid] = ray.get(actor.url.remote(), timeout=MIRROR_START_S)
        except ray.exceptions.RayError as exc:
            what = f"its mirror (modelhaul serve) did not start: {_first_line(exc)}"
            failed.append(node_failure(nid, nodes[nid], what, _RERUN_HINT))
    return urls, failed


def _outcome(ray: Any, node_id: str, address: str, ref: Any) -> NodeResult:
    """The node's result, or why its task never reported one."""
    try:
        return node_result(ray.get(ref))
    except ray.exceptions.NodeDiedError:
        what = "the node died during the pull"
    except ray.exceptions.WorkerCrashedError:
        what = "the Ray worker running the pull died"
    except ray.exceptions.RayError as exc:
        what = f"the pull task failed: {_first_line(exc)}"
    return node_failure(node_id, address, what, _RERUN_HINT)


def _with_mirror_bytes(
    ray: Any, mirrors: Mapping[str, Any], results: list[NodeResult]
) -> list[NodeResult]:
    """Each result with what its node's mirror fetched upstream for the fleet (a dead node's
    mirror says nothing: None)."""
    asked = {nid: actor.upstream_bytes.remote() for nid, actor in mirrors.items()}
    fetched: dict[str, int | None] = {}
    for nid, ref in asked.items():
        try:
            fetched[nid] = ray.get(ref, timeout=MIRROR_STOP_S)
        except ray.exceptions.RayError:
            fetched[nid] = None
    return [replace(r, mirror_bytes_from_upstream=fetched.get(r.node_id)) for r in results]


def _stop(ray: Any, mirrors: Mapping[str, Any]) -> None:
    """Stop every mirror (a dead node's went with it), then let the actors go."""
    stops = [actor.stop.remote() for actor in mirrors.values()]
    for ref in stops:
        # A dead node's or actor's serve process went with it (tied to the actor).
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(ref, timeout=MIRROR_STOP_S)
    for actor in mirrors.values():
        ray.kill(actor)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
