"""POST /v1/chat/completions: OpenAI's documented parameters, each with its type and range."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.api.schemas import params as p
from app.calls.request import CallRequest
from app.errors import InvalidRequest

_ROLES = frozenset({"system", "user", "assistant", "tool", "function", "developer"})
_PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal"})
MAX_N = 128
TOKEN_LIMIT = 2**31 - 1

ALLOWED: dict[str, p.Check] = {
    "model": p.string(256),
    "messages": p.array,
    "stream": p.boolean,
    "stream_options": p.obj,
    "frequency_penalty": p.number(-2, 2),
    "presence_penalty": p.number(-2, 2),
    "temperature": p.number(0, 2),
    "top_p": p.number(0, 1),
    "n": p.integer(1, MAX_N),
    "max_tokens": p.integer(1, TOKEN_LIMIT),
    "max_completion_tokens": p.integer(1, TOKEN_LIMIT),
    "stop": p.string_or_strings(4),
    "logit_bias": p.logit_bias,
    "logprobs": p.boolean,
    "top_logprobs": p.integer(0, 20),
    "seed": p.integer(-(2**63), 2**63 - 1),
    "tools": p.array,
    "tool_choice": p.string_or_object,
    "parallel_tool_calls": p.boolean,
    "functions": p.array,
    "function_call": p.string_or_object,
    "response_format": p.obj,
    "user": p.string(256),
    "safety_identifier": p.string(256),
    "prompt_cache_key": p.string(1024),
    "store": p.boolean,
    "reasoning_effort": p.one_of("none", "minimal", "low", "medium", "high"),
    "verbosity": p.one_of("low", "medium", "high"),
    "service_tier": p.one_of("auto", "default", "flex", "priority"),
    "modalities": p.array,
}
_STREAM_OPTIONS = {"include_usage": p.boolean, "include_obfuscation": p.boolean}


def parse_chat(body: dict[str, Any], *, force_stream: bool = False, extra: Iterable[str] = ()) -> CallRequest:
    """Check a chat completion body; anything outside OpenAI's parameters is a 400."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    p.check_params(body, ALLOWED, extra)
    for i, message in enumerate(messages):
        _check_message(i, message)
    if body.get("modalities") not in (None, ["text"]):
        raise InvalidRequest(
            "Only text output is served: 'modalities' must be [\"text\"].", param="modalities"
        )
    stream = bool(body.get("stream")) or force_stream
    options = body.get("stream_options") or {}
    p.check_params(options, _STREAM_OPTIONS)
    limits = {k: body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None}
    params = dict(body)
    params["stream"] = stream
    if stream:
        # Always ask for usage, so a stream is billed on the provider's own count.
        params["stream_options"] = {**options, "include_usage": True}
    else:
        params.pop("stream_options", None)
    tier = body.get("service_tier")
    return CallRequest(
        endpoint="chat",
        model=model,
        params=params,
        stream=stream,
        wants_usage=stream and bool(options.get("include_usage")),
        max_output_tokens=min(limits.values()) if limits else None,
        output_limit_keys=tuple(limits) or ("max_tokens",),
        n=body.get("n") or 1,
        service_tier=tier if tier in ("flex", "priority") else None,
    )


def _check_message(i: int, message: Any) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict) or message.get("role") not in _ROLES:
        raise InvalidRequest(f"{where} must be an object with a valid 'role'.", param=where)
    content = message.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in _PART_TYPES:
                raise InvalidRequest(
                    f"{where}.content[{j}] must be a content part of type "
                    "text, image_url, input_audio, file or refusal.",
                    param=f"{where}.content[{j}]",
                )
            file = part.get("file")
            if part["type"] == "file" and not (
                isinstance(file, dict) and isinstance(file.get("file_data"), str)
            ):
                # An uploaded file's size is unknown here, so its cost could not be held.
                raise InvalidRequest(
                    f"{where}.content[{j}].file must carry 'file_data'; files by id are not served.",
                    param=f"{where}.content[{j}]",
                )
    elif content is not None and not isinstance(content, str):
        raise InvalidRequest(
            f"{where}.content must be a string or an array of parts.", param=f"{where}.content"
        )
    for key in ("name", "tool_call_id"):
        if message.get(key) is not None and not isinstance(message[key], str):
            raise InvalidRequest(f"{where}.{key} must be a string.", param=f"{where}.{key}")
    calls = message.get("tool_calls")
    if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
        raise InvalidRequest(f"{where}.tool_calls must be an array of objects.", param=f"{where}.tool_calls")
