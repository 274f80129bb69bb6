"""Tests for the protocol endpoints of tests/fake_provider.py (tests/fake_protocols/),
driven by the official openai and anthropic SDKs and by raw HTTP."""

import base64
import io
import json
import os
import socket
import struct
import sys
import urllib.error
import urllib.request

import openai
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import anthropic
from fake_protocols.media import audio_duration, wav_bytes
from fake_provider import FakeProvider

MSGS = [{"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello there world"}]}]
PROMPT_TOKENS = (2 + 1) + (3 + 1)
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
RTOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
ATOOLS = [{"name": "get_weather", "input_schema": {"type": "object"}}]


@pytest.fixture(scope="module")
def fp():
    with FakeProvider() as p:
        yield p


@pytest.fixture
def client(fp):
    fp.reset()
    with openai.OpenAI(base_url=fp.base_url, api_key="x", max_retries=0, timeout=10) as c:
        yield c


@pytest.fixture
def aclient(fp):
    fp.reset()
    with anthropic.Anthropic(base_url=fp.url, api_key="sk-ant-x", max_retries=0,
                             timeout=10) as c:
        yield c


def raw_post(fp, path, obj):
    req = urllib.request.Request(fp.url + path, data=json.dumps(obj).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers, r.read()


def raw_stream_until_cut(fp, path, obj):
    """Read a streamed response over a raw socket; return (bytes, cleanly_ended)."""
    body = json.dumps(obj).encode()
    s = socket.create_connection((fp.host, fp.port), timeout=10)
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % (path.encode(), len(body)) + body)
    buf = b""
    clean = False
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            buf += b
            if buf.endswith(b"0\r\n\r\n"):
                clean = True
                break
    except ConnectionResetError:
        pass
    finally:
        s.close()
    return buf, clean


# ---------------------------------------------------------------- chat additions

def test_chat_spaced_usage_chunk_raw(fp):
    _, raw = raw_post(fp, "/v1/chat/completions", {
        "model": "fake+chunks-2+spaced", "messages": MSGS, "stream": True,
        "stream_options": {"include_usage": True}})
    lines = [x for x in raw.decode().split("\n\n") if x]
    assert lines[-1] == "data: [DONE]"
    usage_line = lines[-2]
    assert f'"usage": {{"prompt_tokens": {PROMPT_TOKENS}, "completion_tokens": 2' in usage_line
    assert '"choices": []' in usage_line
    # the compact default has no spaces
    _, raw = raw_post(fp, "/v1/chat/completions", {
        "model": "fake+chunks-2", "messages": MSGS, "stream": True,
        "stream_options": {"include_usage": True}})
    assert b'"usage":{"prompt_tokens"' in raw
    # without include_usage there is no usage chunk, spaced or not
    _, raw = raw_post(fp, "/v1/chat/completions", {
        "model": "fake+chunks-2+spaced", "messages": MSGS, "stream": True})
    assert b'"usage"' not in raw


def test_chat_reasoning_and_cached(client):
    r = client.chat.completions.create(model="fake+chunks-3+reasoning-7+cached-4",
                                       messages=MSGS)
    assert r.choices[0].message.content == "tok0 tok1 tok2 "
    assert r.usage.completion_tokens == 10
    assert r.usage.completion_tokens_details.reasoning_tokens == 7
    assert r.usage.prompt_tokens_details.cached_tokens == 4
    assert r.usage.total_tokens == PROMPT_TOKENS + 10
    r = client.chat.completions.create(model="fake+cached-999", messages=MSGS)
    assert r.usage.prompt_tokens_details.cached_tokens == PROMPT_TOKENS
    chunks = list(client.chat.completions.create(
        model="fake+chunks-2+reasoning-3", messages=MSGS, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 3


def test_chat_toolstream(client):
    chunks = list(client.chat.completions.create(model="fake+chunks-3+toolstream",
                                                 messages=MSGS, tools=TOOLS, stream=True))
    frags = [c.choices[0].delta.tool_calls[0].function.arguments
             for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert frags[0] == ""  # header delta with id and name
    assert len(frags) == 4
    assert json.loads("".join(frags)) == {"text": "tok0 tok1 tok2 "}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    r = client.chat.completions.create(model="fake+chunks-3+toolstream", messages=MSGS,
                                       tools=TOOLS)
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {
        "text": "tok0 tok1 tok2 "}


# ---------------------------------------------------------------- responses

def test_responses_plain(client):
    r = client.responses.create(model="fake+chunks-3+reasoning-2+cached-1",
                                input="hello there world", instructions="be brief")
    assert r.object == "response" and r.status == "completed"
    assert r.output_text == "tok0 tok1 tok2 "
    assert [o.type for o in r.output] == ["reasoning", "message"]
    u = r.usage
    assert u.input_tokens == (3 + 1) + (2 + 1)
    assert u.input_tokens_details.cached_tokens == 1
    assert u.output_tokens == 5 and u.output_tokens_details.reasoning_tokens == 2
    assert u.total_tokens == 12
    r = client.responses.create(model="fake+chunks-5", max_output_tokens=2, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "a b"}]},
        {"role": "assistant", "content": "c"}])
    assert r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == "tok0 tok1 "
    assert r.usage.input_tokens == 3 + 2
    r = client.responses.create(model="fake+chunks-2", input="x", text={"format": {
        "type": "json_schema", "name": "t", "schema": {"type": "object"}}})
    assert json.loads(r.output_text) == {"text": "tok0 tok1 "}


