"""What the demo's loopback services (the portal, the Graph) share: serving an aiohttp app on a
host and port of their choice, and stopping it."""

from __future__ import annotations

import ssl
from typing import Self

from aiohttp import web


class LoopbackSite:
    """An aiohttp app served on host:port (0: a free port); `base_url` once started."""

    def __init__(self, *, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def _serve(self, app: web.Application, ssl_context: ssl.SSLContext | None = None) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        scheme = "https" if ssl_context is not None else "http"
        self.base_url = f"{scheme}://{host}:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> str:
        raise NotImplementedError
