"""HTTP through aiohttp: the transport (session, redirects, bodies) and the demo origin.

The only package that imports aiohttp."""