def test_responses_stream(client, fp):
    events = list(client.responses.create(model="fake+chunks-3", input="hi", stream=True))
    types = [e.type for e in events]
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added"] + ["response.output_text.delta"] * 3 + [
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        "tok0 tok1 tok2 "
    done = events[-1].response
    assert done.usage.input_tokens == 2 and done.usage.output_tokens == 3
    assert done.output_text == "tok0 tok1 tok2 "
    # raw framing: "event: <type>\ndata: {...}\n\n" with matching type
    _, raw = raw_post(fp, "/v1/responses", {"model": "fake+chunks-1", "input": "hi",
                                            "stream": True})
    for block in raw.decode().split("\n\n")[:-1]:
        ev, data = block.split("\n")
        assert ev.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data[6:])["type"] == ev[7:]


def test_responses_tools(client):
    r = client.responses.create(model="fake", input="weather?", tools=RTOOLS)
    fc = r.output[0]
    assert fc.type == "function_call" and fc.name == "get_weather" and fc.arguments == "{}"
    assert fc.call_id
    r = client.responses.create(model="fake", input="weather?", tools=RTOOLS,
                                tool_choice="none")
    assert r.output[0].type == "message"
    events = list(client.responses.create(model="fake+chunks-2+toolstream", input="w",
                                          tools=RTOOLS, stream=True))
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) == 2
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"text": "tok0 tok1 "} == json.loads("".join(deltas))
    assert events[-1].type == "response.completed"


def test_responses_errors_and_drop(client, fp):
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="fake+fail-429", input="x")
    with pytest.raises(openai.BadRequestError) as ei:
        client.responses.create(model="fake+ctx-1", input="a b c")
    assert ei.value.body["code"] == "context_length_exceeded"
    raw, clean = raw_stream_until_cut(fp, "/v1/responses", {
        "model": "fake+chunks-5+drop-2", "input": "x", "stream": True})
    assert not clean
    assert raw.count(b"event: response.output_text.delta") == 2
    assert b"response.completed" not in raw


# ---------------------------------------------------------------- anthropic

