"""The official openai SDK against the gateway, unchanged: sync, async, streaming, tools."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from tests.conftest import Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    base = fake_provider.base_url
    gateway = start_gateway(
        tmp_path_factory.mktemp("sdk"),
        models=[
            model_entry("fake", "fake+chunks-5", base),
            model_entry("fake-long", "fake+chunks-30", base),
            model_entry("embed", "fake-embed", base),
        ],
    )
    yield gateway
    stop_gateway(gateway)


def test_sync_completion_returns_provider_answer(gw: Gateway) -> None:
    _, key = gw.new_user()
    resp = gw.client(key).chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "say hello"}]
    )
    assert resp.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert resp.usage is not None and resp.usage.completion_tokens == 5


async def test_async_streaming_with_include_usage(gw: Gateway) -> None:
    _, key = gw.new_user()
    client = gw.async_client(key)
    stream = await client.chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
        for choice in chunk.choices:
            text += choice.delta.content or ""
    await client.close()
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert usage is not None and usage.prompt_tokens == 4 and usage.completion_tokens == 5


def test_stream_without_include_usage_has_no_usage_chunk(gw: Gateway) -> None:
    _, key = gw.new_user()
    chunks = list(
        gw.client(key).chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert chunks and all(c.usage is None for c in chunks)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 tok3 tok4 "
    )


def test_raw_sse_framing_ends_with_done(gw: Gateway) -> None:
    import httpx

    _, key = gw.new_user()
    with httpx.stream(
        "POST",
        gw.v1 + "/chat/completions/stream",
        json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_every_openai_parameter_reaches_the_provider(gw: Gateway, fake_provider: FakeProvider) -> None:
    _, key = gw.new_user()
    fake_provider.clear()
    tools = [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    resp = gw.client(key).chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": "weather?"}],
        tools=tools,
        tool_choice="auto",
        seed=42,
        n=2,
        temperature=0.3,
        top_p=0.9,
        logprobs=True,
        top_logprobs=2,
        user="end-user-7",
        response_format={"type": "json_object"},
        stop=["never"],
        presence_penalty=0.1,
        frequency_penalty=0.2,
        max_tokens=50,
    )
    assert resp.choices[0].message.tool_calls is not None
    assert resp.choices[0].message.tool_calls[0].function.name == "lookup"
    sent = [r for r in fake_provider.requests() if r["path"].endswith("/chat/completions")][-1]["body"]
    for key_, value in {
        "seed": 42,
        "n": 2,
        "temperature": 0.3,
        "top_p": 0.9,
        "logprobs": True,
        "top_logprobs": 2,
        "user": "end-user-7",
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "stop": ["never"],
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "max_tokens": 50,
    }.items():
        assert sent[key_] == value, key_
    assert sent["tools"][0]["function"]["name"] == "lookup"


def test_models_list_and_get(gw: Gateway) -> None:
    _, key = gw.new_user()
    client = gw.client(key)
    ids = [m.id for m in client.models.list()]
    assert ids == ["fake", "fake-long", "embed"]
    assert client.models.retrieve("fake").id == "fake"


def test_embeddings_through_sdk_are_billed(gw: Gateway) -> None:
    _, key = gw.new_user(balance=1)
    before = gw.balance(key)
    resp = gw.client(key).embeddings.create(model="embed", input=["hello world", "bye"])
    assert len(resp.data) == 2 and len(resp.data[0].embedding) == 8
    assert gw.balance(key) == before - resp.usage.prompt_tokens * Decimal("0.000001")


def test_request_id_is_echoed_or_generated(gw: Gateway) -> None:
    import httpx

    r = httpx.get(gw.url + "/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = httpx.get(gw.url + "/health")
    assert len(r.headers["x-request-id"]) == 32
