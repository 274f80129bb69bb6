"""Streams are billed on the provider's usage; dropped and failed streams are billed fairly."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from tests.billing.support import (
    account,
    charges,
    expected_cost,
    ledger,
    provider_prompt_tokens,
    provider_saw,
    tag,
    wait_reserved_zero,
)
from tests.conftest import INPUT_PRICE, OUTPUT_PRICE, Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider

START = Decimal("1")


def _entry(name: str, behaviour: str, base: str, path: str) -> dict[str, Any]:
    entry = model_entry(name, behaviour, base)
    if path == "litellm":
        # A parameter only LiteLLM's own call path understands keeps the model off the fast path.
        entry["litellm_params"]["drop_params"] = True
    return entry


@pytest.fixture(scope="module", params=["sqlite", "postgres", "sqlite-litellm-path"])
def gw(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_provider: FakeProvider,
    pg_database: str,
) -> Iterator[Gateway]:
    base = fake_provider.base_url
    path = "litellm" if request.param.endswith("litellm-path") else "fast"
    gateway = start_gateway(
        tmp_path_factory.mktemp(f"streams-{request.param}"),
        models=[
            _entry("five", "fake+chunks-5", base, path),
            _entry("long", "fake+chunks-200+chunkdelay-20", base, path),
            _entry("failing", "fake+fail-500", base, path),
            _entry("dropping", "fake+chunks-10+drop-3", base, path),
            _entry("silent", "fake+chunks-7+nousage", base, path),
        ],
        env={"DATABASE_URL": pg_database} if request.param == "postgres" else {},
    )
    yield gateway
    stop_gateway(gateway)


def _messages() -> list[dict[str, Any]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"{tag()} count to five"}]


def _stream(
    gw: Gateway, key: str, model: str, messages: list[dict[str, Any]], **kwargs: Any
) -> tuple[str, list[Any]]:
    with gw.client(key) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=messages, stream=True, **kwargs
        )
        assert raw.http_response.status_code == 200
        return raw.headers["x-request-id"], list(raw.parse())


def _assert_only_charge(gw: Gateway, key: str, request_id: str, amount: Decimal) -> None:
    charged = charges(gw, key)
    assert list(charged) == [request_id]
    assert charged[request_id].amount == -amount


@pytest.mark.parametrize("include_usage", [True, False], ids=["with-include-usage", "without"])
def test_a_stream_is_charged_exactly_the_providers_usage(gw: Gateway, include_usage: bool) -> None:
    user_id, key = gw.new_user(START)
    messages = _messages()
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    request_id, chunks = _stream(gw, key, "five", messages, **options)

    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        # Passed on to the client that asked, once, as OpenAI sends it: no choices.
        (usage_chunk,) = usage_chunks
        assert usage_chunk.choices == []
        assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (
            provider_prompt_tokens(messages),
            5,
        )
    else:
        assert usage_chunks == []
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 tok3 tok4 "
    )

    cost = provider_prompt_tokens(messages) * INPUT_PRICE + 5 * OUTPUT_PRICE
    assert cost == expected_cost(provider_prompt_tokens(messages), 5)
    _assert_only_charge(gw, key, request_id, cost)
    acct = account(gw, user_id)
    assert (acct["balance"], acct["reserved"]) == (START - cost, 0)


def test_the_provider_is_always_asked_for_usage(gw: Gateway, fake_provider: FakeProvider) -> None:
    _, key = gw.new_user(START)
    messages = _messages()
    _stream(gw, key, "five", messages)
    (body,) = provider_saw(fake_provider, messages[1]["content"].split()[0])
    assert body["stream_options"] == {"include_usage": True}


def test_a_client_that_drops_mid_stream_pays_for_what_was_generated(gw: Gateway) -> None:
    user_id, key = gw.new_user(START)
    messages = _messages()
    with httpx.stream(
        "POST",
        gw.v1 + "/chat/completions",
        json={"model": "long", "messages": messages, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        events = 0
        for line in r.iter_lines():
            events += line.startswith("data: {")
            if events == 5:
                break
    # The connection is closed: 200 tokens x 20 ms would take 4 s more.
    acct = wait_reserved_zero(gw, user_id, timeout=5)
    row = charges(gw, key)[request_id]
    assert row.prompt_tokens is not None and row.completion_tokens is not None
    assert 0 < row.completion_tokens < 200
    assert row.prompt_tokens >= provider_prompt_tokens(messages)
    cost = -row.amount
    assert cost == row.prompt_tokens * INPUT_PRICE + row.completion_tokens * OUTPUT_PRICE
    assert row.prompt_tokens * INPUT_PRICE < cost < row.prompt_tokens * INPUT_PRICE + 200 * OUTPUT_PRICE
    assert acct["balance"] == START - cost
    assert acct["balance"] == sum(t.amount for t in ledger(gw, key))


def test_a_provider_failure_costs_nothing(gw: Gateway) -> None:
    user_id, key = gw.new_user(START)
    for stream in (False, True):
        with gw.client(key) as client, pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="failing", messages=_messages(), stream=stream)
        assert caught.value.status_code == 502
        assert caught.value.body["code"] == "upstream_error"
    acct = wait_reserved_zero(gw, user_id, timeout=5)
    assert acct["balance"] == START
    assert charges(gw, key) == {}


def test_a_provider_that_drops_mid_stream_costs_nothing(gw: Gateway) -> None:
    user_id, key = gw.new_user(START)
    seen: list[str] = []
    with gw.client(key) as client, pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model="dropping", messages=_messages(), stream=True):
            seen.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(seen) == "tok0 tok1 tok2 "  # what arrived before the connection broke
    acct = wait_reserved_zero(gw, user_id, timeout=5)
    assert acct["balance"] == START
    assert charges(gw, key) == {}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_a_provider_without_usage_is_charged_by_counting_tokens(gw: Gateway, stream: bool) -> None:
    user_id, key = gw.new_user(START)
    messages = _messages()
    if stream:
        request_id, _ = _stream(gw, key, "silent", messages, stream_options={"include_usage": True})
    else:
        with gw.client(key) as client:
            raw = client.chat.completions.with_raw_response.create(model="silent", messages=messages)
        request_id = raw.headers["x-request-id"]
        assert Decimal(raw.headers["x-request-cost"]) > 0
    row = charges(gw, key)[request_id]
    assert row.prompt_tokens is not None and row.completion_tokens is not None
    assert row.prompt_tokens > 0 and row.completion_tokens > 0
    assert -row.amount == row.prompt_tokens * INPUT_PRICE + row.completion_tokens * OUTPUT_PRICE > 0
    acct = account(gw, user_id)
    assert (acct["balance"], acct["reserved"]) == (START + row.amount, 0)
