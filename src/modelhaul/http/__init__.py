"""HTTP through aiohttp: the client core's only importer of aiohttp, and the demo origin.

- ``session``: Transport, the pooled client session, per-request setup and netrc.
- ``redirects``: following redirects by hand; credentials never follow to another host.
- ``response``: Response, an open response read in pieces or taken over past aiohttp.
- ``bodies``: BodyPump, SocketBody and the splice pipe: the zero-copy receive.
- ``errors``: the one place aiohttp, OS and SSL errors become modelhaul errors.
- ``probe``: the doctor's diagnostic requests: one answer whatever its status, or the failed stage.
- ``aiohttp_internals``: every use of aiohttp's private internals, each behind one function.
- ``demo_origin``: the throttled local server of ``modelhaul demo`` (aiohttp.web, not the client).

Pure URL rules (check_url, same_host, which headers a redirect hop carries) live in
``policy.urls``."""
