"""POST /v1/responses through the official `openai` client, billed exactly like chat.

Gateways on the fast path (the provider's Responses bytes, Router still choosing) and on
LiteLLM's path (`Router.aresponses`), on SQLite and Postgres; charges are read back from the
ledger and compared with the fake provider's usage at the configured prices.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from tests.billing.support import audit, charges, decimal_json, tag, wait_reserved_zero
from tests.conftest import INPUT_PRICE, OUTPUT_PRICE, Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider
from tests.support import assert_openai_error, bearer

CACHE_READ, REASONING = Decimal("0.0000001"), Decimal("0.00001")
PLACES = Decimal("0.00000001")


def _entry(name: str, behaviour: str, base: str, path: str, **info: Any) -> dict[str, Any]:
    entry = model_entry(name, behaviour, base, **info)
    if path == "litellm":
        entry["litellm_params"]["drop_params"] = True  # a param the fast path leaves to LiteLLM
    return entry


@pytest.fixture(scope="module", params=["fast-sqlite", "litellm-sqlite", "fast-postgres"])
def gw(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_provider: FakeProvider,
    pg_database: str,
) -> Iterator[Gateway]:
    path, store = request.param.split("-")
    base = fake_provider.base_url
    gateway = start_gateway(
        tmp_path_factory.mktemp(f"responses-{request.param}"),
        models=[
            _entry("plain", "fake+chunks-5", base, path),
            _entry(
                "parts",
                "fake+chunks-6+cached-3+reasoning-4",
                base,
                path,
                cache_read_input_token_cost=str(CACHE_READ),
                output_cost_per_reasoning_token=str(REASONING),
            ),
            _entry("tools", "fake+chunks-4+toolstream", base, path),
            _entry("cut", "fake+chunks-8+drop-3", base, path),
            _entry("slow", "fake+chunks-400+chunkdelay-20", base, path),
            # A provider that ignores the output limit and reports no usage: charged on what was relayed.
            _entry("greedy", "fake+chunks-60+ignoremax+nousage", base, path),
        ],
        env={"DATABASE_URL": pg_database} if store == "postgres" else {},
    )
    yield gateway
    stop_gateway(gateway)


def _cost(prompt: int, completion: int) -> Decimal:
    return (prompt * INPUT_PRICE + completion * OUTPUT_PRICE).quantize(PLACES)


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every SSE event, numbers as Decimal."""
    out = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        name = next((x[7:] for x in lines if x.startswith("event: ")), "")
        data = next((x[6:] for x in lines if x.startswith("data: ")), None)
        if data is not None:
            out.append((name, json.loads(data, parse_float=Decimal)))
    return out


