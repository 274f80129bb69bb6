"""Typed results of a provider call, the same for the fast path and LiteLLM's path.

A `Completion` is a whole JSON answer; a `CompletionStream` is an open stream of SSE events
whose usage is read as it passes. The call lifecycle sees only these two types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import orjson

from app.errors import GatewayError
from app.usage import Usage


def money_fragment(value: Decimal) -> orjson.Fragment:
    """An exact decimal as a JSON number (never through float)."""
    return orjson.Fragment(format(value.normalize(), "f").encode())


@dataclass(slots=True)
class Completion:
    """A provider's JSON answer with its usage; `data` is the parsed body."""

    data: dict[str, Any]
    usage: Usage | None
    deployment_id: str | None
    provider: str
    text: Callable[[], str]  # generated text, for counting when the provider reported no usage
    usage_key: str = "usage"
    # A protocol whose answer has no token usage object gets only `{"cost": ...}` there.
    cost_only: bool = False
    # A body that is not JSON (speech audio, a plain-text transcript): sent as it is, the
    # cost only in the X-Request-Cost header.
    raw: bytes | None = None
    media_type: str = "application/json"
    # The protocol's usage object, for answers where the provider reported none.
    render_usage: Callable[[Usage], dict[str, Any]] = field(default=lambda usage: openai_usage(usage))

    def body(self, cost: Decimal | None, usage: Usage | None = None) -> bytes:
        """The answer as the client gets it: with `usage.cost` when the call was charged."""
        if self.raw is not None:
            return self.raw
        if cost is not None:
            reported = self.data.get(self.usage_key)
            if not isinstance(reported, dict):
                reported = {} if usage is None or self.cost_only else self.render_usage(usage)
                self.data[self.usage_key] = reported
            reported["cost"] = money_fragment(cost)
        return orjson.dumps(self.data)


def openai_usage(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object for usage the gateway knows (counted, or from another shape)."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


@dataclass(slots=True)
class StreamMeter:
    """What has passed through a stream so far, for billing and for stopping it in time."""

    usage: Usage | None = None
    events: int = 0  # content events relayed: about one token each
    parts: list[str] = field(default_factory=list)  # text, where events were parsed anyway
    raw: list[bytes] = field(default_factory=list)  # unparsed events, kept only until usage arrives
    first_event: bytes | None = None  # one event, to copy ids from when the gateway adds its own


class CompletionStream(Protocol):
    """An open stream of whole SSE events in one protocol; the usage event is held back.

    `events()` ends at the provider's terminal event without yielding it, so the lifecycle can
    settle first and then send `finish()`: the usage event (with its cost) if the client asked
    for it, and the terminal event.
    """

    deployment_id: str | None
    provider: str
    meter: StreamMeter

    def events(self) -> AsyncIterator[bytes]: ...

    def generated_text(self) -> str:
        """Text generated so far, for counting when the provider reported no usage."""
        ...

    def finish(self, usage: Usage, cost: Decimal | None, *, wants_usage: bool) -> bytes: ...

    def cut(self) -> bytes:
        """Events that end the stream early as if the output limit was reached."""
        ...

    def error_event(self, error: GatewayError) -> bytes:
        """A failure after the stream started, as this protocol's error event."""
        ...

    def without_last_content(self, block: bytes, drop: int) -> bytes:
        """The block without its last `drop` content events (a stream cut at its hold)."""
        ...

    async def aclose(self) -> None: ...


def first_events(block: bytes, keep: int) -> bytes:
    """The first `keep` SSE events of a block (for protocols where every event is content)."""
    if keep <= 0:
        return b""
    return b"\n\n".join(block.split(b"\n\n")[:keep]) + b"\n\n"
