"""What a pull across a cluster returns: one value per node, and the whole.

Pure values; built on the driver from what each node's task sent back (a few hundred bytes a node:
the model itself never travels through Ray).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import human_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeResult:
    """One node's pull.

    ``bytes_from_upstream`` and ``bytes_from_peers`` are what the node's own pull says (a pull
    without peers fetched everything upstream). ``error`` is None on success, else the failure as
    the ``--json`` result line words it: ``category``, ``message``, ``hint``.
    """

    node_id: str
    address: str
    status: str  # "completed" or "failed"
    path: str | None = None
    bytes_from_upstream: int = 0
    bytes_from_peers: int = 0
    wall_s: float = 0.0
    error: dict[str, Any] | None = None
    # What the node's mirror fetched upstream (for every node that asked it, issue 17): the
    # pull's bytes_from_upstream leaves it out. None: the mirror did not say.
    mirror_bytes_from_upstream: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    # The JSON line names its own fields: alike other to_dict/to_json in shape only.
    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "address": self.address,
            "status": self.status,
            "path": self.path,
            "bytes_from_upstream": self.bytes_from_upstream,
            "bytes_from_peers": self.bytes_from_peers,
            "wall_s": round(self.wall_s, 3),
            "error": self.error,
            "mirror_bytes_from_upstream": self.mirror_bytes_from_upstream,
        }

    def describe(self) -> str:
        """One line for a person: where, how it went, where the model is."""
        where = f"node {self.node_id[:12]} ({self.address})"
        if not self.ok:
            return f"{where}: failed: {(self.error or {}).get('message', 'unknown error')}"
        return (
            f"{where}: completed in {self.wall_s:.1f} s, "
            f"{human_bytes(self.bytes_from_upstream)} from upstream, "
            f"{human_bytes(self.bytes_from_peers)} from peers -> {self.path}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterPullResult:
    """Every node's pull, in node id order, with the mirrors (peers) they used."""

    source: str
    nodes: tuple[NodeResult, ...]
    peers: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return bool(self.nodes) and all(n.ok for n in self.nodes)

    @property
    def failed(self) -> tuple[NodeResult, ...]:
        return tuple(n for n in self.nodes if not n.ok)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` result line of ``modelhaul pull --ray``."""
        error = None
        if not self.ok:
            failed = self.failed
            error = {
                "category": (failed[0].error or {}).get("category", "network")
                if failed
                else "invalid_input",
                "message": f"{len(failed)} of {len(self.nodes)} nodes failed: "
                + "; ".join((n.error or {}).get("message", "") for n in failed)
                if failed
                else "the cluster has no alive node",
                "hint": (failed[0].error or {}).get("hint") if failed else None,
            }
        return {
            "event": "result",
            "status": "completed" if self.ok else "failed",
            "source": self.source,
            "nodes": [n.to_dict() for n in self.nodes],
            "peers": list(self.peers),
            "bytes_from_upstream": sum(n.bytes_from_upstream for n in self.nodes),
            "bytes_from_peers": sum(n.bytes_from_peers for n in self.nodes),
            "mirror_bytes_from_upstream": sum(
                n.mirror_bytes_from_upstream or 0 for n in self.nodes
            ),
            "error": error,
        }


def node_result(report: dict[str, Any]) -> NodeResult:
    """A node's result from what its pull task sent back (see ``node.pull_here``)."""
    line = report.get("result") or {}
    where = f"node {report['node_id']} ({report['address']})"
    base: dict[str, Any] = {
        "node_id": report["node_id"],
        "address": report["address"],
        "wall_s": float(report.get("wall_s", 0.0)),
    }
    if report.get("exit_status") == 0 and line.get("status") == "completed":
        fetched = int(line.get("bytes_fetched") or 0)
        return NodeResult(
            **base,
            status="completed",
            path=line.get("path"),
            # A pull that predates peers says only bytes_fetched: all of it came upstream.
            bytes_from_upstream=int(line.get("bytes_from_upstream", fetched) or 0),
            bytes_from_peers=int(line.get("bytes_from_peers") or 0),
        )
    err = dict(line.get("error") or {})
    message = err.get("message") or report.get("stderr") or "the pull printed no result"
    err["message"] = f"{where}: {message} (exit status {report.get('exit_status')})"
    err.setdefault("category", "server_error")
    return NodeResult(**base, status="failed", error=err)


def node_failure(node_id: str, address: str, what: str, hint: str) -> NodeResult:
    """A node whose task never reported: it died, or Ray could not run the task there."""
    return NodeResult(
        node_id=node_id,
        address=address,
        status="failed",
        error={
            "category": "network",
            "message": f"node {node_id} ({address}): {what}",
            "hint": hint,
        },
    )
