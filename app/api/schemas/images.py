"""POST /v1/images/generations: OpenAI's documented parameters, each with its type."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.api.schemas import params as p
from app.billing.units import image_units
from app.calls.request import CallRequest
from app.errors import InvalidRequest

MAX_IMAGES = 10

ALLOWED: dict[str, p.Check] = {
    "model": p.string(256),
    "prompt": p.string(32_000),
    "n": p.integer(1, MAX_IMAGES),
    "size": p.string(32),
    "quality": p.one_of("standard", "hd", "low", "medium", "high", "auto"),
    "response_format": p.one_of("url", "b64_json"),
    "style": p.one_of("vivid", "natural"),
    "user": p.string(256),
    "background": p.one_of("transparent", "opaque", "auto"),
    "moderation": p.one_of("low", "auto"),
    "output_compression": p.integer(0, 100),
    "output_format": p.one_of("png", "jpeg", "webp"),
    "stream": p.boolean,
}


def parse_images(body: dict[str, Any], *, extra: Iterable[str] = ()) -> CallRequest:
    """Held for `n` images at the per-image price, the prompt, and any output tokens."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    p.check_params(body, ALLOWED, extra)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRequest("'prompt' is required and must be a non-empty string.", param="prompt")
    if body.get("stream"):
        raise InvalidRequest("Streamed image generation is not served; omit 'stream'.", param="stream")
    params = {k: v for k, v in body.items() if k != "stream"}
    n = body.get("n") or 1
    return CallRequest(
        endpoint="images", model=model, params=params, n=n, inputs=[prompt], units=image_units(n)
    )
