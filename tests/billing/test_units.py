"""app/billing/units.py: what per-unit calls are held for, and the refusal of unpriced units."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.billing.pricing import Price
from app.billing.units import image_units, rerank_units, speech_units, transcription_units, unit_cost
from app.errors import InvalidRequest
from tests.fake_protocols.media import wav_bytes

TOKENS = {"input": Decimal("0.000001"), "output": Decimal("0.000002")}


def test_each_unit_costs_its_own_price() -> None:
    price = Price(
        **TOKENS,
        per_image=Decimal("0.04"),
        per_second=Decimal("0.0001"),
        per_character=Decimal("0.000015"),
        per_query=Decimal("0.002"),
    )
    assert unit_cost(price, image_units(3), model="m") == Decimal("0.12")
    assert unit_cost(price, speech_units("hello"), model="m") == Decimal("0.000075")
    assert unit_cost(price, rerank_units(250), model="m") == Decimal("0.006")
    assert unit_cost(price, transcription_units(wav_bytes(24000 * 2 + 100), "a.wav"), model="m") == Decimal(
        "0.0003"
    )


@pytest.mark.parametrize(
    ("units", "key"),
    [
        (image_units(1), "output_cost_per_image"),
        (speech_units("hi"), "input_cost_per_character"),
        (rerank_units(1), "input_cost_per_query"),
    ],
)
def test_a_unit_without_a_price_is_refused_unless_the_model_is_free(units: object, key: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        unit_cost(Price(**TOKENS), units, model="m")  # type: ignore[arg-type]
    assert refused.value.code == "model_not_priced" and key in refused.value.message
    free = Price(Decimal(0), Decimal(0), free=True)
    assert unit_cost(free, units, model="m") == 0  # type: ignore[arg-type]


def test_audio_is_held_for_whole_seconds_from_its_header_or_the_lowest_bit_rate() -> None:
    assert transcription_units(wav_bytes(8000 * 3, 8000), "a.wav").seconds == 3
    assert transcription_units(wav_bytes(8000 * 3 + 1, 8000), "a.wav").seconds == 4
    assert transcription_units(b"\xff\xf3" + bytes(9998), "a.mp3").seconds == 10  # 8 kbit/s
    assert transcription_units(b"x", "a.mp3").seconds == 1


def test_rerank_holds_one_search_unit_per_started_hundred_documents() -> None:
    assert [rerank_units(n).queries for n in (1, 100, 101, 250)] == [1, 1, 2, 3]
