"""Images, transcriptions (multipart) and speech with the official client, billed per unit.

Each charge equals the fake provider's usage at the configured per-unit prices (per image, per
second of audio, per character), plus tokens where the provider reports them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.billing.support import audit, charges, decimal_json, tag, wait_reserved_zero
from tests.conftest import INPUT_PRICE, OUTPUT_PRICE, Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_protocols.media import wav_bytes
from tests.fake_provider import FakeProvider
from tests.support import assert_openai_error, bearer

IMAGE_PRICE = Decimal("0.02")
SECOND_PRICE = Decimal("0.0001")
CHARACTER_PRICE = Decimal("0.000015")
PLACES = Decimal("0.00000001")
MAX_UPLOAD = 1024 * 1024


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_provider: FakeProvider,
    pg_database: str,
) -> Iterator[Gateway]:
    base = fake_provider.base_url
    image = {"output_cost_per_image": str(IMAGE_PRICE)}
    gateway = start_gateway(
        tmp_path_factory.mktemp(f"media-{request.param}"),
        models=[
            model_entry("dalle", "dall-e-2+chunks-3", base, **image),
            model_entry("gpt-image", "gpt-image-1+nousage", base, **image),
            model_entry("image-unpriced", "dall-e-2", base),
            model_entry("image-broken", "dall-e-2+fail-500", base, **image),
            model_entry("image-flaky", "dall-e-2+fail-503", base, **image),
            model_entry("whisper", "fake+chunks-4", base, input_cost_per_second=str(SECOND_PRICE)),
            model_entry("whisper-broken", "fake+fail-503", base, input_cost_per_second=str(SECOND_PRICE)),
            model_entry("tts", "fake", base, input_cost_per_character=str(CHARACTER_PRICE)),
        ],
        router_settings={"num_retries": 0, "fallbacks": [{"image-flaky": ["dalle"]}]},
        env={
            "MAX_REQUEST_SIZE": str(MAX_UPLOAD),
            **({"DATABASE_URL": pg_database} if request.param == "postgres" else {}),
        },
    )
    yield gateway
    stop_gateway(gateway)


def _record(gw: Gateway, key: str, request_id: str) -> dict[str, Any]:
    r = httpx.get(f"{gw.url}/billing/requests/{request_id}", headers=bearer(key), timeout=30)
    assert r.status_code == 200, r.text
    record: dict[str, Any] = decimal_json(r)
    return record


def _wav(seconds: float, rate: int = 8000) -> bytes:
    return wav_bytes(int(seconds * rate), rate)


# -- images -----------------------------------------------------------------------------------


def test_images_are_charged_per_image_plus_the_reported_tokens(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    prompt = f"{tag()} a red fox"
    raw = gw.client(key).images.with_raw_response.generate(model="dalle", prompt=prompt, n=2)
    images = raw.parse()
    assert len(images.data) == 2 and all(i.url for i in images.data)
    assert images.usage is not None
    assert (images.usage.input_tokens, images.usage.output_tokens) == (4, 6)
    expected = (2 * IMAGE_PRICE + 4 * INPUT_PRICE + 6 * OUTPUT_PRICE).quantize(PLACES)
    assert Decimal(raw.headers["x-request-cost"]) == expected
    assert decimal_json(raw.http_response)["usage"]["cost"] == expected
    assert charges(gw, key)[raw.headers["x-gateway-request-id"]].amount == -expected
    assert gw.balance(key) == 1 - expected
    record = _record(gw, key, raw.headers["x-gateway-request-id"])
    assert record["status"] == "charged" and record["cost"] == expected
    assert record["usage"] == {"input_tokens": 4, "output_tokens": 6, "images": 2}


def test_images_without_reported_usage_are_charged_per_image(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    raw = gw.client(key).images.with_raw_response.generate(model="gpt-image", prompt=f"{tag()} a cat", n=3)
    images = raw.parse()
    assert len(images.data) == 3
    assert base64.b64decode(images.data[0].b64_json or "").startswith(b"\x89PNG")
    expected = 3 * IMAGE_PRICE
    assert decimal_json(raw.http_response)["usage"] == {"cost": expected}
    assert charges(gw, key)[raw.headers["x-gateway-request-id"]].amount == -expected


def test_images_fall_back_through_the_router_and_are_charged_once(
    gw: Gateway, fake_provider: FakeProvider
) -> None:
    _, key = gw.new_user(1)
    marker = tag()
    raw = gw.client(key).images.with_raw_response.generate(model="image-flaky", prompt=f"{marker} owl")
    assert len(raw.parse().data) == 1
    tried = [
        r["model"] for r in fake_provider.requests() if marker in str((r.get("body") or {}).get("prompt"))
    ]
    # LiteLLM's OpenAI image client retries a 503 itself before the Router falls back.
    assert tried[-1] == "dall-e-2+chunks-3" and set(tried[:-1]) == {"dall-e-2+fail-503"}
    expected = (IMAGE_PRICE + 2 * INPUT_PRICE + 3 * OUTPUT_PRICE).quantize(PLACES)
    assert charges(gw, key)[raw.headers["x-gateway-request-id"]].amount == -expected


def test_images_the_balance_cannot_cover_are_a_402(gw: Gateway) -> None:
    _, key = gw.new_user(Decimal("0.05"))
    r = httpx.post(
        gw.v1 + "/images/generations",
        json={"model": "gpt-image", "prompt": "three cats", "n": 3},
        headers=bearer(key),
        timeout=60,
    )
    assert_openai_error(r, 402, "insufficient_quota", "insufficient_balance")
    assert gw.balance(key) == Decimal("0.05")


def test_a_model_with_no_image_price_is_refused(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    r = httpx.post(
        gw.v1 + "/images/generations",
        json={"model": "image-unpriced", "prompt": "a cat"},
        headers=bearer(key),
        timeout=60,
    )
    assert_openai_error(r, 400, "invalid_request_error", "model_not_priced")


def test_a_failed_image_call_costs_nothing(gw: Gateway) -> None:
    user, key = gw.new_user(1)
    r = httpx.post(
        gw.v1 + "/images/generations",
        json={"model": "image-broken", "prompt": "a cat"},
        headers=bearer(key),
        timeout=60,
    )
    assert_openai_error(r, 502, "api_error", "upstream_error")
    wait_reserved_zero(gw, user)
    assert gw.balance(key) == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "n": 11}, "n"),
        ({"prompt": "x", "size": 512}, "size"),
        ({"prompt": "x", "response_format": "png"}, "response_format"),
        ({"prompt": "x", "seed": 3}, "seed"),
        ({"prompt": "x", "stream": True}, "stream"),
        ({}, "prompt"),
    ],
)
def test_a_bad_image_body_is_a_400_naming_the_parameter(
    gw: Gateway, body: dict[str, Any], param: str
) -> None:
    _, key = gw.new_user(1)
    r = httpx.post(gw.v1 + "/images/generations", json={"model": "dalle", **body}, headers=bearer(key))
    assert assert_openai_error(r, 400, "invalid_request_error")["param"] == param
    assert gw.balance(key) == 1


# -- transcriptions ---------------------------------------------------------------------------


def test_a_transcription_is_charged_the_seconds_the_provider_reports(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    raw = gw.client(key).audio.transcriptions.with_raw_response.create(
        model="whisper", file=("speech.wav", _wav(3.5), "audio/wav")
    )
    transcript = raw.parse()
    assert transcript.text == "tok0 tok1 tok2 tok3"
    expected = 4 * SECOND_PRICE  # the fake bills whole seconds: ceil(3.5)
    body = decimal_json(raw.http_response)
    assert set(body) == {"text", "usage"}
    assert body["usage"]["seconds"] == 4 and body["usage"]["cost"] == expected
    assert Decimal(raw.headers["x-request-cost"]) == expected
    assert charges(gw, key)[raw.headers["x-gateway-request-id"]].amount == -expected


def test_a_verbose_transcription_keeps_its_segments_and_is_charged_the_same(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    transcript = gw.client(key).audio.transcriptions.create(
        model="whisper", file=("speech.wav", _wav(2.2), "audio/wav"), response_format="verbose_json"
    )
    assert transcript.duration == pytest.approx(2.2)
    assert transcript.segments and transcript.segments[0].text == "tok0 tok1 tok2 tok3"
    assert gw.balance(key) == 1 - 3 * SECOND_PRICE


def test_a_plain_text_transcription_is_text_and_charged_by_the_audio_header(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    r = httpx.post(
        gw.v1 + "/audio/transcriptions",
        files={"file": ("speech.wav", _wav(1.5), "audio/wav")},
        data={"model": "whisper", "response_format": "text"},
        headers=bearer(key),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text.strip() == "tok0 tok1 tok2 tok3"
    assert Decimal(r.headers["x-request-cost"]) == 2 * SECOND_PRICE
    assert charges(gw, key)[r.headers["x-gateway-request-id"]].amount == -2 * SECOND_PRICE


def test_audio_longer_than_the_balance_covers_is_a_402(gw: Gateway) -> None:
    _, key = gw.new_user(Decimal("0.001"))  # 10 s at the test price; the file is 60 s
    r = httpx.post(
        gw.v1 + "/audio/transcriptions",
        files={"file": ("long.wav", _wav(60), "audio/wav")},
        data={"model": "whisper"},
        headers=bearer(key),
        timeout=60,
    )
    assert_openai_error(r, 402, "insufficient_quota", "insufficient_balance")
    assert gw.balance(key) == Decimal("0.001")


def test_audio_without_a_wav_header_is_held_at_the_lowest_bit_rate_and_charged_as_reported(
    gw: Gateway,
) -> None:
    # 32,000 bytes of MP3 last at most 32 s (8 kbit/s); the provider hears 2 s.
    clip = b"ID3\x04" + bytes(32_000 - 4)
    _, poor = gw.new_user(Decimal("0.002"))  # 20 s: less than the bound
    r = httpx.post(
        gw.v1 + "/audio/transcriptions",
        files={"file": ("clip.mp3", clip, "audio/mpeg")},
        data={"model": "whisper"},
        headers=bearer(poor),
        timeout=60,
    )
    assert_openai_error(r, 402, "insufficient_quota", "insufficient_balance")
    _, key = gw.new_user(1)
    raw = gw.client(key).audio.transcriptions.with_raw_response.create(
        model="whisper", file=("clip.mp3", clip, "audio/mpeg")
    )
    assert charges(gw, key)[raw.headers["x-gateway-request-id"]].amount == -2 * SECOND_PRICE


def test_an_upload_over_the_size_limit_is_a_413_and_costs_nothing(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    r = httpx.post(
        gw.v1 + "/audio/transcriptions",
        files={"file": ("big.wav", _wav(MAX_UPLOAD / 16000 + 5), "audio/wav")},
        data={"model": "whisper"},
        headers=bearer(key),
        timeout=60,
    )
    assert_openai_error(r, 413, "invalid_request_error", "request_too_large")
    assert gw.balance(key) == 1


def test_a_failed_transcription_costs_nothing(gw: Gateway) -> None:
    user, key = gw.new_user(1)
    r = httpx.post(
        gw.v1 + "/audio/transcriptions",
        files={"file": ("a.wav", _wav(1), "audio/wav")},
        data={"model": "whisper-broken"},
        headers=bearer(key),
        timeout=60,
    )
    assert r.status_code in (502, 503), r.text
    wait_reserved_zero(gw, user)
    assert gw.balance(key) == 1


@pytest.mark.parametrize(
    ("data", "files", "param"),
    [
        ({"model": "whisper", "response_format": "xml"}, True, "response_format"),
        ({"model": "whisper", "temperature": "hot"}, True, "temperature"),
        ({"model": "whisper", "speaker": "me"}, True, "speaker"),
        ({"model": "whisper", "timestamp_granularities[]": "letter"}, True, "timestamp_granularities[]"),
        ({"model": "whisper"}, False, "file"),
        ({}, True, "model"),
    ],
)
def test_a_bad_transcription_form_is_a_400_naming_the_field(
    gw: Gateway, data: dict[str, str], files: bool, param: str
) -> None:
    _, key = gw.new_user(1)
    upload = {"file": ("a.wav", _wav(1), "audio/wav")} if files else {"other": ("x.txt", b"x", "text/plain")}
    r = httpx.post(gw.v1 + "/audio/transcriptions", files=upload, data=data, headers=bearer(key))
    assert assert_openai_error(r, 400, "invalid_request_error")["param"] == (param if files else "other")
    assert gw.balance(key) == 1


def test_a_transcription_that_is_not_multipart_is_a_400(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    r = httpx.post(gw.v1 + "/audio/transcriptions", json={"model": "whisper"}, headers=bearer(key))
    assert_openai_error(r, 400, "invalid_request_error")
    r = httpx.post(
        gw.v1 + "/audio/transcriptions",
        content=b"--xx\r\nbroken",
        headers={**bearer(key), "content-type": "multipart/form-data; boundary=xx"},
    )
    assert_openai_error(r, 400, "invalid_request_error")


# -- speech -----------------------------------------------------------------------------------


def test_speech_is_audio_charged_per_input_character(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    text = f"{tag()} hello there, how are you?"
    raw = gw.client(key).audio.speech.with_raw_response.create(
        model="tts", voice="alloy", input=text, response_format="wav"
    )
    audio = raw.content
    assert audio.startswith(b"RIFF") and audio[8:12] == b"WAVE"
    assert raw.headers["content-type"] == "audio/wav"
    expected = (len(text) * CHARACTER_PRICE).quantize(PLACES)
    assert Decimal(raw.headers["x-request-cost"]) == expected
    assert charges(gw, key)[raw.headers["x-gateway-request-id"]].amount == -expected
    assert gw.balance(key) == 1 - expected
    assert _record(gw, key, raw.headers["x-gateway-request-id"])["usage"] == {"characters": len(text)}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi"}, "voice"),
        ({"voice": "alloy"}, "input"),
        ({"input": "hi", "voice": "alloy", "speed": 10}, "speed"),
        ({"input": "hi", "voice": "alloy", "response_format": "ogg"}, "response_format"),
        ({"input": "hi", "voice": "alloy", "stream_format": "sse"}, "stream_format"),
        ({"input": "x" * 4097, "voice": "alloy"}, "input"),
        ({"input": "hi", "voice": "alloy", "pitch": 2}, "pitch"),
    ],
)
def test_a_bad_speech_body_is_a_400_naming_the_parameter(
    gw: Gateway, body: dict[str, Any], param: str
) -> None:
    _, key = gw.new_user(1)
    r = httpx.post(gw.v1 + "/audio/speech", json={"model": "tts", **body}, headers=bearer(key))
    assert assert_openai_error(r, 400, "invalid_request_error")["param"] == param
    assert gw.balance(key) == 1


async def test_the_books_balance(gw: Gateway) -> None:
    assert await audit(gw) == []
