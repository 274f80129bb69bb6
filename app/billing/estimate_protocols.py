"""Prompt estimates for the Responses and Anthropic Messages requests, counted before the call.

Same rule as chat's: never below what the provider counts. Text is counted with the model's
tokenizer, tool and schema definitions as JSON, images by their size (OpenAI's tile formula for
Responses, Anthropic's pixels / 750 for Messages), anything unrecognised as its JSON text.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import orjson

from app.billing.estimate import (
    IMAGE_BASE,
    IMAGE_MAX_TILES,
    IMAGE_TILE,
    PER_MESSAGE,
    REPLY_PRIMING,
    count_text,
    image_size,
    image_tokens,
)

# Anthropic: tokens = width x height / 750, images scaled to at most ~1.15 megapixels first.
ANTHROPIC_IMAGE_MAX = 1600
_B64_HEAD = 96 * 1024


def _json(value: Any) -> str:
    # Default separators: at least as many tokens as the provider's own rendering.
    return orjson.dumps(value).decode().replace(",", ", ").replace(":", ": ")


async def responses_prompt_tokens(model: str, params: dict[str, Any]) -> int:
    """Input tokens a Responses request can be billed for: instructions, input items, tools."""
    texts: list[str] = []
    fixed = REPLY_PRIMING
    instructions = params.get("instructions")
    if isinstance(instructions, str):
        fixed += PER_MESSAGE
        texts.append(instructions)
    items = params.get("input")
    if isinstance(items, str):
        fixed += PER_MESSAGE
        texts.append(items)
    elif isinstance(items, list):
        for item in items:
            fixed += PER_MESSAGE + _responses_item(item, texts)
    for key in ("tools", "text", "tool_choice"):
        value = params.get(key)
        if isinstance(value, dict | list):
            texts.append(_json(value))
    return fixed + await count_text(model, "\n".join(texts))


def _responses_item(item: Any, texts: list[str]) -> int:
    if isinstance(item, str):
        texts.append(item)
        return 0
    if not isinstance(item, dict):
        return 0
    tokens = 0
    content = item.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            tokens += _responses_part(part, texts)
    for key in ("role", "name", "arguments", "call_id"):
        if isinstance(item.get(key), str):
            texts.append(item[key])
    output = item.get("output")
    if isinstance(output, str):
        texts.append(output)
    elif output is not None:
        texts.append(_json(output))
    for part in item.get("summary") or ():
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
    return tokens


def _responses_part(part: Any, texts: list[str]) -> int:
    if not isinstance(part, dict):
        return 0
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        texts.append(str(part.get("text") or ""))
    elif kind == "refusal":
        texts.append(str(part.get("refusal") or ""))
    elif kind == "input_image":
        url = part.get("image_url")
        return image_tokens(url if isinstance(url, str) else "", str(part.get("detail") or "auto"))
    elif kind == "input_file":
        data = str(part.get("file_data") or "")
        return len(data) * 3 // 4 // 2 + IMAGE_BASE + IMAGE_TILE * IMAGE_MAX_TILES
    else:
        texts.append(_json(part))
    return 0


async def messages_prompt_tokens(model: str, params: dict[str, Any]) -> int:
    """Input tokens an Anthropic Messages request can be billed for: system, messages, tools."""
    texts: list[str] = []
    fixed = REPLY_PRIMING
    system = params.get("system")
    if system:
        fixed += PER_MESSAGE + _anthropic_content(system, texts)
    for message in params.get("messages") or ():
        if isinstance(message, dict):
            fixed += PER_MESSAGE + _anthropic_content(message.get("content"), texts)
    for key in ("tools", "tool_choice", "output_format"):
        value = params.get(key)
        if isinstance(value, dict | list):
            texts.append(_json(value))
    return fixed + await count_text(model, "\n".join(texts))


def _anthropic_content(content: Any, texts: list[str]) -> int:
    if isinstance(content, str):
        texts.append(content)
        return 0
    tokens = 0
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "image":
            tokens += anthropic_image_tokens(block.get("source"))
        elif kind == "document":
            source = block.get("source")
            data = str(source.get("data") or "") if isinstance(source, dict) else ""
            # A PDF is billed as its text and each page as an image: hold for both.
            tokens += len(data) * 3 // 4 // 2 + ANTHROPIC_IMAGE_MAX
        elif kind == "tool_result":
            tokens += _anthropic_content(block.get("content"), texts)
        elif kind == "thinking":
            texts.append(str(block.get("thinking") or ""))
        else:
            texts.append(_json({k: v for k, v in block.items() if k != "cache_control"}))
    return tokens


def anthropic_image_tokens(source: Any) -> int:
    """Anthropic's formula from a base64 image's size; an image of unknown size at the maximum."""
    if not isinstance(source, dict) or source.get("type") != "base64":
        return ANTHROPIC_IMAGE_MAX
    head = str(source.get("data") or "")[:_B64_HEAD]
    try:
        size = image_size(base64.b64decode(head[: len(head) // 4 * 4]))
    except (binascii.Error, ValueError):
        size = None
    if size is None:
        return ANTHROPIC_IMAGE_MAX
    return min(ANTHROPIC_IMAGE_MAX, math.ceil(size[0] * size[1] / 750))
