"""A lying peer: a real ``modelhaul serve`` behind a proxy that flips the bytes of every file
body it passes on (headers, lengths and statuses stay true), as a node with bad RAM or a
malicious one would serve them."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import ClientSession, web

_PASSED = ("range", "authorization", "x-modelhaul-slice", "if-range")


class LyingPeer:
    """Serves ``target``'s answers at ``url`` with every body byte flipped (XOR 0xFF)."""

    def __init__(self, target: str, host: str) -> None:
        self.target = target.rstrip("/")
        self.host = host
        self.url = ""
        self.bytes_lied = 0
        self.asked: list[str] = []  # the path of every request, in order
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="lying-peer", daemon=True)

    def __enter__(self) -> LyingPeer:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the lying peer did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with ClientSession(auto_decompress=False) as session:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", lambda r: self._forward(r, session))
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, self.host, 0)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"http://{self.host}:{port}"
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

    async def _forward(self, request: web.Request, session: ClientSession) -> web.StreamResponse:
        self.asked.append(request.path)
        headers = {k: v for k, v in request.headers.items() if k.lower() in _PASSED}
        async with session.request(
            request.method, self.target + request.raw_path, headers=headers, allow_redirects=False
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in ("transfer-encoding", "connection", "content-encoding"):
                    response.headers[name] = value
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                if upstream.status == 206:
                    chunk = bytes(b ^ 0xFF for b in chunk[:16]) + chunk[16:]
                    self.bytes_lied += min(16, len(chunk))
                await response.write(chunk)
            await response.write_eof()
            return response
