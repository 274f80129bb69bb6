"""The prompt estimate is never below what an OpenAI-style tokeniser counts for the same request."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import zlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# cl100k_base from the copy LiteLLM ships (tiktoken itself would download it).
from litellm.litellm_core_utils.default_encoding import encoding as ENCODING

from app.billing.estimate import IMAGE_BASE, IMAGE_TILE, chat_prompt_tokens, image_size, image_tokens

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=200)
names = st.from_regex(r"[a-z_]{1,20}", fullmatch=True)
tool_call = st.builds(
    lambda name, args: {"id": "call_1", "type": "function", "function": {"name": name, "arguments": args}},
    names,
    text,
)
message = st.one_of(
    st.builds(lambda t: {"role": "user", "content": t}, text),
    st.builds(lambda t, n: {"role": "user", "content": t, "name": n}, text, names),
    st.builds(
        lambda parts: {"role": "user", "content": [{"type": "text", "text": p} for p in parts]},
        st.lists(text, max_size=3),
    ),
    st.builds(
        lambda calls: {"role": "assistant", "content": None, "tool_calls": calls},
        st.lists(tool_call, min_size=1, max_size=3),
    ),
    st.builds(lambda t: {"role": "tool", "tool_call_id": "call_1", "content": t}, text),
)
tool = st.builds(
    lambda name, desc, props: {
        "type": "function",
        "function": {
            "name": name,
            "description": desc,
            "parameters": {
                "type": "object",
                "properties": {p: {"type": "string", "description": d} for p, d in props.items()},
            },
        },
    },
    names,
    text,
    st.dictionaries(names, text, max_size=4),
)


def _tokens(value: str) -> int:
    return len(ENCODING.encode(value))


def openai_count(body: dict[str, Any]) -> int:
    """OpenAI's cookbook count: 3 per message, 1 per name, every text field, 3 for the reply,
    and the tool schemas as compact JSON."""
    total = 3
    for m in body["messages"]:
        total += 3
        for key in ("role", "name", "tool_call_id"):
            if isinstance(m.get(key), str):
                total += _tokens(m[key]) + (1 if key == "name" else 0)
        content = m.get("content")
        if isinstance(content, str):
            total += _tokens(content)
        elif isinstance(content, list):
            total += sum(_tokens(p["text"]) for p in content)
        for call in m.get("tool_calls") or ():
            total += _tokens(call["function"]["name"]) + _tokens(call["function"]["arguments"])
    if body.get("tools"):
        total += _tokens(json.dumps(body["tools"], separators=(",", ":"), ensure_ascii=False))
    return total


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(message, min_size=1, max_size=6), st.lists(tool, max_size=3))
def test_the_estimate_is_never_below_an_openai_style_count(
    messages: list[dict[str, Any]], tools: list[Any]
) -> None:
    body: dict[str, Any] = {"messages": messages}
    if tools:
        body["tools"] = tools
    estimate = asyncio.run(chat_prompt_tokens("gpt-4", body))
    assert estimate >= openai_count(body)


def _png(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


@given(st.integers(1, 8000), st.integers(1, 8000))
def test_images_follow_openais_tile_formula(width: int, height: int) -> None:
    url = "data:image/png;base64," + base64.b64encode(_png(width, height)).decode()
    assert image_size(_png(width, height)) == (width, height)
    tokens = image_tokens(url, "high")
    assert IMAGE_BASE + IMAGE_TILE <= tokens <= IMAGE_BASE + 8 * IMAGE_TILE
    assert image_tokens(url, "low") == IMAGE_BASE
    if width <= 512 and height <= 512:
        assert tokens == IMAGE_BASE + IMAGE_TILE
    # An image the gateway cannot measure is held at the most an image can cost.
    assert image_tokens("https://example.invalid/cat.png", "auto") == IMAGE_BASE + 8 * IMAGE_TILE


def test_a_60kb_tool_schema_counts() -> None:
    schema = {"type": "function", "function": {"name": "f", "parameters": {"description": "word " * 12000}}}
    small = asyncio.run(chat_prompt_tokens("gpt-4", {"messages": [{"role": "user", "content": "hi"}]}))
    big = asyncio.run(
        chat_prompt_tokens("gpt-4", {"messages": [{"role": "user", "content": "hi"}], "tools": [schema]})
    )
    assert big - small >= 12000
