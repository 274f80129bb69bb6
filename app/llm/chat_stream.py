"""Chat completion streams: the provider's SSE bytes (fast path) or LiteLLM's chunks, as one type.

Usage is found structurally: an event whose top-level JSON has a `usage` object, whatever the
provider's whitespace. Only that event is parsed on the fast path; every other event passes
through as the provider's bytes.
"""

from __future__ import annotations

import re
import time
from decimal import Decimal
from typing import Any

import aiohttp
import orjson

from app.errors import GatewayError, UpstreamError, sse_error_event
from app.llm.results import StreamMeter, first_events, money_fragment, openai_usage
from app.usage import Usage

DONE = b"data: [DONE]\n\n"
# `"usage": {` with any whitespace. Inside a JSON string the quotes are escaped (`\"usage\"`),
# so text that merely mentions usage never matches.
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_DATA = b"data: "


def _delta_texts(chunk: dict[str, Any], out: list[str]) -> None:
    """Everything a chunk generated that the provider bills: content, reasoning, tool calls."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        for key in ("content", "reasoning_content", "refusal"):
            value = delta.get(key)
            if isinstance(value, str):
                out.append(value)
        for call in delta.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                out.extend(v for v in (function.get("name"), function.get("arguments")) if isinstance(v, str))


class _ChatStreamBase:
    """What both chat streams share: the held-back usage chunk, the final and the cut events."""

    def __init__(self, *, deployment_id: str | None, provider: str) -> None:
        self.deployment_id = deployment_id
        self.provider = provider
        self.meter = StreamMeter()
        self._usage_chunk: dict[str, Any] | None = None
        self.first_byte: float | None = None

    def _template(self) -> dict[str, Any]:
        """id, created and model of this stream, for chunks the gateway writes itself."""
        base: dict[str, Any] = {"object": "chat.completion.chunk"}
        source = self._usage_chunk
        if source is None and self.meter.first_event is not None:
            try:
                source = orjson.loads(self.meter.first_event.removeprefix(_DATA))
            except orjson.JSONDecodeError:
                source = None
        if isinstance(source, dict):
            base.update({k: source[k] for k in ("id", "created", "model") if k in source})
        return base

    def finish(self, usage: Usage, cost: Decimal | None, *, wants_usage: bool) -> bytes:
        if not wants_usage:
            return DONE
        chunk = dict(self._usage_chunk) if self._usage_chunk is not None else self._template()
        chunk["choices"] = []
        reported = chunk.get("usage")
        chunk["usage"] = dict(reported) if isinstance(reported, dict) else openai_usage(usage)
        if cost is not None:
            chunk["usage"]["cost"] = money_fragment(cost)
        return _DATA + orjson.dumps(chunk) + b"\n\n" + DONE

    def error_event(self, error: GatewayError) -> bytes:
        return sse_error_event(error)

    def without_last_content(self, block: bytes, drop: int) -> bytes:
        return first_events(block, block.count(b"\n\n") - drop)

    def cut(self) -> bytes:
        chunk = self._template()
        chunk["choices"] = [{"index": 0, "delta": {}, "finish_reason": "length"}]
        return _DATA + orjson.dumps(chunk) + b"\n\n"

    def generated_text(self) -> str:
        parts = list(self.meter.parts)
        for block in self.meter.raw:
            for event in block.split(b"\n\n"):
                if not event.startswith(b"data: {"):
                    continue
                try:
                    chunk = orjson.loads(event[6:])
                except orjson.JSONDecodeError:
                    continue
                _delta_texts(chunk, parts)
        return "".join(parts)

    def _found_usage(self, chunk: dict[str, Any]) -> bool:
        usage = Usage.from_openai(chunk.get("usage"))
        if usage is None:
            return False
        self.meter.usage = usage
        self.meter.raw.clear()
        self._usage_chunk = chunk
        return True


class ChatSseStream(_ChatStreamBase):
    """An OpenAI-compatible provider's SSE response, relayed in whole events."""

    def __init__(self, response: aiohttp.ClientResponse, *, deployment_id: str) -> None:
        super().__init__(deployment_id=deployment_id, provider="openai")
        self._response = response

    async def events(self):  # type: ignore[no-untyped-def]  # AsyncIterator[bytes]
        meter = self.meter
        pending = b""
        async for data in self._response.content.iter_any():
            if self.first_byte is None:
                self.first_byte = time.perf_counter()
            buf = pending + data if pending else data
            end = buf.rfind(b"\n\n")
            if end < 0:
                pending = buf
                continue
            block, pending = buf[: end + 2], buf[end + 2 :]
            done = DONE in block
            if done:
                block = block.replace(DONE, b"")
            if _USAGE.search(block) is not None:
                block = self._take_usage(block)
            elif meter.usage is None:
                meter.raw.append(block)
            if block:
                meter.events += block.count(_DATA)
                if meter.first_event is None:
                    meter.first_event = block[: block.find(b"\n\n")]
                yield block
            if done:
                return
        if meter.usage is None:
            # No [DONE] and no usage: the provider ended the stream early.
            raise UpstreamError("The model provider ended the stream before it was complete.")

    def _take_usage(self, block: bytes) -> bytes:
        out: list[bytes] = []
        for event in block.split(b"\n\n"):
            if not event:
                continue
            if event.startswith(_DATA) and _USAGE.search(event) is not None:
                try:
                    chunk = orjson.loads(event[6:])
                except orjson.JSONDecodeError:
                    chunk = None
                if isinstance(chunk, dict) and self._found_usage(chunk):
                    if not chunk.get("choices"):
                        continue  # the usage chunk itself: held back until the call is settled
                    rest = {k: v for k, v in chunk.items() if k != "usage"}
                    event = _DATA + orjson.dumps(rest)
            out.append(event + b"\n\n")
        return b"".join(out)

    async def aclose(self) -> None:
        self._response.close()


class LiteLLMChatStream(_ChatStreamBase):
    """LiteLLM's chunk objects (providers that are not OpenAI-compatible) as SSE events."""

    def __init__(self, upstream: Any, *, deployment_id: str | None, provider: str) -> None:
        super().__init__(deployment_id=deployment_id, provider=provider)
        self._upstream = upstream

    async def events(self):  # type: ignore[no-untyped-def]  # AsyncIterator[bytes]
        meter = self.meter
        async for chunk in self._upstream:
            if self.first_byte is None:
                self.first_byte = time.perf_counter()
            data: dict[str, Any] = chunk.model_dump(exclude_none=True)
            usage = data.get("usage")
            if isinstance(usage, dict):
                usage.pop("cost", None)  # LiteLLM's own estimate, not what the gateway charges
                if self._found_usage(data):
                    data = {k: v for k, v in data.items() if k != "usage"}
                    self._usage_chunk = {**data, "usage": usage}
                    if not any(_has_delta(c) for c in data.get("choices") or ()):
                        continue
                else:
                    data.pop("usage")
            _delta_texts(data, meter.parts)
            event = _DATA + orjson.dumps(data)
            meter.events += 1
            if meter.first_event is None:
                meter.first_event = event
            yield event + b"\n\n"

    async def aclose(self) -> None:
        closer = getattr(self._upstream, "aclose", None)
        if closer is not None:
            await closer()


def _has_delta(choice: Any) -> bool:
    delta = choice.get("delta") if isinstance(choice, dict) else None
    return isinstance(delta, dict) and any(
        delta.get(k) for k in ("content", "tool_calls", "reasoning_content")
    )