def test_anthropic_plain(aclient, fp):
    m = aclient.messages.create(model="fake+chunks-3+cachewrite-5+cacheread-2",
                                max_tokens=100, system="be brief",
                                messages=[{"role": "user", "content": "hello there world"}],
                                extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"})
    assert m.type == "message" and m.role == "assistant"
    assert m.content[0].type == "text" and m.content[0].text == "tok0 tok1 tok2 "
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.input_tokens == PROMPT_TOKENS
    assert m.usage.cache_creation_input_tokens == 5
    assert m.usage.cache_read_input_tokens == 2
    assert m.usage.output_tokens == 3
    rec = fp.requests()[-1]
    assert rec["path"] == "/v1/messages"
    # anthropic 2.x sends the api key as a Bearer token; 0.x (and LiteLLM) as x-api-key
    assert rec["headers"].get("x-api-key") == "sk-ant-x" or \
        rec["authorization"] == "Bearer sk-ant-x"
    assert rec["headers"]["anthropic-version"]
    assert rec["headers"]["anthropic-beta"] == "prompt-caching-2024-07-31"
    m = aclient.messages.create(model="fake+chunks-5", max_tokens=2,
                                messages=[{"role": "user", "content": "x"}])
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 2
    # beta path (?beta=true)
    m = aclient.beta.messages.create(model="fake", max_tokens=10,
                                     messages=[{"role": "user", "content": "x"}])
    assert m.content[0].text == "tok0 tok1 tok2 tok3 tok4 "


def test_anthropic_stream(aclient):
    with aclient.messages.stream(model="fake+chunks-3+cacheread-4", max_tokens=100,
                                 messages=[{"role": "user", "content": "hi"}]) as s:
        events = list(s)
        final = s.get_final_message()
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    raw_types = [t for t in types if t not in ("text",)]  # SDK adds "text" helper events
    assert raw_types == ["message_start", "content_block_start", "content_block_delta",
                         "content_block_delta", "content_block_delta", "content_block_stop",
                         "message_delta", "message_stop"]
    assert events[0].message.usage.input_tokens == 2
    assert events[0].message.usage.cache_read_input_tokens == 4
    assert final.content[0].text == "tok0 tok1 tok2 "
    assert final.usage.output_tokens == 3 and final.stop_reason == "end_turn"


def test_anthropic_stream_raw_and_drop(fp):
    _, raw = raw_post(fp, "/v1/messages", {"model": "fake+chunks-1", "max_tokens": 5,
                                           "stream": True,
                                           "messages": [{"role": "user", "content": "x"}]})
    names = [b.split("\n")[0][7:] for b in raw.decode().split("\n\n")[:-1]]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    raw, clean = raw_stream_until_cut(fp, "/v1/messages", {
        "model": "fake+chunks-5+drop-2", "max_tokens": 50, "stream": True,
        "messages": [{"role": "user", "content": "x"}]})
    assert not clean
    assert raw.count(b"event: content_block_delta") == 2
    assert b"message_stop" not in raw and b"message_delta" not in raw


def test_anthropic_tools(aclient):
    m = aclient.messages.create(model="fake", max_tokens=100, tools=ATOOLS,
                                messages=[{"role": "user", "content": "weather?"}])
    assert m.stop_reason == "tool_use"
    assert m.content[0].type == "tool_use" and m.content[0].name == "get_weather"
    assert m.content[0].input == {}
    with aclient.messages.stream(model="fake+chunks-2+toolstream", max_tokens=100,
                                 tools=ATOOLS,
                                 messages=[{"role": "user", "content": "w"}]) as s:
        final = s.get_final_message()
    assert final.content[0].input == {"text": "tok0 tok1 "}
    m = aclient.messages.create(model="fake", max_tokens=100, tools=ATOOLS,
                                tool_choice={"type": "none"},
                                messages=[{"role": "user", "content": "w"}])
    assert m.content[0].type == "text"


def test_anthropic_errors_and_count_tokens(aclient, fp):
    for status, exc, etype in [(429, anthropic.RateLimitError, "rate_limit_error"),
                               (401, anthropic.AuthenticationError, "authentication_error"),
                               (500, anthropic.InternalServerError, "api_error"),
                               (529, anthropic.APIStatusError, "overloaded_error")]:
        with pytest.raises(exc) as ei:
            aclient.messages.create(model=f"fake+fail-{status}", max_tokens=5,
                                    messages=[{"role": "user", "content": "x"}])
        assert ei.value.status_code == status
        assert ei.value.body["type"] == "error"
        assert ei.value.body["error"]["type"] == etype
    req = urllib.request.Request(fp.url + "/v1/messages", data=json.dumps(
        {"model": "fake", "messages": [{"role": "user", "content": "x"}]}).encode(),
        headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(req, timeout=10)
    assert ei.value.code == 400
    assert json.loads(ei.value.read())["error"]["type"] == "invalid_request_error"
    r = aclient.messages.count_tokens(model="fake", system="be brief",
                                      messages=[{"role": "user", "content": "hello there"}])
    assert r.input_tokens == 3 + 3


# ---------------------------------------------------------------- legacy completions

def test_completions(client):
    r = client.completions.create(model="fake+chunks-3", prompt="say hi now")
    assert r.object == "text_completion"
    assert r.choices[0].text == "tok0 tok1 tok2 " and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens == 3
    r = client.completions.create(model="fake+chunks-3", prompt=["a b", "c"], n=2,
                                  max_tokens=2)
    assert len(r.choices) == 4 and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens == 8
    chunks = list(client.completions.create(model="fake+chunks-2", prompt="x", stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "tok0 tok1 "
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2


# ---------------------------------------------------------------- media

def test_images(client, fp):
    r = client.images.generate(model="dall-e-3", prompt="a red cat", n=2,
                               response_format="b64_json")
    assert len(r.data) == 2
    png = base64.b64decode(r.data[0].b64_json)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert r.data[0].b64_json != r.data[1].b64_json
    assert r.usage.input_tokens == 3
    r = client.images.generate(model="dall-e-3+nousage", prompt="a red cat")
    assert len(r.data) == 1 and r.data[0].url.startswith(fp.url + "/_files/img/")
    assert r.usage is None
    with urllib.request.urlopen(r.data[0].url, timeout=10) as f:
        assert f.read().startswith(b"\x89PNG")


def test_transcription_wav(client, fp):
    wav = wav_bytes(16000 * 3, rate=16000)  # 3 s at 16 kHz, 16-bit mono
    assert audio_duration(wav) == pytest.approx(3.0)
    r = client.audio.transcriptions.create(model="whisper-1+chunks-3",
                                           file=("a.wav", io.BytesIO(wav), "audio/wav"))
    assert r.text == "tok0 tok1 tok2"
    r = client.audio.transcriptions.create(model="whisper-1", response_format="verbose_json",
                                           file=("a.wav", io.BytesIO(wav), "audio/wav"))
    assert r.duration == pytest.approx(3.0)
    text = client.audio.transcriptions.create(model="whisper-1", response_format="text",
                                              file=("a.bin", io.BytesIO(b"\x01" * 8000)))
    assert text.strip() == "tok0 tok1 tok2 tok3 tok4"
    rec = fp.requests()[-1]
    assert rec["path"] == "/v1/audio/transcriptions" and rec["model"] == "whisper-1"
    assert rec["body"]["file"]["size"] == 8000 and rec["body"]["response_format"] == "text"
    assert audio_duration(b"\x01" * 8000) == 0.5


def test_speech(client):
    r = client.audio.speech.create(model="tts-1", voice="alloy", input="hello",
                                   response_format="wav")
    data = r.read()
    assert r.response.headers["content-type"] == "audio/wav"
    assert data[:4] == b"RIFF" and audio_duration(data) == pytest.approx(0.05)
    r = client.audio.speech.create(model="tts-1", voice="alloy", input="hello")
    assert r.response.headers["content-type"] == "audio/mpeg"
    assert r.read().startswith(b"ID3")


def test_moderations(client):
    r = client.moderations.create(model="omni-moderation-latest",
                                  input=["nice day", "graphic violence here"])
    assert len(r.results) == 2
    assert r.results[0].flagged is False
    assert r.results[1].flagged is True and r.results[1].categories.violence is True
    assert r.results[1].category_scores.violence == 0.9
    assert r.id.startswith("modr-")


def test_rerank_cohere_shape(fp):
    for path, version in (("/v1/rerank", "1"), ("/v2/rerank", "2")):
        _, raw = raw_post(fp, path, {"model": "rerank-v3.5", "query": "red cat",
                                     "documents": ["a dog", "the red cat", "red"],
                                     "top_n": 2, "return_documents": True})
        r = json.loads(raw)
        assert [x["index"] for x in r["results"]] == [1, 2]
        assert r["results"][0]["document"] == {"text": "the red cat"}
        assert r["meta"]["billed_units"] == {"search_units": 1}
        assert r["meta"]["api_version"]["version"] == version


def test_new_endpoints_recorded_and_fail(client, fp):
    with pytest.raises(openai.InternalServerError):
        client.moderations.create(model="m+fail-503", input="x")
    with pytest.raises(openai.APIConnectionError):
        client.images.generate(model="dall-e-3+drop-0", prompt="x")
    paths = [r["path"] for r in fp.requests()]
    assert paths == ["/v1/moderations", "/v1/images/generations"]


def test_wav_header_parse():
    wav = wav_bytes(100, rate=8000)
    assert struct.unpack("<I", wav[28:32])[0] == 16000
    assert audio_duration(wav) == pytest.approx(100 / 8000)