def test_a_plain_response_is_answered_and_charged_at_the_providers_usage(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    raw = gw.client(key).responses.with_raw_response.create(model="plain", input=f"{tag()} say hi")
    response = raw.parse()
    assert response.output_text == "tok0 tok1 tok2 tok3 tok4 "
    assert response.status == "completed"
    usage = response.usage
    assert usage is not None and usage.output_tokens == 5
    cost = Decimal(str(decimal_json(raw.http_response)["usage"]["cost"]))
    rid = raw.headers["x-gateway-request-id"]
    assert cost == Decimal(raw.headers["x-request-cost"]) == -charges(gw, key)[rid].amount
    assert cost == _cost(usage.input_tokens, 5)


def test_a_streamed_response_ends_with_response_completed_carrying_usage_and_cost(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    client = gw.client(key)
    with client.responses.with_streaming_response.create(
        model="plain", input=f"{tag()} stream it", stream=True
    ) as raw:
        rid = raw.headers["x-gateway-request-id"]
        events = _events(raw.read().decode())
    names = [name for name, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert names.count("response.output_text.delta") == 5
    assert [d["type"] for _, d in events] == names
    final = events[-1][1]["response"]
    usage = final["usage"]
    assert usage["cost"] == -charges(gw, key)[rid].amount == _cost(usage["input_tokens"], 5)
    # And the SDK's own stream reads it as it is.
    stream = client.responses.create(model="plain", input="again", stream=True)
    kinds = [event.type for event in stream]
    assert kinds[-1] == "response.completed" and "response.output_text.delta" in kinds


def test_tools_and_structured_output_reach_the_provider_and_come_back(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    client = gw.client(key)
    tool = {
        "type": "function",
        "name": "lookup",
        "description": "look something up",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
    }
    response = client.responses.create(model="tools", input="use the tool", tools=[tool])  # type: ignore[list-item]
    [call] = [item for item in response.output if item.type == "function_call"]
    assert call.name == "lookup" and json.loads(call.arguments) == {"text": "tok0 tok1 tok2 tok3 "}
    stream = client.responses.create(model="tools", input="use it", tools=[tool], stream=True)  # type: ignore[list-item]
    kinds = [event.type for event in stream]
    assert kinds.count("response.function_call_arguments.delta") == 4
    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    structured = client.responses.create(
        model="plain",
        input="as json",
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema}},
    )
    assert json.loads(structured.output_text) == {"text": "tok0 tok1 tok2 tok3 tok4 "}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_cached_and_reasoning_tokens_are_charged_at_their_own_prices(gw: Gateway, stream: bool) -> None:
    _, key = gw.new_user(1)
    r = httpx.post(
        gw.v1 + "/responses",
        json={"model": "parts", "input": f"{tag()} one two three four", "stream": stream},
        headers=bearer(key),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    usage = _events(r.text)[-1][1]["response"]["usage"] if stream else decimal_json(r)["usage"]
    prompt, completion = int(usage["input_tokens"]), int(usage["output_tokens"])
    assert int(usage["input_tokens_details"]["cached_tokens"]) == 3
    assert int(usage["output_tokens_details"]["reasoning_tokens"]) == 4
    expected = (prompt - 3) * INPUT_PRICE + 3 * CACHE_READ + (completion - 4) * OUTPUT_PRICE + 4 * REASONING
    charged = -charges(gw, key)[r.headers["x-gateway-request-id"]].amount
    assert charged == Decimal(usage["cost"]) == expected.quantize(PLACES)


def test_a_stream_the_provider_cuts_is_an_error_event_and_costs_nothing(gw: Gateway) -> None:
    user_id, key = gw.new_user(1)
    r = httpx.post(
        gw.v1 + "/responses",
        json={"model": "cut", "input": "hello", "stream": True},
        headers=bearer(key),
        timeout=60,
    )
    assert r.status_code == 200
    events = _events(r.text)
    assert events[-1][0] == "error" and events[-1][1]["type"] == "error"
    assert events[-1][1]["message"]
    assert "response.completed" not in [name for name, _ in events]
    assert r.headers["x-gateway-request-id"] not in charges(gw, key)
    wait_reserved_zero(gw, user_id)
    assert gw.balance(key) == 1
    with pytest.raises(openai.APIError):
        list(gw.client(key).responses.create(model="cut", input="hello", stream=True))


def test_a_stream_the_client_drops_is_charged_for_what_was_generated(gw: Gateway) -> None:
    user_id, key = gw.new_user(1)
    with httpx.stream(
        "POST",
        gw.v1 + "/responses",
        json={"model": "slow", "input": "go on", "stream": True},
        headers=bearer(key),
        timeout=60,
    ) as r:
        rid = r.headers["x-gateway-request-id"]
        deltas = 0
        for line in r.iter_lines():
            deltas += line == "event: response.output_text.delta"
            if deltas == 5:
                break
    deadline = time.monotonic() + 15
    while rid not in charges(gw, key) and time.monotonic() < deadline:
        time.sleep(0.1)
    charged = -charges(gw, key)[rid].amount
    assert _cost(3, 5) <= charged < _cost(3, 400) / 2  # what came, nowhere near the whole answer
    wait_reserved_zero(gw, user_id)


def test_a_stream_that_outgrows_its_hold_is_cut_as_incomplete_and_charged_for_what_came(gw: Gateway) -> None:
    user_id, key = gw.new_user(1)
    r = httpx.post(
        gw.v1 + "/responses",
        json={"model": "greedy", "input": "hi", "stream": True, "max_output_tokens": 5},
        headers=bearer(key),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    events = _events(r.text)
    names = [name for name, _ in events]
    assert names[-1] == "response.incomplete" and "response.completed" not in names
    assert names.count("response.output_text.delta") <= 5 + 8  # nowhere near the provider's 60
    final = events[-1][1]["response"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    usage = final["usage"]
    charged = -charges(gw, key)[r.headers["x-gateway-request-id"]].amount
    assert usage["cost"] == charged == _cost(int(usage["input_tokens"]), int(usage["output_tokens"]))
    assert 0 < int(usage["output_tokens"]) < 60
    wait_reserved_zero(gw, user_id)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi", "some_future_parameter": 1}, "some_future_parameter"),
        ({"input": "hi", "api_base": "http://127.0.0.1:9/v1"}, "api_base"),
        ({"input": "hi", "temperature": "hot"}, "temperature"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": 5}, "input"),
        ({}, "input"),
        ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ],
)
def test_a_bad_body_is_a_400_in_openais_shape_and_costs_nothing(
    gw: Gateway, body: dict[str, Any], param: str
) -> None:
    _, key = gw.new_user(1)
    r = httpx.post(gw.v1 + "/responses", json={"model": "plain", **body}, headers=bearer(key), timeout=30)
    assert assert_openai_error(r, 400, "invalid_request_error")["param"] == param
    assert gw.balance(key) == 1


def test_a_response_the_balance_cannot_cover_is_a_402(gw: Gateway) -> None:
    _, key = gw.new_user(Decimal("0.0001"))
    r = httpx.post(
        gw.v1 + "/responses",
        json={"model": "plain", "input": "hi", "max_output_tokens": 100000},
        headers=bearer(key),
        timeout=30,
    )
    assert_openai_error(r, 402, "insufficient_quota", "insufficient_balance")
    assert gw.balance(key) == Decimal("0.0001")


async def test_the_books_balance(gw: Gateway) -> None:
    assert await audit(gw) == []
