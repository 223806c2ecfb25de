"""The client of a running ``modelhaul serve``: REST calls and the live event stream, used by the
CLI. It imports neither the server nor the CLI."""
