"""POST /v1/messages and /v1/messages/count_tokens through the official `anthropic` client.

Gateways serving an Anthropic deployment natively (the provider's bytes, Router still
choosing) and an OpenAI-compatible one through LiteLLM's translation, on SQLite and Postgres;
charges are read back from the ledger and compared with the fake provider's usage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest

from tests.billing.support import audit, charges, decimal_json, tag, wait_reserved_zero
from tests.conftest import INPUT_PRICE, OUTPUT_PRICE, Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider
from tests.support import PROVIDER_SECRET

CACHE_READ, CACHE_WRITE = Decimal("0.0000001"), Decimal("0.00000125")
PLACES = Decimal("0.00000001")


def _entry(name: str, behaviour: str, fake: FakeProvider, path: str, **info: Any) -> dict[str, Any]:
    entry = model_entry(name, behaviour, fake.base_url, **info)
    if path == "native":
        # LiteLLM's anthropic/ api_base is the host; it adds /v1/messages itself.
        entry["litellm_params"]["model"] = f"anthropic/{behaviour}"
        entry["litellm_params"]["api_base"] = fake.base_url.removesuffix("/v1")
    return entry


@pytest.fixture(scope="module", params=["native-sqlite", "bridge-sqlite", "native-postgres"])
def gw(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_provider: FakeProvider,
    pg_database: str,
) -> Iterator[Gateway]:
    path, store = request.param.split("-")
    gateway = start_gateway(
        tmp_path_factory.mktemp(f"messages-{request.param}"),
        models=[
            _entry("plain", "fake+chunks-5", fake_provider, path),
            _entry(
                "cached",
                "fake+chunks-5+cachewrite-7+cacheread-11",
                fake_provider,
                path,
                cache_read_input_token_cost=str(CACHE_READ),
                cache_creation_input_token_cost=str(CACHE_WRITE),
            ),
            _entry("tools", "fake+chunks-4+toolstream", fake_provider, path),
            _entry("cut", "fake+chunks-8+drop-3", fake_provider, path),
            _entry("slow", "fake+chunks-400+chunkdelay-20", fake_provider, path),
            # A provider that ignores the output limit and reports no usage: charged on what was relayed.
            _entry("greedy", "fake+chunks-60+ignoremax+nousage", fake_provider, path),
            _entry("greedy-reported", "fake+chunks-60+ignoremax", fake_provider, path),
        ],
        env={"MAX_REQUEST_SIZE": "100000", **({"DATABASE_URL": pg_database} if store == "postgres" else {})},
    )
    gateway.env["GW_PATH"] = path
    yield gateway
    stop_gateway(gateway)


@pytest.fixture
def clients() -> Iterator[list[anthropic.Anthropic]]:
    made: list[anthropic.Anthropic] = []
    yield made
    for client in made:
        client.close()


def _client(gw: Gateway, key: str, made: list[anthropic.Anthropic]) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=60)
    made.append(client)
    return client


def _cost(prompt: int, completion: int) -> Decimal:
    return (prompt * INPUT_PRICE + completion * OUTPUT_PRICE).quantize(PLACES)


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        name = next((x[7:] for x in lines if x.startswith("event: ")), "")
        data = next((x[6:] for x in lines if x.startswith("data: ")), None)
        if data is not None:
            out.append((name, json.loads(data, parse_float=Decimal)))
    return out


def _post(
    gw: Gateway, key: str, body: dict[str, Any], path: str = "/v1/messages", **headers: str
) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, headers={"x-api-key": key, **headers}, timeout=60)


def _assert_anthropic_error(r: httpx.Response, status: int, error_type: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == error_type, body
    assert body["error"]["message"] and "Traceback" not in r.text and PROVIDER_SECRET not in r.text
    message: str = body["error"]["message"]
    return message


def test_a_plain_message_is_answered_and_charged_at_the_providers_usage(
    gw: Gateway, clients: list[anthropic.Anthropic]
) -> None:
    _, key = gw.new_user(1)
    raw = _client(gw, key, clients).messages.with_raw_response.create(
        model="plain", max_tokens=100, messages=[{"role": "user", "content": f"{tag()} say hi"}]
    )
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == "tok0 tok1 tok2 tok3 tok4 "
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 5
    cost = decimal_json(raw.http_response)["usage"]["cost"]
    rid = raw.headers["x-gateway-request-id"]
    assert cost == Decimal(raw.headers["x-request-cost"]) == -charges(gw, key)[rid].amount
    assert cost == _cost(message.usage.input_tokens, 5)


def test_a_streamed_message_keeps_anthropics_event_order_and_its_final_delta_carries_the_cost(
    gw: Gateway, clients: list[anthropic.Anthropic]
) -> None:
    _, key = gw.new_user(1)
    client = _client(gw, key, clients)
    with client.messages.with_streaming_response.create(
        model="plain", max_tokens=100, stream=True, messages=[{"role": "user", "content": f"{tag()} go"}]
    ) as raw:
        rid = raw.headers["x-gateway-request-id"]
        events = _events(raw.read().decode())
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_delta") == 5
    assert (
        names.index("content_block_start")
        < names.index("content_block_delta")
        < names.index("content_block_stop")
    )
    final = events[-2][1]
    # message_delta's usage is cumulative: what it reports overrides message_start's.
    usage = {**events[0][1]["message"]["usage"], **final["usage"]}
    assert final["delta"]["stop_reason"] == "end_turn"
    assert final["usage"]["cost"] == -charges(gw, key)[rid].amount
    assert final["usage"]["cost"] == _cost(int(usage["input_tokens"]), int(usage["output_tokens"]))
    assert int(usage["output_tokens"]) == 5
    with client.messages.stream(
        model="plain", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        text = "".join(s.text_stream)
        assert s.get_final_message().usage.output_tokens == 5
    assert text == "tok0 tok1 tok2 tok3 tok4 "


def test_tools_come_back_as_tool_use_streamed_or_not(gw: Gateway, clients: list[anthropic.Anthropic]) -> None:
    _, key = gw.new_user(1)
    client = _client(gw, key, clients)
    tool = {
        "name": "lookup",
        "description": "look something up",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
    }
    message = client.messages.create(
        model="tools",
        max_tokens=100,
        tools=[tool],
        messages=[{"role": "user", "content": "use it"}],  # type: ignore[list-item]
    )
    [block] = [b for b in message.content if b.type == "tool_use"]
    assert block.name == "lookup" and block.input == {"text": "tok0 tok1 tok2 tok3 "}
    assert message.stop_reason == "tool_use"
    with client.messages.stream(
        model="tools",
        max_tokens=100,
        tools=[tool],
        messages=[{"role": "user", "content": "use it"}],  # type: ignore[list-item]
    ) as s:
        final = s.get_final_message()
    [block] = [b for b in final.content if b.type == "tool_use"]
    assert block.input == {"text": "tok0 tok1 tok2 tok3 "}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_cache_writes_and_reads_are_charged_at_their_own_prices(
    gw: Gateway, fake_provider: FakeProvider, stream: bool
) -> None:
    marker = tag()
    _, key = gw.new_user(1)
    body = {
        "model": "cached",
        "max_tokens": 50,
        "stream": stream,
        "system": [
            {"type": "text", "text": f"{marker} a long system prompt", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}}],
            }
        ],
    }
    r = _post(
        gw, key, body, **{"anthropic-version": "2023-06-01", "anthropic-beta": "prompt-caching-2024-07-31"}
    )
    assert r.status_code == 200, r.text
    if stream:
        events = _events(r.text)
        usage = {**events[0][1]["message"]["usage"], **events[-2][1]["usage"]}
    else:
        usage = decimal_json(r)["usage"]
    written, read = (
        int(usage.get("cache_creation_input_tokens") or 0),
        int(usage.get("cache_read_input_tokens") or 0),
    )
    expected = (
        int(usage["input_tokens"]) * INPUT_PRICE
        + written * CACHE_WRITE
        + read * CACHE_READ
        + 5 * OUTPUT_PRICE
    ).quantize(PLACES)
    assert Decimal(usage["cost"]) == -charges(gw, key)[r.headers["x-gateway-request-id"]].amount == expected
    if gw.env["GW_PATH"] != "native":
        return  # an OpenAI-compatible deployment reports no cache writes; it is charged what it reports
    assert (written, read) == (7, 11)
    [seen] = [x for x in fake_provider.requests() if marker in json.dumps(x.get("body"))]
    # cache_control and the protocol headers reached the provider; the caller's key did not.
    assert seen["body"]["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert seen["headers"]["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert seen["headers"]["x-api-key"] == PROVIDER_SECRET and key not in json.dumps(seen)


def test_count_tokens_is_the_providers_count_and_free(
    gw: Gateway, clients: list[anthropic.Anthropic]
) -> None:
    _, key = gw.new_user(1)
    client = _client(gw, key, clients)
    counted = client.messages.count_tokens(
        model="plain", system="be brief", messages=[{"role": "user", "content": "one two three"}]
    )
    if gw.env["GW_PATH"] == "native":
        assert counted.input_tokens == (1 + 2) + (1 + 3)  # the fake provider's own count
    else:
        assert counted.input_tokens >= 7  # the gateway's estimate: never below the provider's
    r = _post(
        gw,
        key,
        {"model": "plain", "messages": [{"role": "user", "content": "x"}]},
        "/v1/messages/count_tokens?beta=true",
    )
    assert r.status_code == 200 and r.json()["input_tokens"] > 0
    assert gw.balance(key) == 1


def test_claude_codes_requests_work_with_a_bearer_token_and_beta_true(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    assert httpx.head(gw.url + "/", timeout=10).status_code == 200
    r = httpx.post(
        gw.url + "/v1/messages?beta=true",
        json={
            "model": "plain",
            "max_tokens": 64,
            "stream": True,
            "metadata": {"user_id": "someone"},
            "messages": [{"role": "user", "content": "hi"}],
        },
        headers={"Authorization": f"Bearer {key}", "anthropic-beta": "claude-code-20250219"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert [n for n, _ in _events(r.text)][-1] == "message_stop"
    assert r.headers["x-gateway-request-id"] in charges(gw, key)


def test_a_stream_the_provider_cuts_is_anthropics_error_event_and_costs_nothing(
    gw: Gateway, clients: list[anthropic.Anthropic]
) -> None:
    user_id, key = gw.new_user(1)
    r = _post(
        gw,
        key,
        {"model": "cut", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200
    name, data = _events(r.text)[-1]
    assert name == "error" and data["type"] == "error" and set(data["error"]) == {"type", "message"}
    assert r.headers["x-gateway-request-id"] not in charges(gw, key)
    wait_reserved_zero(gw, user_id)
    assert gw.balance(key) == 1
    with pytest.raises(anthropic.APIError):
        with _client(gw, key, clients).messages.stream(
            model="cut", max_tokens=50, messages=[{"role": "user", "content": "x"}]
        ) as s:
            s.get_final_message()


def test_a_stream_the_client_drops_is_charged_for_what_was_generated(gw: Gateway) -> None:
    user_id, key = gw.new_user(1)
    body = {
        "model": "slow",
        "max_tokens": 1000,
        "stream": True,
        "messages": [{"role": "user", "content": "go"}],
    }
    with httpx.stream(
        "POST", gw.url + "/v1/messages", json=body, headers={"x-api-key": key}, timeout=60
    ) as r:
        rid = r.headers["x-gateway-request-id"]
        deltas = 0
        for line in r.iter_lines():
            deltas += line == "event: content_block_delta"
            if deltas == 5:
                break
    deadline = time.monotonic() + 15
    while rid not in charges(gw, key) and time.monotonic() < deadline:
        time.sleep(0.1)
    charged = -charges(gw, key)[rid].amount
    assert _cost(2, 5) <= charged < _cost(2, 400) / 2
    wait_reserved_zero(gw, user_id)


def test_a_stream_that_outgrows_its_hold_ends_at_max_tokens_and_is_charged_for_what_came(
    gw: Gateway, clients: list[anthropic.Anthropic]
) -> None:
    user_id, key = gw.new_user(1)
    hi = [{"role": "user", "content": "hi"}]
    r = _post(gw, key, {"model": "greedy", "max_tokens": 5, "stream": True, "messages": hi})
    assert r.status_code == 200, r.text
    events = _events(r.text)
    names = [name for name, _ in events]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_delta") <= 5 + 8  # nowhere near the provider's 60
    assert names.count("content_block_start") == names.count("content_block_stop")
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "max_tokens"
    charged = -charges(gw, key)[r.headers["x-gateway-request-id"]].amount
    assert final["usage"]["cost"] == charged and 0 < charged < _cost(60, 60)
    with _client(gw, key, clients).messages.stream(model="greedy-reported", max_tokens=5, messages=hi) as s:  # type: ignore[arg-type]
        assert s.get_final_message().stop_reason == "max_tokens"
    wait_reserved_zero(gw, user_id)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        ({"max_tokens": 10, "messages": []}, "messages"),
        ({"max_tokens": 10, "messages": [{"role": "system", "content": "hi"}]}, "messages.0"),
        (
            {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "temperature": 3},
            "temperature",
        ),
        ({"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "api_key": "x"}, "api_key"),
        ({"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "future": 1}, "future"),
    ],
)
def test_a_bad_body_is_a_400_in_anthropics_shape_and_costs_nothing(
    gw: Gateway, body: dict[str, Any], fragment: str
) -> None:
    _, key = gw.new_user(1)
    message = _assert_anthropic_error(
        _post(gw, key, {"model": "plain", **body}), 400, "invalid_request_error"
    )
    assert fragment in message
    assert gw.balance(key) == 1


def test_errors_before_the_call_are_in_anthropics_shape(
    gw: Gateway, clients: list[anthropic.Anthropic]
) -> None:
    _, key = gw.new_user(Decimal("0.0001"))
    hi = [{"role": "user", "content": "hi"}]
    _assert_anthropic_error(
        _post(gw, "sk-wrong", {"model": "plain", "max_tokens": 5, "messages": hi}),
        401,
        "authentication_error",
    )
    _assert_anthropic_error(
        _post(gw, key, {"model": "nope", "max_tokens": 5, "messages": hi}), 404, "not_found_error"
    )
    message = _assert_anthropic_error(
        _post(gw, key, {"model": "plain", "max_tokens": 100000, "messages": hi}), 402, "billing_error"
    )
    assert "token" in message
    with pytest.raises(anthropic.AuthenticationError):
        _client(gw, "sk-wrong", clients).messages.create(model="plain", max_tokens=5, messages=hi)  # type: ignore[arg-type]
    r = httpx.post(gw.url + "/v1/messages", content=b"{not json", headers={"x-api-key": key}, timeout=30)
    _assert_anthropic_error(r, 400, "invalid_request_error")
    huge = [{"role": "user", "content": "x" * 200_000}]
    _assert_anthropic_error(
        _post(gw, key, {"model": "plain", "max_tokens": 5, "messages": huge}), 413, "request_too_large"
    )
    assert gw.balance(key) == Decimal("0.0001")


async def test_the_books_balance(gw: Gateway) -> None:
    assert await audit(gw) == []
