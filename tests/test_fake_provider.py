"""Tests for tests/fake_provider.py using the official openai SDK."""

import base64
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_provider import FakeProvider, embedding_vector

MSGS = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "hello there world"}]},
]
PROMPT_TOKENS = (2 + 1) + (3 + 1)


@pytest.fixture(scope="module")
def fp():
    with FakeProvider() as p:
        yield p


@pytest.fixture
def client(fp):
    fp.reset()
    with openai.OpenAI(base_url=fp.base_url, api_key="x", max_retries=0, timeout=10) as c:
        yield c


def test_json_completion_with_usage(client):
    r = client.chat.completions.create(model="fake+chunks-3", messages=MSGS)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == "fake+chunks-3"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "tok0 tok1 tok2 "
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].logprobs is None
    assert r.usage.prompt_tokens == PROMPT_TOKENS
    assert r.usage.completion_tokens == 3
    assert r.usage.total_tokens == PROMPT_TOKENS + 3
    assert r.system_fingerprint


def test_n_choices_max_tokens_and_logprobs(client):
    r = client.chat.completions.create(
        model="fake+chunks-10", messages=MSGS, n=2, max_tokens=4, logprobs=True, top_logprobs=2
    )
    assert len(r.choices) == 2
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        assert c.finish_reason == "length"
        assert c.message.content == "tok0 tok1 tok2 tok3 "
        assert len(c.logprobs.content) == 4
        assert len(c.logprobs.content[0].top_logprobs) == 2
    assert r.usage.completion_tokens == 8


def test_tools_and_json_mode(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    r = client.chat.completions.create(model="fake", messages=MSGS, tools=tools)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.content is None
    assert c.message.tool_calls[0].function.name == "get_weather"
    assert c.message.tool_calls[0].function.arguments == "{}"
    r = client.chat.completions.create(model="fake", messages=MSGS, tools=tools, tool_choice="none")
    assert r.choices[0].message.tool_calls is None
    r = client.chat.completions.create(
        model="fake+chunks-2", messages=MSGS, response_format={"type": "json_object"}
    )
    assert json.loads(r.choices[0].message.content) == {"text": "tok0 tok1 "}


def test_stream_with_include_usage(client):
    stream = client.chat.completions.create(
        model="fake+chunks-4", messages=MSGS, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "tok0 tok1 tok2 tok3 "
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.prompt_tokens == PROMPT_TOKENS
    assert last.usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])
    # 1 role + 4 content + 1 finish + 1 usage
    assert len(chunks) == 7


def test_stream_without_usage(client):
    chunks = list(client.chat.completions.create(model="fake+chunks-2", messages=MSGS, stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    # nousage wins even when include_usage is asked
    chunks = list(
        client.chat.completions.create(
            model="fake+chunks-2+nousage", messages=MSGS, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.usage is None and c.choices for c in chunks)


def test_stream_raw_wire_format(fp, client):
    body = json.dumps({"model": "fake+chunks-2", "messages": MSGS, "stream": True}).encode()
    req = urllib.request.Request(
        fp.base_url + "/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])


def test_fail_429(client):
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model="fake+fail-429", messages=MSGS)
    assert ei.value.status_code == 429
    assert ei.value.body["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fake+fail-500", messages=MSGS)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="fake+fail-401", messages=MSGS)


def test_ctx_and_failfirst(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="fake+ctx-3", messages=MSGS)
    assert ei.value.body["code"] == "context_length_exceeded"
    assert "maximum context length" in ei.value.body["message"]
    client.chat.completions.create(model="fake+ctx-7", messages=MSGS)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="fake+failfirst-2", messages=MSGS)
    client.chat.completions.create(model="fake+failfirst-2", messages=MSGS)


def test_drop_stream(client):
    stream = client.chat.completions.create(model="fake+chunks-5+drop-2", messages=MSGS, stream=True)
    contents = []
    with pytest.raises(Exception):
        for c in stream:
            if c.choices and c.choices[0].delta.content:
                contents.append(c.choices[0].delta.content)
    assert contents == ["tok0 ", "tok1 "]


def test_drop_non_stream(client):
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="fake+drop-0", messages=MSGS)


def test_slow_and_chunkdelay(client):
    t0 = time.monotonic()
    client.chat.completions.create(model="fake+slow-200", messages=MSGS)
    assert time.monotonic() - t0 >= 0.2
    t0 = time.monotonic()
    stamps = []
    for c in client.chat.completions.create(model="fake+chunks-3+chunkdelay-100", messages=MSGS, stream=True):
        stamps.append(time.monotonic() - t0)
    assert stamps[-1] >= 0.3
    assert stamps[0] < 0.1  # role chunk is not delayed; chunks are written as produced


def test_embeddings(client):
    r = client.embeddings.create(model="fake-embed", input=["hello world", "x"])  # base64
    assert [d.index for d in r.data] == [0, 1]
    assert len(r.data[0].embedding) == 8
    assert r.data[0].embedding == pytest.approx(embedding_vector("hello world"))
    assert r.usage.prompt_tokens == 3
    r2 = client.embeddings.create(model="fake-embed", input="hello world", encoding_format="float")
    assert r2.data[0].embedding == r.data[0].embedding
    r3 = client.embeddings.create(model="fake-embed", input=[[1, 2, 3]])
    assert r3.usage.prompt_tokens == 3


def test_requests_recorded(fp, client):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    client.chat.completions.create(
        model="fake", messages=MSGS, seed=42, tools=tools, extra_headers={"X-Trace": "abc"}
    )
    client.embeddings.create(model="fake-embed", input="hi")
    recs = fp.requests()
    assert [r["path"] for r in recs] == ["/v1/chat/completions", "/v1/embeddings"]
    r = recs[0]
    assert r["model"] == "fake"
    assert r["body"]["seed"] == 42
    assert r["body"]["tools"] == tools
    assert r["authorization"] == "Bearer x"
    assert r["headers"]["x-trace"] == "abc"
    assert recs[1]["body"]["encoding_format"] == "base64"
    fp.clear()
    assert fp.requests() == []


def test_bad_json_and_models(fp, client):
    req = urllib.request.Request(
        fp.base_url + "/chat/completions", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(req, timeout=10)
    assert ei.value.code == 400
    assert json.loads(ei.value.read())["error"]["type"] == "invalid_request_error"
    assert [m.id for m in client.models.list()]
    assert fp.health()["status"] == "ok"


def test_base64_matches_float32():
    v = embedding_vector("abc")
    packed = struct.pack("<8f", *v)
    assert list(struct.unpack("<8f", base64.b64decode(base64.b64encode(packed)))) == v
