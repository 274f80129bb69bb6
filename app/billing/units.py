"""Per-unit usage a call is held for (images, audio seconds, characters, queries) and its cost."""

from __future__ import annotations

import math
from decimal import Decimal

from app.billing.estimate import audio_seconds
from app.billing.pricing import Price, usage_cost
from app.errors import InvalidRequest
from app.usage import Usage

RERANK_DOCUMENTS_PER_UNIT = 100  # Cohere bills one search unit per query per 100 documents

# Each unit and the price it needs: a model that bills by a unit it has no price for is refused.
_UNIT_PRICES = {
    "images": ("per_image", "output_cost_per_image"),
    "seconds": ("per_second", "input_cost_per_second"),
    "characters": ("per_character", "input_cost_per_character"),
    "queries": ("per_query", "input_cost_per_query"),
}


def unit_cost(price: Price, units: Usage, *, model: str) -> Decimal:
    """The cost of the units alone; refuses a model with no price for a unit it bills by."""
    if not price.free:
        for unit, (field, key) in _UNIT_PRICES.items():
            if getattr(units, unit) and getattr(price, field) is None:
                raise InvalidRequest(
                    f"The model '{model}' has no '{key}' configured, so the gateway will not serve "
                    "this request.",
                    code="model_not_priced",
                    param="model",
                )
    return usage_cost(price, units)


def image_units(n: int) -> Usage:
    return Usage(images=n)


def transcription_units(raw: bytes, filename: str) -> Usage:
    """Whole seconds of audio: a WAV header's exact duration, else the lowest bit rate's bound."""
    seconds = audio_seconds(raw, filename.rsplit(".", 1)[-1].lower())
    # Providers bill whole seconds (rounded up); the hold and the fallback charge do too.
    return Usage(seconds=float(max(math.ceil(seconds), 1)), counted=True)


def speech_units(text: str) -> Usage:
    """Speech is billed per input character: known exactly before the call."""
    return Usage(characters=len(text))


def rerank_units(documents: int) -> Usage:
    """Search units of one query: one per started hundred documents."""
    return Usage(queries=max(1, math.ceil(documents / RERANK_DOCUMENTS_PER_UNIT)), counted=True)
