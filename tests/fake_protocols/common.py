"""Shared helpers for the fake protocol handlers."""

from __future__ import annotations

import asyncio


class Dropped(ConnectionResetError):
    """Raised after aborting the TCP connection on purpose (``drop-<k>``)."""


def abort_now(request):
    tr = request.transport
    if tr is not None:
        tr.abort()
    raise Dropped("fake provider: dropped connection")


class Streamer:
    """An SSE response honouring ``chunkdelay-<ms>`` and ``drop-<k>``.

    ``write`` sends framing events as-is; ``content`` is one content event
    (a token delta): it is delayed by chunkdelay, and after k of them the
    connection is aborted.  ``before_terminal`` aborts if drop is set but more
    than k content events existed (so the terminal event is never sent).
    """

    def __init__(self, request, d, web, headers=None):
        self.request = request
        self.resp = web.StreamResponse(status=200, headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
            **(headers or {})})
        self.delay = d["chunkdelay"] / 1000.0
        self.drop = d["drop"]
        self.sent = 0

    async def prepare(self):
        await self.resp.prepare(self.request)
        return self

    async def write(self, data: bytes):
        await self.resp.write(data)

    async def content(self, data: bytes):
        if self.drop is not None and self.sent >= self.drop:
            abort_now(self.request)
        if self.delay:
            await asyncio.sleep(self.delay)
        await self.resp.write(data)
        self.sent += 1

    def before_terminal(self):
        if self.drop is not None:
            abort_now(self.request)

    async def finish(self):
        await self.resp.write_eof()
        return self.resp


def event(dumps, type_: str, obj) -> bytes:
    """``event: <type>\\ndata: <json>\\n\\n`` (the named-event SSE framing)."""
    return b"event: " + type_.encode() + b"\ndata: " + dumps(obj) + b"\n\n"


def cap_tokens(n: int, cap) -> int:
    if isinstance(cap, int) and not isinstance(cap, bool) and cap < n:
        return max(cap, 0)
    return n
