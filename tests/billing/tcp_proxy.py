"""A TCP relay in a thread of its own, to take a database away from a running gateway.

`cut()` closes every relayed connection and stops listening, so new connections are refused
at once (as with a database that went away); `restore()` listens on the same port again.
For Postgres it also counts what clients send: `round_trips` is the number of Sync, Query and
Flush messages, each of which the client sends and then waits for the server's answer to.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections import Counter
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit

_SSL_REQUEST, _GSSENC_REQUEST, _CANCEL_REQUEST = 80877103, 80877104, 80877102
_WAITS_FOR_SERVER = frozenset(b"SQH")  # Sync, simple Query, Flush


class _PgFrontendCounter:
    """Counts the frontend messages of one Postgres connection (client -> server)."""

    def __init__(self, totals: Counter[str]) -> None:
        self._buf = b""
        self._typed = False
        self._totals = totals

    def feed(self, data: bytes) -> None:
        self._buf += data
        while True:
            if not self._typed:  # SSLRequest / GSSENCRequest / StartupMessage: no type byte
                if len(self._buf) < 8:
                    return
                length, code = struct.unpack("!II", self._buf[:8])
                if len(self._buf) < length:
                    return
                self._buf = self._buf[length:]
                if code not in (_SSL_REQUEST, _GSSENC_REQUEST, _CANCEL_REQUEST):
                    self._typed = True
                    self._totals["startup"] += 1
                continue
            if len(self._buf) < 5:
                return
            kind = self._buf[0]
            (length,) = struct.unpack("!I", self._buf[1:5])
            if len(self._buf) < 1 + length:
                return
            self._buf = self._buf[1 + length :]
            self._totals[chr(kind)] += 1
            if kind in _WAITS_FOR_SERVER:
                self._totals["round_trips"] += 1


class TcpProxy:
    """127.0.0.1:<port> -> target, relayed byte for byte."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.counts: Counter[str] = Counter()
        self.delay = 0.0  # seconds added before each client -> server write: a slow database
        self.connections_accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._lock = threading.Lock()

    @classmethod
    def for_url(cls, url: str) -> TcpProxy:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432)

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        return parts._replace(netloc=netloc).geturl()

    # -- control, from any thread ---------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._run(self._listen())
        return self

    def stop(self) -> None:
        self._run(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._run(self._close_all())

    def restore(self) -> None:
        """Accept connections again, on the same port."""
        self._run(self._listen())

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def _run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=10)

    # -- the relay, on the proxy's loop -----------------------------------------------------

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await asyncio.sleep(0)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers.update((client_w, server_w))
        counter = _PgFrontendCounter(self.counts)

        def count(data: bytes) -> None:
            with self._lock:
                counter.feed(data)

        await asyncio.gather(self._pipe(client_r, server_w, count), self._pipe(server_r, client_w, None))
        self._writers.difference_update((client_w, server_w))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tap: Any) -> None:
        try:
            while data := await reader.read(65536):
                if tap is not None:
                    tap(data)
                    if self.delay:
                        await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
