"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's documented parameters and types."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from app.api.schemas import params as p
from app.calls.request import CallRequest
from app.errors import InvalidRequest
from app.llm.wires import ANTHROPIC_PASS_HEADERS

TOKEN_LIMIT = 2**31 - 1
_ROLES = frozenset({"user", "assistant"})


def _system(param: str, value: Any) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not all(isinstance(b, dict) and b.get("type") == "text" for b in value):
        raise p.bad(param, "must be a string or an array of text blocks.")


def _metadata(param: str, value: Any) -> None:
    if not isinstance(value, dict) or set(value) - {"user_id"}:
        raise p.bad(param, "must be an object with at most 'user_id'.")
    if value.get("user_id") is not None and not isinstance(value["user_id"], str):
        raise p.bad(param, "'user_id' must be a string.")


def _strings(max_items: int) -> p.Check:
    def check(param: str, value: Any) -> None:
        if (
            not isinstance(value, list)
            or len(value) > max_items
            or not all(isinstance(v, str) for v in value)
        ):
            raise p.bad(param, f"must be an array of at most {max_items} strings.")

    return check


COUNT_ALLOWED: dict[str, p.Check] = {
    "model": p.string(256),
    "messages": p.array,
    "system": _system,
    "tools": p.array,
    "tool_choice": p.obj,
    "thinking": p.obj,
    "mcp_servers": p.array,
    "context_management": p.obj,
    "output_format": p.obj,
}
ALLOWED: dict[str, p.Check] = {
    **COUNT_ALLOWED,
    "max_tokens": p.integer(1, TOKEN_LIMIT),
    "stream": p.boolean,
    "stop_sequences": _strings(8191),
    "temperature": p.number(0, 1),
    "top_p": p.number(0, 1),
    "top_k": p.integer(0, 2**31 - 1),
    "metadata": _metadata,
    "service_tier": p.one_of("auto", "standard_only"),
}
# MCP servers make the provider call tools the gateway cannot see or price.
ALLOWED.pop("mcp_servers")
COUNT_ALLOWED.pop("mcp_servers")


def pass_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's Anthropic protocol headers, to pass on to Anthropic deployments."""
    return {k: headers[k] for k in ANTHROPIC_PASS_HEADERS if headers.get(k)}


def _check_common(body: dict[str, Any], allowed: Mapping[str, p.Check], extra: Iterable[str]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required (a string).", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: Field required (a non-empty array).", param="messages")
    p.check_params(body, allowed, extra)
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise InvalidRequest(f"{where}: must be an object with role 'user' or 'assistant'.", param=where)
        content = message.get("content")
        if isinstance(content, list):
            for j, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    raise InvalidRequest(
                        f"{where}.content.{j}: must be a content block with a 'type'.",
                        param=f"{where}.content.{j}",
                    )
        elif not isinstance(content, str):
            raise InvalidRequest(
                f"{where}.content: must be a string or an array of blocks.", param=f"{where}.content"
            )
    return model


def parse_messages(
    body: dict[str, Any], headers: Mapping[str, str], *, extra: Iterable[str] = ()
) -> CallRequest:
    """Check a Messages body; anything outside Anthropic's parameters is a 400."""
    model = _check_common(body, ALLOWED, extra)
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens: Field required.", param="max_tokens")
    params = dict(body)
    stream = bool(body.get("stream"))
    params["stream"] = stream
    return CallRequest(
        endpoint="messages",
        model=model,
        params=params,
        stream=stream,
        wants_usage=True,  # usage is part of the protocol's message_delta
        max_output_tokens=max_tokens,
        output_limit_keys=("max_tokens",),
        headers=pass_headers(headers),
    )


def parse_count_tokens(body: dict[str, Any], *, extra: Iterable[str] = ()) -> dict[str, Any]:
    """Check a count_tokens body; returns the parameters to count."""
    _check_common(body, COUNT_ALLOWED, extra)
    return dict(body)
