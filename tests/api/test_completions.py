"""POST /v1/completions (legacy) with the official client: JSON and streams, billed exactly.

Every charge is read back from the ledger and compared with the fake provider's usage at the
configured prices; failed calls cost nothing; bad bodies are 400s that name the parameter.
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


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_provider: FakeProvider,
    pg_database: str,
) -> Iterator[Gateway]:
    base = fake_provider.base_url
    gateway = start_gateway(
        tmp_path_factory.mktemp(f"completions-{request.param}"),
        models=[
            model_entry("text", "fake+chunks-5", base),
            model_entry("long", "fake+chunks-40", base),
            model_entry("silent", "fake+chunks-5+nousage", base),
            model_entry("cut", "fake+chunks-8+drop-3", base),
            model_entry("slow", "fake+chunks-200+chunkdelay-30", base),
            model_entry("broken", "fake+fail-500", base),
            model_entry("flaky", "fake+fail-503", base),
        ],
        router_settings={"num_retries": 0, "fallbacks": [{"flaky": ["text"]}]},
        env={"DATABASE_URL": pg_database} if request.param == "postgres" else {},
    )
    yield gateway
    stop_gateway(gateway)


def _cost(prompt: int, completion: int) -> Decimal:
    return (prompt * INPUT_PRICE + completion * OUTPUT_PRICE).quantize(Decimal("0.00000001"))


def _sent(fake: FakeProvider, marker: str) -> list[dict[str, Any]]:
    return [
        r["body"]
        for r in fake.requests()
        if r.get("path", "").endswith("/completions")
        and not r.get("path", "").endswith("/chat/completions")
        and marker in json.dumps(r.get("body"))
    ]


def test_a_completion_is_charged_the_providers_usage_with_its_cost_in_the_answer(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    raw = gw.client(key).completions.with_raw_response.create(
        model="text", prompt=f"{tag()} say hello", max_tokens=4
    )
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "tok0 tok1 tok2 tok3 "
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 4)
    expected = _cost(3, 4)
    assert Decimal(raw.headers["x-request-cost"]) == expected
    assert decimal_json(raw.http_response)["usage"]["cost"] == expected
    assert charges(gw, key)[raw.headers["x-gateway-request-id"]].amount == -expected
    assert gw.balance(key) == 1 - expected


def test_without_max_tokens_the_legacy_default_of_16_is_held_and_sent(
    gw: Gateway, fake_provider: FakeProvider
) -> None:
    _, key = gw.new_user(1)
    marker = tag()
    completion = gw.client(key).completions.create(model="long", prompt=f"{marker} go")
    assert completion.usage is not None and completion.usage.completion_tokens == 16
    [sent] = _sent(fake_provider, marker)
    assert sent["max_tokens"] == 16
    assert gw.balance(key) == 1 - _cost(2, 16)


def test_several_prompts_and_choices_are_all_charged(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    raw = gw.client(key).completions.with_raw_response.create(
        model="text", prompt=[f"{tag()} one", "two three four"], n=2, max_tokens=3
    )
    completion = raw.parse()
    assert len(completion.choices) == 4
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 12)
    assert charges(gw, key)[raw.headers["x-gateway-request-id"]].amount == -_cost(5, 12)


def test_a_provider_that_reports_no_usage_is_charged_by_counting(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    raw = gw.client(key).completions.with_raw_response.create(model="silent", prompt=f"{tag()} hi")
    assert raw.parse().choices[0].text == "tok0 tok1 tok2 tok3 tok4 "
    cost = Decimal(raw.headers["x-request-cost"])
    assert cost > 0
    assert charges(gw, key)[raw.headers["x-gateway-request-id"]].amount == -cost


def test_a_stream_with_usage_ends_with_the_usage_chunk_and_its_cost(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    stream = gw.client(key).completions.with_raw_response.create(
        model="text", prompt=f"{tag()} stream me", stream=True, stream_options={"include_usage": True}
    )
    rid = stream.headers["x-gateway-request-id"]
    chunks = list(stream.parse())
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "tok0 tok1 tok2 tok3 tok4 "
    assert all(c.object == "text_completion" for c in chunks)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 5)
    expected = _cost(3, 5)
    assert Decimal(str(last.usage.model_extra["cost"])) == expected
    assert charges(gw, key)[rid].amount == -expected


def test_a_stream_without_usage_asked_never_sees_the_usage_chunk_but_is_charged(
    gw: Gateway, fake_provider: FakeProvider
) -> None:
    _, key = gw.new_user(1)
    marker = tag()
    r = httpx.post(
        gw.v1 + "/completions",
        json={"model": "text", "prompt": f"{marker} quiet", "stream": True},
        headers=bearer(key),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    assert '"usage"' not in r.text
    assert r.text.rstrip().endswith("data: [DONE]")
    [sent] = _sent(fake_provider, marker)
    assert sent["stream_options"] == {"include_usage": True}  # asked upstream all the same
    assert charges(gw, key)[r.headers["x-gateway-request-id"]].amount == -_cost(2, 5)


def test_a_stream_the_provider_cuts_is_an_error_event_and_costs_nothing(gw: Gateway) -> None:
    user, key = gw.new_user(1)
    stream = gw.client(key).completions.create(model="cut", prompt=f"{tag()} cut", stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    wait_reserved_zero(gw, user)
    assert gw.balance(key) == 1
    assert charges(gw, key) == {}


def test_a_stream_the_client_drops_is_charged_for_what_was_generated(gw: Gateway) -> None:
    user, key = gw.new_user(1)
    with httpx.stream(
        "POST",
        gw.v1 + "/completions",
        json={"model": "slow", "prompt": f"{tag()} drop", "stream": True, "max_tokens": 200},
        headers=bearer(key),
        timeout=60,
    ) as r:
        rid = r.headers["x-gateway-request-id"]
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: {")
            if seen == 3:
                break
    deadline = time.monotonic() + 15
    while rid not in charges(gw, key):
        assert time.monotonic() < deadline, "the dropped stream was never charged"
        time.sleep(0.1)
    wait_reserved_zero(gw, user)
    charged = -charges(gw, key)[rid].amount
    assert _cost(2, 3) <= charged < _cost(2, 200)
    assert gw.balance(key) == 1 - charged


def test_a_completion_falls_back_through_the_router(gw: Gateway, fake_provider: FakeProvider) -> None:
    _, key = gw.new_user(1)
    marker = tag()
    completion = gw.client(key).completions.create(model="flaky", prompt=f"{marker} hi", max_tokens=2)
    assert completion.choices[0].text == "tok0 tok1 "
    assert [b["model"] for b in _sent(fake_provider, marker)] == ["fake+fail-503", "fake+chunks-5"]
    assert gw.balance(key) == 1 - _cost(2, 2)


def test_a_failed_call_costs_nothing(gw: Gateway) -> None:
    user, key = gw.new_user(1)
    r = httpx.post(
        gw.v1 + "/completions", json={"model": "broken", "prompt": "x"}, headers=bearer(key), timeout=60
    )
    assert_openai_error(r, 502, "api_error", "upstream_error")
    wait_reserved_zero(gw, user)
    assert gw.balance(key) == 1


def test_max_tokens_the_balance_cannot_cover_is_a_402(gw: Gateway) -> None:
    _, key = gw.new_user(Decimal("0.0001"))
    r = httpx.post(
        gw.v1 + "/completions",
        json={"model": "text", "prompt": "x", "max_tokens": 100000},
        headers=bearer(key),
        timeout=60,
    )
    assert_openai_error(r, 402, "insufficient_quota", "insufficient_balance")
    assert gw.balance(key) == Decimal("0.0001")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "echo_everything": True}, "echo_everything"),
        ({"prompt": "x", "api_base": "http://127.0.0.1:9"}, "api_base"),
        ({"prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ({"prompt": "x", "logprobs": 9}, "logprobs"),
        ({"prompt": {"text": "x"}}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "x", "n": 3, "best_of": 2}, "best_of"),
        ({"prompt": "x", "stream": True, "n": 2}, "stream"),
        ({"prompt": "x", "stream": True, "stream_options": {"include_usage": "yes"}}, "include_usage"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_parameter_and_costs_nothing(
    gw: Gateway, body: dict[str, Any], param: str
) -> None:
    _, key = gw.new_user(1)
    r = httpx.post(gw.v1 + "/completions", json={"model": "text", **body}, headers=bearer(key), timeout=60)
    assert assert_openai_error(r, 400, "invalid_request_error")["param"] == param
    assert gw.balance(key) == 1


async def test_the_books_balance(gw: Gateway) -> None:
    assert await audit(gw) == []
