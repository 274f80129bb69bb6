"""POST /v1/audio/transcriptions (multipart) and /v1/audio/speech: OpenAI's parameters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.api.schemas import params as p
from app.billing.units import speech_units, transcription_units
from app.calls.request import CallRequest
from app.errors import InvalidRequest

MAX_SPEECH_CHARACTERS = 4096
TRANSCRIPTION_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")

# Form fields are strings; each check reads its own type.
_FORM: dict[str, p.Check] = {
    "model": p.string(256),
    "language": p.string(16),
    "prompt": p.string(100_000),
    "response_format": p.one_of(*TRANSCRIPTION_FORMATS),
    "temperature": lambda param, value: None,  # a number in a string, read below
    "timestamp_granularities[]": lambda param, value: None,  # a repeated field, read below
    "stream": p.one_of("false"),
}

SPEECH: dict[str, p.Check] = {
    "model": p.string(256),
    "input": p.string(MAX_SPEECH_CHARACTERS),
    "voice": p.string_or_object,
    "instructions": p.string(4096),
    "response_format": p.one_of(*SPEECH_FORMATS),
    "speed": p.number(0.25, 4),
    "stream_format": p.one_of("audio"),
}


def parse_transcription(
    fields: dict[str, list[str]], file: tuple[str, bytes, str] | None, *, extra: Iterable[str] = ()
) -> CallRequest:
    """Held for the audio's duration (from its WAV header, else a bound by its size)."""
    single = {k: v[-1] for k, v in fields.items()}
    model = single.get("model")
    if not model:
        raise InvalidRequest("'model' is required.", param="model")
    p.check_params(single, _FORM, extra)
    if file is None or not file[1]:
        raise InvalidRequest("'file' is required: the audio file to transcribe.", param="file")
    skip = ("stream", "timestamp_granularities[]")
    params: dict[str, Any] = {k: v for k, v in single.items() if k not in skip}
    if "temperature" in single:
        params["temperature"] = _temperature(single["temperature"])
    granularities = fields.get("timestamp_granularities[]")
    if granularities:
        if not set(granularities) <= {"word", "segment"}:
            raise p.bad("timestamp_granularities[]", "must be 'word' or 'segment'.")
        params["timestamp_granularities"] = granularities
    return CallRequest(
        endpoint="transcriptions",
        model=model,
        params=params,
        inputs=[single.get("prompt") or ""],
        units=transcription_units(file[1], file[0]),
        file=file,
    )


def _temperature(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise p.bad("temperature", "must be a number from 0 to 1.")
    return value


def parse_speech(body: dict[str, Any], *, extra: Iterable[str] = ()) -> CallRequest:
    """Billed per input character, known exactly before the call."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    p.check_params(body, SPEECH, extra)
    text = body.get("input")
    if not isinstance(text, str) or not text:
        raise InvalidRequest("'input' is required and must be a non-empty string.", param="input")
    voice = body.get("voice")
    if not voice:
        raise InvalidRequest("'voice' is required.", param="voice")
    params = {k: v for k, v in body.items() if k != "stream_format"}
    return CallRequest(
        endpoint="speech", model=model, params=params, units=speech_units(text), max_output_tokens=0
    )
