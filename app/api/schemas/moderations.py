"""POST /v1/moderations: OpenAI's parameters, each with its type."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.api.schemas import params as p
from app.calls.request import CallRequest
from app.errors import InvalidRequest

DEFAULT_MODEL = "omni-moderation-latest"  # OpenAI's default when no model is named
MAX_INPUTS = 2048

ALLOWED: dict[str, p.Check] = {
    "model": p.string(256),
    "input": lambda param, value: None,  # checked below, with its several shapes
}


def parse_moderations(body: dict[str, Any], *, extra: Iterable[str] = ()) -> CallRequest:
    """`input` is a string, an array of strings, or an array of text / image_url parts."""
    p.check_params(body, ALLOWED, extra)
    model = body.get("model") or DEFAULT_MODEL
    texts = _texts(body.get("input"))
    params = {**body, "model": model}
    return CallRequest(endpoint="moderations", model=model, params=params, inputs=texts, max_output_tokens=0)


def _texts(raw: Any) -> list[str]:
    if isinstance(raw, str) and raw:
        return [raw]
    if isinstance(raw, list) and 0 < len(raw) <= MAX_INPUTS:
        if all(isinstance(x, str) for x in raw):
            return list(raw)
        if all(isinstance(x, dict) and x.get("type") in ("text", "image_url") for x in raw):
            return [str(x.get("text") or "") for x in raw if x.get("type") == "text"]
    raise InvalidRequest(
        "'input' must be a string, an array of strings, or an array of text and image_url parts.",
        param="input",
    )
