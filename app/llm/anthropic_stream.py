"""Anthropic Messages streams: usage in `message_start` and `message_delta`, Anthropic's order.

`message_delta` (stop reason and final usage) and `message_stop` are held back: the call is
settled first, then they go out with `usage.cost` in the `message_delta`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from app.errors import GatewayError, UpstreamError, anthropic_error_event
from app.llm.event_stream import EventStream, sse_event
from app.llm.results import money_fragment
from app.usage import Usage


def anthropic_usage(usage: Usage) -> dict[str, Any]:
    """A Usage in Anthropic's shape."""
    return {
        "input_tokens": usage.input_tokens + usage.audio_input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "output_tokens": usage.completion_tokens,
    }


def anthropic_text(data: dict[str, Any]) -> str:
    """What a message's content blocks generated: text, thinking, tool inputs."""
    import orjson

    parts: list[str] = []
    for block in data.get("content") or ():
        if not isinstance(block, dict):
            continue
        parts.extend(block[k] for k in ("text", "thinking", "name") if isinstance(block.get(k), str))
        if isinstance(block.get("input"), dict):
            parts.append(orjson.dumps(block["input"]).decode())
    return "".join(parts)


class AnthropicStream(EventStream):
    """An Anthropic stream: the provider's SSE bytes, or LiteLLM's (already SSE) bytes."""

    content_marker = b'"content_block_delta"'
    watched_types = frozenset({b"message_start", b"message_delta", b"message_stop", b"error"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._start_usage: dict[str, Any] = {}
        self._delta: dict[str, Any] | None = None
        self._stop_reason: str | None = None
        self._blocks_started = 0
        self._blocks_stopped = 0

    def _block(self, block: bytes) -> bytes:
        self._blocks_started += block.count(b'"content_block_start"')
        self._blocks_stopped += block.count(b'"content_block_stop"')
        return super()._block(block)

    def without_last_content(self, block: bytes, drop: int) -> bytes:
        kept = super().without_last_content(block, drop)
        # Blocks opened or closed only in the part that was dropped never reached the client.
        self._blocks_started -= block.count(b'"content_block_start"') - kept.count(b'"content_block_start"')
        self._blocks_stopped -= block.count(b'"content_block_stop"') - kept.count(b'"content_block_stop"')
        return kept

    def _event(self, kind: str, data: dict[str, Any], raw: bytes) -> bytes:
        if kind == "message_start":
            message = data.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            self._start_usage = dict(usage) if isinstance(usage, dict) else {}
            return raw + b"\n\n"
        if kind == "message_delta":
            self._delta = data
            usage = data.get("usage")
            if isinstance(usage, dict) or self._start_usage:
                merged = {**self._start_usage, **(usage if isinstance(usage, dict) else {})}
                self.meter.usage = Usage.from_anthropic(merged)
            return b""
        if kind == "message_stop":
            self._done = True
            return b""
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        raise UpstreamError(f"The model provider failed the message: {message or 'error event'}")

    def _ended(self) -> bool:
        return self._done or self._delta is not None

    def _is_content(self, data: dict[str, Any]) -> bool:
        return data.get("type") == "content_block_delta"

    def generated_text(self) -> str:
        parts: list[str] = []
        for data in self.raw_events():
            delta = data.get("delta") if data.get("type") == "content_block_delta" else None
            if isinstance(delta, dict):
                parts.extend(
                    delta[k] for k in ("text", "partial_json", "thinking") if isinstance(delta.get(k), str)
                )
        return "".join(parts)

    def finish(self, usage: Usage, cost: Decimal | None, *, wants_usage: bool) -> bytes:
        data = dict(self._delta or {"type": "message_delta"})
        delta = dict(data.get("delta") or {"stop_reason": None, "stop_sequence": None})
        if self._stop_reason is not None:
            delta["stop_reason"] = self._stop_reason
        data["delta"] = delta
        reported = data.get("usage")
        reported = dict(reported) if isinstance(reported, dict) else {"output_tokens": usage.output_tokens}
        if cost is not None:
            reported["cost"] = money_fragment(cost)
        data["usage"] = reported
        return sse_event("message_delta", data) + sse_event("message_stop", {"type": "message_stop"})

    def cut(self) -> bytes:
        self._stop_reason = "max_tokens"
        self._delta = None  # a held delta from the provider would claim a stop it never reached
        if self._blocks_started > self._blocks_stopped:
            return sse_event(
                "content_block_stop", {"type": "content_block_stop", "index": self._blocks_started - 1}
            )
        return b""

    def error_event(self, error: GatewayError) -> bytes:
        return anthropic_error_event(error)
