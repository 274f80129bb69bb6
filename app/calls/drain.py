"""Shutdown of streams in flight: at the deadline they end with an error event, charged.

On SIGTERM the server stops taking connections and waits for the ones open (uvicorn's
graceful timeout, under gunicorn's). Streams still running at `deadline` seconds after the
signal are interrupted here, so each can charge what was generated and tell its client,
before the worker is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


class Drain:
    """Streams in flight, and the shutdown deadline that interrupts them."""

    def __init__(self, deadline_seconds: float) -> None:
        self.deadline = deadline_seconds
        self.fired = False
        self._began = False
        self._closers: set[Callable[[], Coroutine[Any, Any, None]]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def install(self) -> None:
        """Chain onto the server's SIGTERM handler (uvicorn's, inside gunicorn's worker too)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(sig: int, frame: FrameType | None) -> None:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.begin)
            if callable(previous):
                previous(sig, frame)

        signal.signal(signal.SIGTERM, on_term)

    def begin(self) -> None:
        """The shutdown started: interrupt what is still streaming at the deadline."""
        if self._began:
            return
        self._began = True
        if self._closers:
            log.info("shutdown: %d streams get %.0f s to finish", len(self._closers), self.deadline)
        asyncio.get_running_loop().call_later(self.deadline, self.fire)

    def fire(self) -> None:
        self.fired = True
        if self._closers:
            log.warning("shutdown deadline: ending %d streams", len(self._closers))
        for close in list(self._closers):
            task: asyncio.Task[None] = asyncio.get_running_loop().create_task(close())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def track(self, close: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._closers.add(close)

    def untrack(self, close: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._closers.discard(close)
