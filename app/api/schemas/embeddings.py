"""POST /v1/embeddings: OpenAI's parameters, each with its type."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.api.schemas import params as p
from app.calls.request import CallRequest
from app.errors import InvalidRequest

MAX_INPUTS = 2048

ALLOWED: dict[str, p.Check] = {
    "model": p.string(256),
    "input": lambda param, value: None,  # checked below, with its several shapes
    "encoding_format": p.one_of("float", "base64"),
    "dimensions": p.integer(1, 65536),
    "user": p.string(256),
}


def parse_embeddings(body: dict[str, Any], *, extra: Iterable[str] = ()) -> CallRequest:
    """`input` is a string, an array of strings, a token array or an array of token arrays."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    p.check_params(body, ALLOWED, extra)
    raw = body.get("input")
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and 0 < len(raw) <= MAX_INPUTS and all(isinstance(x, str) for x in raw):
        inputs = list(raw)
    elif isinstance(raw, list) and raw and all(_is_token(x) for x in raw):
        inputs = [" ".join(map(str, raw))]
    elif (
        isinstance(raw, list)
        and 0 < len(raw) <= MAX_INPUTS
        and all(isinstance(x, list) and all(_is_token(t) for t in x) for x in raw)
    ):
        inputs = [" ".join(map(str, x)) for x in raw]
    else:
        raise InvalidRequest(
            f"'input' must be a string, an array of at most {MAX_INPUTS} strings, or token arrays.",
            param="input",
        )
    return CallRequest(endpoint="embeddings", model=model, params=dict(body), inputs=inputs)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31
