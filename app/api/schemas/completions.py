"""POST /v1/completions (legacy): OpenAI's documented parameters, each with its type."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.api.schemas import params as p
from app.calls.request import CallRequest
from app.errors import InvalidRequest

DEFAULT_MAX_TOKENS = 16  # the legacy API's own default
MAX_PROMPTS = 2048
TOKEN_LIMIT = 2**31 - 1

ALLOWED: dict[str, p.Check] = {
    "model": p.string(256),
    "prompt": lambda param, value: None,  # checked below, with its several shapes
    "best_of": p.integer(1, 20),
    "echo": p.boolean,
    "frequency_penalty": p.number(-2, 2),
    "presence_penalty": p.number(-2, 2),
    "logit_bias": p.logit_bias,
    "logprobs": p.integer(0, 5),
    "max_tokens": p.integer(1, TOKEN_LIMIT),
    "n": p.integer(1, 128),
    "seed": p.integer(-(2**63), 2**63 - 1),
    "stop": p.string_or_strings(4),
    "stream": p.boolean,
    "stream_options": p.obj,
    "suffix": p.string(100_000),
    "temperature": p.number(0, 2),
    "top_p": p.number(0, 1),
    "user": p.string(256),
}
_STREAM_OPTIONS = {"include_usage": p.boolean, "include_obfuscation": p.boolean}


def parse_completions(body: dict[str, Any], *, extra: Iterable[str] = ()) -> CallRequest:
    """`prompt` is a string, an array of strings, a token array or an array of token arrays."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    p.check_params(body, ALLOWED, extra)
    prompts = _prompts(body.get("prompt"))
    options = body.get("stream_options") or {}
    p.check_params(options, _STREAM_OPTIONS)
    stream = bool(body.get("stream"))
    n = body.get("n") or 1
    best_of = body.get("best_of") or n
    if best_of < n:
        raise InvalidRequest("'best_of' must be greater than or equal to 'n'.", param="best_of")
    choices = best_of * len(prompts)  # best_of completions are generated (and billed) per prompt
    if stream and (best_of > 1 or n * len(prompts) > 1):
        raise InvalidRequest(
            "Streaming is served for one prompt with one choice; use 'stream': false for "
            "several prompts, 'n' or 'best_of'.",
            param="stream",
        )
    params = dict(body)
    params["stream"] = stream
    if stream:
        params["stream_options"] = {**options, "include_usage": True}  # billed on the provider's count
    else:
        params.pop("stream_options", None)
    return CallRequest(
        endpoint="completions",
        model=model,
        params=params,
        stream=stream,
        wants_usage=stream and bool(options.get("include_usage")),
        max_output_tokens=body.get("max_tokens") or DEFAULT_MAX_TOKENS,
        output_limit_keys=("max_tokens",),
        n=choices,
        inputs=prompts,
    )


def _prompts(raw: Any) -> list[str]:
    """Each prompt as text to count (token arrays as their ids, one token each)."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(_is_token(t) for t in raw):
        return [" ".join("0" for _ in raw)]
    if isinstance(raw, list) and 0 < len(raw) <= MAX_PROMPTS:
        if all(isinstance(x, str) for x in raw):
            return list(raw)
        if all(isinstance(x, list) and x and all(_is_token(t) for t in x) for x in raw):
            return [" ".join("0" for _ in x) for x in raw]
    raise InvalidRequest(
        f"'prompt' must be a string, an array of at most {MAX_PROMPTS} strings, or token arrays.",
        param="prompt",
    )


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31
