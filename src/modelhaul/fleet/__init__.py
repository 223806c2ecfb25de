"""Many nodes, one upstream copy (issue 17): a pull that fetches each slice of a file from the
peer that owns it (``policy.slices``), whose mirror fetched it upstream once (``mirror.slices``).

- ``routing``: the peer list, each file's router and the bytes it counted.
"""
