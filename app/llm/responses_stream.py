"""OpenAI Responses API streams: `response.*` events, usage in `response.completed`.

The terminal event (`response.completed`, or `response.incomplete` when the output limit was
reached) is held back: the call is settled on its usage first, then it goes out with
`response.usage.cost`. `response.failed` and `error` from the provider are a failed call.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from app.errors import GatewayError, UpstreamError
from app.llm.event_stream import EventStream, sse_event
from app.llm.results import money_fragment
from app.usage import Usage

_TERMINAL = ("response.completed", "response.incomplete")


def responses_usage(usage: Usage) -> dict[str, Any]:
    """A Usage in the Responses API's shape."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def responses_text(data: dict[str, Any]) -> str:
    """What a response's output items generated: text, refusals, reasoning, tool-call arguments."""
    parts: list[str] = []
    for item in data.get("output") or ():
        if not isinstance(item, dict):
            continue
        for key in ("arguments", "name"):
            if isinstance(item.get(key), str):
                parts.append(item[key])
        for part in list(item.get("content") or ()) + list(item.get("summary") or ()):
            if isinstance(part, dict):
                parts.extend(part[k] for k in ("text", "refusal") if isinstance(part.get(k), str))
    return "".join(parts)


class ResponsesStream(EventStream):
    """A Responses stream: the provider's SSE bytes, or LiteLLM's events rendered as SSE."""

    content_marker = b'.delta"'
    watched_types = frozenset(
        {b"response.created", b"response.completed", b"response.incomplete", b"response.failed", b"error"}
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._response: dict[str, Any] | None = None  # the latest response object seen
        self._terminal: dict[str, Any] | None = None
        self._cut = False

    def _event(self, kind: str, data: dict[str, Any], raw: bytes) -> bytes:
        response = data.get("response")
        if kind == "response.created":
            if isinstance(response, dict):
                self._response = response
            return raw + b"\n\n"
        if kind in _TERMINAL:
            self._terminal = data
            if isinstance(response, dict):
                self.meter.usage = Usage.from_responses(response.get("usage"))
                self._response = response
            self._done = True
            return b""
        # response.failed or error: the provider failed the call; nothing is charged.
        error = response.get("error") if isinstance(response, dict) else data
        message = error.get("message") if isinstance(error, dict) else None
        raise UpstreamError(f"The model provider failed the response: {message or kind}")

    def _is_content(self, data: dict[str, Any]) -> bool:
        return str(data.get("type", "")).endswith(".delta")

    def generated_text(self) -> str:
        parts: list[str] = []
        for data in self.raw_events():
            if str(data.get("type", "")).endswith(".delta") and isinstance(data.get("delta"), str):
                parts.append(data["delta"])
        return "".join(parts)

    def finish(self, usage: Usage, cost: Decimal | None, *, wants_usage: bool) -> bytes:
        if self._terminal is not None and not self._cut:
            data = self._terminal
        else:
            base = dict(self._response or {"object": "response"})
            base.update(status="incomplete", incomplete_details={"reason": "max_output_tokens"})
            data = {"type": "response.incomplete", "response": base, "sequence_number": self.sequence}
        response = data.setdefault("response", {})
        reported = response.get("usage")
        reported = dict(reported) if isinstance(reported, dict) else responses_usage(usage)
        if cost is not None:
            reported["cost"] = money_fragment(cost)
        response["usage"] = reported
        return sse_event(str(data.get("type")), data)

    def cut(self) -> bytes:
        self._cut = True
        return b""

    def error_event(self, error: GatewayError) -> bytes:
        # The documented fields, and `error` (OpenAI's shape), which the SDKs raise on.
        body = error.body()
        return sse_event(
            "error",
            {
                "type": "error",
                "code": error.code,
                "message": error.message,
                "param": error.param,
                "sequence_number": self.sequence,
                **body,
            },
        )
