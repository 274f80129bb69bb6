"""POST /v1/responses: the Responses API's documented parameters, each with its type and range."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.api.schemas import params as p
from app.calls.request import CallRequest
from app.errors import InvalidRequest

TOKEN_LIMIT = 2**31 - 1

ALLOWED: dict[str, p.Check] = {
    "model": p.string(256),
    "input": lambda k, v: None,  # checked below: a string or an array of items
    "instructions": p.string(10_000_000),
    "stream": p.boolean,
    "stream_options": p.obj,
    "max_output_tokens": p.integer(1, TOKEN_LIMIT),
    "max_tool_calls": p.integer(1, 10_000),
    "temperature": p.number(0, 2),
    "top_p": p.number(0, 1),
    "top_logprobs": p.integer(0, 20),
    "tools": p.array,
    "tool_choice": p.string_or_object,
    "parallel_tool_calls": p.boolean,
    "text": p.obj,
    "reasoning": p.obj,
    "include": p.array,
    "truncation": p.one_of("auto", "disabled"),
    "store": p.boolean,
    "user": p.string(256),
    "safety_identifier": p.string(256),
    "prompt_cache_key": p.string(1024),
    "service_tier": p.one_of("auto", "default", "flex", "priority"),
}
# Parameters that make the provider add input the gateway cannot see (a stored conversation or
# prompt) or answer later: the cost could not be held before the call.
_NOT_SERVED = {
    "previous_response_id": "send the conversation in 'input' instead",
    "conversation": "send the conversation in 'input' instead",
    "prompt": "send the prompt's text in 'instructions' and 'input'",
    "background": "background responses are not served",
}
_STREAM_OPTIONS = {"include_obfuscation": p.boolean}


def parse_responses(body: dict[str, Any], *, extra: Iterable[str] = ()) -> CallRequest:
    """Check a Responses body; anything outside the API's parameters is a 400."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    for key, why in _NOT_SERVED.items():
        if body.get(key) not in (None, False):
            raise InvalidRequest(f"'{key}' is not supported by this gateway: {why}.", param=key)
    p.check_params({k: v for k, v in body.items() if k not in _NOT_SERVED}, ALLOWED, extra)
    _check_input(body.get("input"))
    p.check_params(body.get("stream_options") or {}, _STREAM_OPTIONS)
    params = {k: v for k, v in body.items() if k not in _NOT_SERVED}
    stream = bool(body.get("stream"))
    params["stream"] = stream
    if not stream:
        params.pop("stream_options", None)
    tier = body.get("service_tier")
    limit = body.get("max_output_tokens")
    return CallRequest(
        endpoint="responses",
        model=model,
        params=params,
        stream=stream,
        wants_usage=True,  # usage is part of the protocol's terminal event
        max_output_tokens=limit,
        output_limit_keys=("max_output_tokens",),
        service_tier=tier if tier in ("flex", "priority") else None,
    )


def _check_input(value: Any) -> None:
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("'input' must not be empty.", param="input")
        return
    if not isinstance(value, list) or not value:
        raise InvalidRequest("'input' is required: a string or a non-empty array of items.", param="input")
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict) or not (
            isinstance(item.get("type"), str) or isinstance(item.get("role"), str)
        ):
            raise InvalidRequest(f"{where} must be an object with a 'type' or a 'role'.", param=where)
        content = item.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(
                f"{where}.content must be a string or an array of parts.", param=f"{where}.content"
            )
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest(
                    f"{where}.content[{j}] must be a part with a 'type'.", param=f"{where}.content[{j}]"
                )
            if part["type"] == "input_file" and not isinstance(part.get("file_data"), str):
                # An uploaded file's size is unknown here, so its cost could not be held.
                raise InvalidRequest(
                    f"{where}.content[{j}] must carry 'file_data'; files by id are not served.",
                    param=f"{where}.content[{j}]",
                )
