"""Validation of OpenAI request bodies: cheap checks on the parsed JSON, no re-serialisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.errors import InvalidRequest
from app.llm.router import forbidden_params

_ROLES = frozenset({"system", "user", "assistant", "tool", "function", "developer"})


@dataclass(slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    wants_usage: bool
    max_tokens: int | None
    max_tokens_key: str
    n: int
    params: dict[str, Any]


def _positive_int(body: dict[str, Any], key: str, *, upper: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{key}' must be a positive integer.", param=key)
    if upper is not None and value > upper:
        raise InvalidRequest(f"'{key}' must be at most {upper}.", param=key)
    return value


def _reject_forbidden(body: dict[str, Any]) -> None:
    bad = forbidden_params(body)
    if bad:
        raise InvalidRequest(f"Unsupported parameter(s): {', '.join(bad)}.", param=bad[0])


def parse_chat(body: dict[str, Any], *, force_stream: bool = False) -> ChatRequest:
    """Check a chat completion body; every other OpenAI parameter passes through untouched."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise InvalidRequest(
                f"messages[{i}] must be an object with a valid 'role'.", param=f"messages[{i}]"
            )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    stream = stream or force_stream
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    wants_usage = bool(options and options.get("include_usage"))
    _reject_forbidden(body)
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _positive_int(body, key)
    n = _positive_int(body, "n", upper=128) or 1
    params = dict(body)
    params["stream"] = stream
    if stream:
        # Always ask for usage so streams are billed on the provider's count.
        params["stream_options"] = {**(options or {}), "include_usage": True}
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        wants_usage=wants_usage,
        max_tokens=max_tokens,
        max_tokens_key=key,
        n=n,
        params=params,
    )


@dataclass(slots=True)
class EmbeddingRequest:
    model: str
    inputs: list[str]
    params: dict[str, Any]


def parse_embeddings(body: dict[str, Any]) -> EmbeddingRequest:
    """Check an embeddings body: `input` is a string, a list of strings, or token arrays."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    raw = body.get("input")
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        inputs = list(raw)
    elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        inputs = [" ".join(map(str, raw))]
    elif (
        isinstance(raw, list)
        and raw
        and all(isinstance(x, list) and all(isinstance(t, int) for t in x) for x in raw)
    ):
        inputs = [" ".join(map(str, x)) for x in raw]
    else:
        raise InvalidRequest(
            "'input' must be a string, an array of strings or an array of token arrays.",
            param="input",
        )
    _reject_forbidden(body)
    return EmbeddingRequest(model=model, inputs=inputs, params=dict(body))
