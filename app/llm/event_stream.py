"""Named-event SSE streams (`event: <type>` + `data: {...}`), relayed in whole events.

The base of the Responses and Anthropic streams: the provider's bytes pass through untouched
except the few events a protocol must read (the one carrying usage, the terminal ones), which
are found structurally by their top-level `"type"` and parsed alone.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from app.errors import UpstreamError
from app.llm.results import StreamMeter

_DATA = b"data: "
_TYPE = re.compile(rb'"type"\s*:\s*"([a-z_.]+)"')


def sse_event(kind: str, data: dict[str, Any]) -> bytes:
    """One named SSE event."""
    return b"event: " + kind.encode() + b"\n" + _DATA + orjson.dumps(data) + b"\n\n"


def event_data(event: bytes) -> dict[str, Any] | None:
    """The JSON object of one SSE event (its `data:` lines), or None."""
    lines = [line[6:] for line in event.split(b"\n") if line.startswith(_DATA)]
    if not lines:
        return None
    try:
        data = orjson.loads(b"\n".join(lines))
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


async def objects_as_events(upstream: Any) -> AsyncIterator[bytes]:
    """LiteLLM's event objects (each with a `type`) as named SSE events."""
    async for item in upstream:
        data = item if isinstance(item, dict) else item.model_dump(mode="json", exclude_none=True)
        yield sse_event(str(data.get("type") or "message"), data)


class EventStream:
    """A named-event stream; subclasses say which event types they must see (`watched`)."""

    content_marker: bytes  # occurs once per content event: about one token each
    watched_types: frozenset[bytes] = frozenset()  # top-level types `_event` handles

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None] | None],
        *,
        deployment_id: str | None,
        provider: str,
    ) -> None:
        self.deployment_id = deployment_id
        self.provider = provider
        self.meter = StreamMeter()
        self.first_byte: float | None = None
        self.sequence = 0  # events seen, for the sequence numbers of events the gateway adds
        self._chunks = chunks
        self._close = close
        self._done = False
        self._dropped = 0  # content events cut off the end, never relayed: never counted

    async def events(self):  # type: ignore[no-untyped-def]  # AsyncIterator[bytes]
        pending = b""
        async for data in self._chunks:
            if self.first_byte is None:
                self.first_byte = time.perf_counter()
            buf = pending + data if pending else data
            if b"\r\n" in buf:
                buf = buf.replace(b"\r\n", b"\n")
            end = buf.rfind(b"\n\n")
            if end < 0:
                pending = buf
                continue
            block, pending = buf[: end + 2], buf[end + 2 :]
            out = self._block(block)
            if out:
                yield out
            if self._done:
                return
        if not self._ended():
            raise UpstreamError("The model provider ended the stream before it was complete.")

    def _block(self, block: bytes) -> bytes:
        meter = self.meter
        self.sequence += block.count(b"\n\n")
        meter.events += block.count(self.content_marker)
        if not any(m.group(1) in self.watched_types for m in _TYPE.finditer(block)):
            if meter.usage is None:
                meter.raw.append(block)
            return block
        out: list[bytes] = []
        for event in block.split(b"\n\n"):
            if not event:
                continue
            data = event_data(event) if self._watched(event) else None
            kind = data.get("type") if data is not None else None
            if isinstance(kind, str) and kind.encode() in self.watched_types:
                kept = self._event(kind, data or {}, event)
            else:
                kept = event + b"\n\n"
            if kept and meter.usage is None:
                meter.raw.append(kept)
            out.append(kept)
            if self._done:
                break
        return b"".join(out)

    def _watched(self, event: bytes) -> bool:
        return any(m.group(1) in self.watched_types for m in _TYPE.finditer(event))

    def _event(self, kind: str, data: dict[str, Any], raw: bytes) -> bytes:
        """Handle a watched event; return the bytes to relay (b"" holds it back)."""
        return raw + b"\n\n"

    def _ended(self) -> bool:
        """Whether the provider's stream ended complete (its terminal event was seen)."""
        return self._done

    def without_last_content(self, block: bytes, drop: int) -> bytes:
        """The block up to (not including) its last `drop` content events."""
        if drop <= 0:
            return block
        self._dropped += drop
        keep = block.count(self.content_marker) - drop
        out: list[bytes] = []
        for event in block.split(b"\n\n"):
            if not event:
                continue
            if self.content_marker in event:
                if keep <= 0:
                    break
                keep -= 1
            out.append(event + b"\n\n")
        return b"".join(out)

    def raw_events(self) -> list[dict[str, Any]]:
        """The parsed events kept for counting generated text."""
        out: list[dict[str, Any]] = []
        for block in self.meter.raw:
            for event in block.split(b"\n\n"):
                data = event_data(event) if event else None
                if data is not None:
                    out.append(data)
        drop = self._dropped
        while drop and out:  # the content events the client never got, from the end
            data = out.pop()
            drop -= self._is_content(data)
        return out

    def _is_content(self, data: dict[str, Any]) -> bool:
        """Whether a parsed event is a content event (the kind `content_marker` finds)."""
        return False

    async def aclose(self) -> None:
        result = self._close()
        if result is not None:
            await result
