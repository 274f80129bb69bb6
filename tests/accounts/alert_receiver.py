"""A local HTTP endpoint that records the gateway's alert webhooks and can fail on demand."""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True)
class Delivery:
    body: bytes
    signature: str | None
    answered: int


class AlertReceiver:
    """Serves POST /alerts from a thread; the first `fail_first` deliveries get a 500."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.fail_first = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def accepted(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.answered == 200]

    def start(self) -> AlertReceiver:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
        self._loop = self._thread = None

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/alerts", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = 500 if self.fail_first > 0 else 200
        self.fail_first -= status == 500
        self.deliveries.append(Delivery(body, request.headers.get("X-Gateway-Signature"), status))
        return web.Response(status=status, text="ok" if status == 200 else "down")
