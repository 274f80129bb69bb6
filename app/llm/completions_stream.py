"""Legacy completion streams: LiteLLM's text_completion chunks as OpenAI's SSE events.

The usage chunk (asked for upstream always) is held back until the call is settled, then sent
with its cost only to a client that asked for usage.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from app.errors import GatewayError, UpstreamError, sse_error_event
from app.llm.results import StreamMeter, first_events, money_fragment, openai_usage
from app.usage import Usage

DONE = b"data: [DONE]\n\n"
_DATA = b"data: "


def completion_text(data: dict[str, Any]) -> str:
    """The text of every choice of a text_completion body or chunk."""
    return "".join(str(c.get("text") or "") for c in data.get("choices") or () if isinstance(c, dict))


def _choice(choice: dict[str, Any]) -> dict[str, Any]:
    """A choice in OpenAI's shape: every field present, as the official client expects."""
    return {
        "text": choice.get("text") or "",
        "index": choice.get("index") or 0,
        "logprobs": choice.get("logprobs"),
        "finish_reason": choice.get("finish_reason"),
    }


class TextCompletionStream:
    """A `CompletionStream` over LiteLLM's `atext_completion(stream=True)` iterator."""

    def __init__(self, upstream: Any, *, deployment_id: str | None, provider: str) -> None:
        self.deployment_id = deployment_id
        self.provider = provider
        self.meter = StreamMeter()
        self._upstream = upstream
        self._base: dict[str, Any] = {"object": "text_completion"}
        self._finished = False

    async def events(self):  # type: ignore[no-untyped-def]  # AsyncIterator[bytes]
        meter = self.meter
        async for chunk in self._upstream:
            data: dict[str, Any] = chunk.model_dump(exclude_none=True)
            for key in ("id", "created", "model"):
                if key in data:
                    self._base[key] = data[key]
            usage = data.pop("usage", None)
            if isinstance(usage, dict):
                usage.pop("cost", None)  # LiteLLM's own estimate, not what the gateway charges
                found = Usage.from_openai(usage)
                if found is not None:
                    meter.usage = found
            choices = [_choice(c) for c in data.get("choices") or () if isinstance(c, dict)]
            if not any(c["text"] or c["finish_reason"] for c in choices):
                continue  # the usage chunk, or an empty one
            self._finished = self._finished or any(c["finish_reason"] for c in choices)
            meter.parts.extend(c["text"] for c in choices)
            event = _DATA + orjson.dumps({**self._base, "choices": choices})
            meter.events += 1
            if meter.first_event is None:
                meter.first_event = event
            yield event + b"\n\n"
        if meter.usage is None and not self._finished:
            raise UpstreamError("The model provider ended the stream before it was complete.")

    def generated_text(self) -> str:
        return "".join(self.meter.parts)

    def finish(self, usage: Usage, cost: Decimal | None, *, wants_usage: bool) -> bytes:
        if not wants_usage:
            return DONE
        reported = openai_usage(usage)
        if cost is not None:
            reported["cost"] = money_fragment(cost)
        chunk = {**self._base, "choices": [], "usage": reported}
        return _DATA + orjson.dumps(chunk) + b"\n\n" + DONE

    def without_last_content(self, block: bytes, drop: int) -> bytes:
        return first_events(block, block.count(b"\n\n") - drop)

    def cut(self) -> bytes:
        choice = {"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}
        return _DATA + orjson.dumps({**self._base, "choices": [choice]}) + b"\n\n"

    def error_event(self, error: GatewayError) -> bytes:
        return sse_error_event(error)

    async def aclose(self) -> None:
        closer = getattr(self._upstream, "aclose", None)
        if closer is not None:
            await closer()
