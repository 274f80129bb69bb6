"""The most prompt tokens a request can be billed for, counted before the call.

Everything a provider bills as input counts: message text, names, tool-call arguments, the
tool, function and response-format schemas, images (OpenAI's tile formula per `detail`) and
audio (by duration). Big inputs are counted off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import struct
from typing import Any

import litellm
import orjson

# Counting ~20k characters takes about half a millisecond; beyond that, use a thread.
INLINE_LIMIT_CHARS = 20_000
PER_MESSAGE = 4  # role and separators, as OpenAI's chat format adds them (3, plus 1 for a name)
REPLY_PRIMING = 3
# OpenAI's image formula: 85 base tokens, 170 per 512 px tile after fitting into 2048 x 2048
# and scaling the short side down to 768. The most tiles an image can have is 8 (768 x 2048).
IMAGE_BASE, IMAGE_TILE, IMAGE_MAX_TILES = 85, 170, 8
# Audio input: about 10 tokens a second on OpenAI's audio models; held with a margin.
AUDIO_TOKENS_PER_SECOND = 12.5
_MP3_MIN_BYTES_PER_SECOND = 1000  # 8 kbit/s, the lowest bit rate in use: the longest duration
_B64_HEAD = 96 * 1024  # enough of a base64 image to find its dimensions


def _count_text(model: str, text: str) -> int:
    if not text:
        return 0
    try:
        return int(litellm.token_counter(model=model, text=text))
    except Exception:  # an unknown tokenizer must not fail the call: a character bound instead
        return len(text)


async def count_text(model: str, text: str) -> int:
    """Tokens in text (LiteLLM's tokenizer for the model), off the loop when it is big."""
    if len(text) <= INLINE_LIMIT_CHARS:
        return _count_text(model, text)
    return await asyncio.to_thread(_count_text, model, text)


async def chat_prompt_tokens(model: str, params: dict[str, Any]) -> int:
    """Prompt tokens a chat request can be billed for: never below what the provider counts."""
    texts: list[str] = []
    fixed = REPLY_PRIMING
    for message in params.get("messages") or ():
        fixed += PER_MESSAGE + _message(message, texts)
    for key in ("tools", "functions", "response_format", "tool_choice"):
        value = params.get(key)
        if isinstance(value, dict | list):
            # Default separators: at least as many tokens as the provider's own rendering.
            texts.append(orjson.dumps(value).decode().replace(",", ", ").replace(":", ": "))
    return fixed + await count_text(model, "\n".join(texts))


def _message(message: dict[str, Any], texts: list[str]) -> int:
    """Collect a message's text; return the tokens of its images and audio."""
    tokens = 0
    for key in ("role", "name", "tool_call_id", "refusal"):
        if isinstance(message.get(key), str):
            texts.append(message[key])
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            tokens += _part(part, texts)
    calls = list(message.get("tool_calls") or ())
    if isinstance(message.get("function_call"), dict):
        calls.append({"function": message["function_call"]})
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts.extend(str(function.get(k) or "") for k in ("name", "arguments"))
            texts.append(str(call.get("id") or ""))
    return tokens


def _part(part: dict[str, Any], texts: list[str]) -> int:
    kind = part.get("type")
    if kind == "text":
        texts.append(str(part.get("text") or ""))
    elif kind == "refusal":
        texts.append(str(part.get("refusal") or ""))
    elif kind == "image_url":
        image = part.get("image_url")
        image = image if isinstance(image, dict) else {"url": image}
        return image_tokens(str(image.get("url") or ""), str(image.get("detail") or "auto"))
    elif kind == "input_audio":
        audio = part.get("input_audio")
        audio = audio if isinstance(audio, dict) else {}
        return audio_tokens(str(audio.get("data") or ""), str(audio.get("format") or ""))
    elif kind == "file":
        file = part.get("file")
        file = file if isinstance(file, dict) else {}
        data = str(file.get("file_data") or "")
        # A document is billed as its text and, per page, as an image: hold for both.
        return len(data) * 3 // 4 // 2 + IMAGE_BASE + IMAGE_TILE * IMAGE_MAX_TILES
    return 0


def image_tokens(url: str, detail: str) -> int:
    """OpenAI's tile formula; an image whose size is unknown is held at the most it can cost."""
    if detail == "low":
        return IMAGE_BASE
    size = _data_url_size(url)
    if size is None:
        return IMAGE_BASE + IMAGE_TILE * IMAGE_MAX_TILES
    scale = min(1.0, 2048 / max(size))
    width, height = size[0] * scale, size[1] * scale
    scale = min(1.0, 768 / min(width, height))
    tiles = math.ceil(width * scale / 512) * math.ceil(height * scale / 512)
    return IMAGE_BASE + IMAGE_TILE * min(tiles, IMAGE_MAX_TILES)


def _data_url_size(url: str) -> tuple[int, int] | None:
    if not url.startswith("data:"):
        return None
    _, _, encoded = url.partition(",")
    head = encoded[:_B64_HEAD]
    try:
        raw = base64.b64decode(head[: len(head) // 4 * 4])
    except (binascii.Error, ValueError):
        return None
    return image_size(raw)


def image_size(raw: bytes) -> tuple[int, int] | None:
    """Width and height from the header of a PNG, GIF or JPEG."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n") and len(raw) >= 24:
        width, height = struct.unpack(">II", raw[16:24])
        return (width, height) if width and height else None
    if raw[:6] in (b"GIF87a", b"GIF89a") and len(raw) >= 10:
        width, height = struct.unpack("<HH", raw[6:10])
        return (width, height) if width and height else None
    if raw.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(raw):
            if raw[i] != 0xFF:
                return None
            marker = raw[i + 1]
            length = struct.unpack(">H", raw[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", raw[i + 5 : i + 9])
                return (width, height) if width and height else None
            i += 2 + length
    return None


def audio_seconds(raw: bytes, fmt: str) -> float:
    """Duration of audio: from a WAV header's byte rate, else the lowest bit rate in use."""
    byte_rate = _wav_byte_rate(raw)
    if byte_rate:
        return max(len(raw) - 44, 0) / byte_rate
    return len(raw) / _MP3_MIN_BYTES_PER_SECOND


def audio_tokens(data: str, fmt: str) -> int:
    """Input-audio tokens, held by the clip's duration."""
    size = len(data) * 3 // 4
    head = data[:64]
    try:
        raw = base64.b64decode(head[: len(head) // 4 * 4])
    except (binascii.Error, ValueError):
        raw = b""
    byte_rate = _wav_byte_rate(raw)
    seconds = max(size - 44, 0) / byte_rate if byte_rate else size / _MP3_MIN_BYTES_PER_SECOND
    return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND) + 1


def _wav_byte_rate(header: bytes) -> int:
    if header[:4] == b"RIFF" and header[8:12] == b"WAVE" and len(header) >= 32:
        return int(struct.unpack("<I", header[28:32])[0])
    return 0


async def embedding_tokens(model: str, inputs: list[str]) -> int:
    """Tokens of embedding inputs."""
    return sum([await count_text(model, s) for s in inputs])
