"""Token counting, the fallback when a provider reports no usage. Big inputs go off the loop."""

from __future__ import annotations

import asyncio
from typing import Any

import litellm

# Counting ~20k characters takes about half a millisecond; beyond that, use a thread.
INLINE_LIMIT_CHARS = 20_000


def _text_size(messages: list[dict[str, Any]]) -> int:
    size = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            size += len(content)
        elif isinstance(content, list):
            size += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    return size


def _count_messages(model: str, messages: list[dict[str, Any]]) -> int:
    try:
        return int(litellm.token_counter(model=model, messages=messages))
    except Exception:  # an odd message shape must not fail the call: fall back to characters
        return _text_size(messages) // 3 + 4 * len(messages)


async def count_prompt_tokens(model: str, messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of a chat request (LiteLLM's tokenizer for the model)."""
    if _text_size(messages) <= INLINE_LIMIT_CHARS:
        return _count_messages(model, messages)
    return await asyncio.to_thread(_count_messages, model, messages)


def _count_text(model: str, text: str) -> int:
    try:
        return int(litellm.token_counter(model=model, text=text))
    except Exception:
        return len(text) // 3 + 1


async def count_text_tokens(model: str, text: str) -> int:
    """Tokens in generated text, for streams that ended without a usage report."""
    if not text:
        return 0
    if len(text) <= INLINE_LIMIT_CHARS:
        return _count_text(model, text)
    return await asyncio.to_thread(_count_text, model, text)


async def count_input_tokens(model: str, inputs: list[str]) -> int:
    """Tokens of embedding inputs."""
    total = sum(len(s) for s in inputs)
    if total <= INLINE_LIMIT_CHARS:
        return sum(_count_text(model, s) for s in inputs)
    return await asyncio.to_thread(lambda: sum(_count_text(model, s) for s in inputs))
