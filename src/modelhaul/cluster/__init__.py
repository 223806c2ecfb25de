"""Pull a model onto every node of a Ray cluster, fetched upstream once (the ``ray`` extra).

``pull_on_ray`` is the one entry (``modelhaul pull SOURCE --ray [ADDRESS]`` on the command line).
Importing this package imports no Ray: the driver imports it when a pull starts, the nodes when
their work runs. Inside: ``driver.py`` places the work and collects results, ``node.py`` is what
runs on a node (its mirror, its pull), ``results.py`` the values returned.
"""

from .driver import PULL_OPTIONS, pull_on_ray, ray_session
from .results import ClusterPullResult, NodeResult

__all__ = ["PULL_OPTIONS", "ClusterPullResult", "NodeResult", "pull_on_ray", "ray_session"]
