"""What a balance affords: capped calls, refusals that say why, markup, and unpriced models."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from app.billing.estimate import chat_prompt_tokens
from tests.billing.support import account, charges, expected_cost, provider_prompt_tokens, provider_saw, tag
from tests.conftest import INPUT_PRICE, OUTPUT_PRICE, Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider

SMALL = Decimal("0.0001")  # affords the prompt and a few dozen completion tokens


def _unpriced(name: str, behaviour: str, api_base: str, **info: Any) -> dict[str, Any]:
    return {
        "model_name": name,
        "litellm_params": {"model": f"openai/{behaviour}", "api_base": api_base, "api_key": "sk-x"},
        "model_info": info,
    }


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    base = fake_provider.base_url
    gateway = start_gateway(
        tmp_path_factory.mktemp("affordability"),
        models=[
            model_entry("big", "fake+chunks-200", base),
            model_entry("five", "fake+chunks-5", base),
            model_entry("limited", "fake+chunks-200", base, max_output_tokens=50),
            # No output limit known: the provider would go on for 6000 tokens.
            model_entry("unbounded", "fake+chunks-6000", base),
            _unpriced("unpriced", "fake-not-in-any-cost-map", base),
            _unpriced("gratis", "fake-not-in-any-cost-map+chunks-5", base, free=True),
            # No price in the config: LiteLLM's bundled cost map prices it.
            _unpriced("mapped", "gpt-4o-mini", base),
        ],
    )
    yield gateway
    stop_gateway(gateway)


@pytest.fixture(scope="module")
def marked_up(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("markup"),
        models=[model_entry("five", "fake+chunks-5", fake_provider.base_url)],
        env={"BILLING_MARKUP": "1.5"},
    )
    yield gateway
    stop_gateway(gateway)


def _messages() -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{tag()} write a long story please"}]


async def _affordable(model: str, balance: Decimal, messages: list[dict[str, Any]]) -> int:
    """Completion tokens `balance` pays for after the prompt, as the gateway counts the prompt."""
    prompt = await chat_prompt_tokens(model, {"messages": messages})
    return int((balance - prompt * INPUT_PRICE) // OUTPUT_PRICE)


def _create(gw: Gateway, key: str, **kwargs: Any) -> Any:
    with gw.client(key) as client:
        return client.chat.completions.with_raw_response.create(**kwargs)


async def test_without_max_tokens_a_small_balance_caps_the_call_instead_of_refusing_it(
    gw: Gateway, fake_provider: FakeProvider
) -> None:
    user_id, key = gw.new_user(SMALL)
    messages = _messages()
    cap = await _affordable("big", SMALL, messages)
    assert 0 < cap < 200
    raw = _create(gw, key, model="big", messages=messages)
    completion = raw.parse()
    (sent,) = provider_saw(fake_provider, messages[0]["content"].split()[0])
    assert sent["max_tokens"] == cap
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == cap
    cost = expected_cost(provider_prompt_tokens(messages), cap)
    assert Decimal(raw.headers["x-request-cost"]) == cost <= SMALL
    acct = account(gw, user_id)
    assert (acct["balance"], acct["reserved"]) == (SMALL - cost, 0)


def test_without_max_tokens_a_call_is_capped_at_the_models_output_limit(
    gw: Gateway, fake_provider: FakeProvider
) -> None:
    _, key = gw.new_user(10)
    messages = _messages()
    completion = _create(gw, key, model="limited", messages=messages).parse()
    (sent,) = provider_saw(fake_provider, messages[0]["content"].split()[0])
    assert sent["max_tokens"] == 50
    assert completion.usage.completion_tokens == 50


async def test_without_max_tokens_a_call_never_generates_more_than_the_balance_pays_for(
    gw: Gateway, fake_provider: FakeProvider
) -> None:
    """A model with no known output limit: the call must not outgrow what the balance can pay."""
    balance = Decimal("0.01")  # about 5000 completion tokens; the provider would make 6000
    user_id, key = gw.new_user(balance)
    messages = _messages()
    affordable = await _affordable("unbounded", balance, messages)
    assert 4096 < affordable < 6000
    raw = _create(gw, key, model="unbounded", messages=messages)
    usage = raw.parse().usage
    cost = expected_cost(usage.prompt_tokens, usage.completion_tokens)
    (sent,) = provider_saw(fake_provider, messages[0]["content"].split()[0])
    assert sent.get("max_tokens") is not None and sent["max_tokens"] <= affordable
    # Charged in full for what was generated: nothing given away.
    assert Decimal(raw.headers["x-request-cost"]) == cost <= balance
    acct = account(gw, user_id)
    assert (acct["balance"], acct["reserved"]) == (balance - cost, 0)


async def test_an_explicit_unaffordable_max_tokens_is_refused_with_the_affordable_count(
    gw: Gateway, fake_provider: FakeProvider
) -> None:
    user_id, key = gw.new_user(SMALL)
    messages = _messages()
    cap = await _affordable("big", SMALL, messages)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as caught:
            _create(gw, key, model="big", messages=messages, max_tokens=cap + 1, stream=stream)
        assert caught.value.status_code == 402
        error = caught.value.body
        assert (error["type"], error["code"], error["param"]) == (
            "insufficient_quota",
            "insufficient_balance",
            "max_tokens",
        )
        assert re.search(rf"can afford at most {cap} completion tokens", error["message"]), error["message"]
    assert provider_saw(fake_provider, messages[0]["content"].split()[0]) == []
    # Exactly what it affords is served.
    raw = _create(gw, key, model="big", messages=messages, max_tokens=cap)
    assert raw.parse().usage.completion_tokens == cap
    assert account(gw, user_id)["reserved"] == 0


async def test_a_zero_balance_is_refused(gw: Gateway, fake_provider: FakeProvider) -> None:
    user_id, key = gw.new_user(0)
    messages = _messages()
    for kwargs in ({}, {"max_tokens": 1}, {"stream": True}):
        with pytest.raises(openai.APIStatusError) as caught:
            _create(gw, key, model="five", messages=messages, **kwargs)
        assert caught.value.status_code == 402
        assert caught.value.body["code"] == "insufficient_balance"
        assert caught.value.body["message"].startswith("Insufficient balance")
    assert provider_saw(fake_provider, messages[0]["content"].split()[0]) == []
    assert account(gw, user_id)["balance"] == 0


def test_markup_multiplies_charges_exactly(marked_up: Gateway) -> None:
    user_id, key = marked_up.new_user(1)
    messages = _messages()
    raw = _create(marked_up, key, model="five", messages=messages)
    request_id = raw.headers["x-request-id"]
    prompt = provider_prompt_tokens(messages)
    cost = (prompt * INPUT_PRICE + 5 * OUTPUT_PRICE) * Decimal("1.5")
    assert cost == expected_cost(prompt, 5, markup=Decimal("1.5"))
    assert Decimal(raw.headers["x-request-cost"]) == cost
    with marked_up.client(key) as client:
        list(client.chat.completions.create(model="five", messages=messages, stream=True))
    charged = charges(marked_up, key)
    assert charged[request_id].amount == -cost
    assert sorted(-row.amount for row in charged.values()) == [cost, cost]
    assert account(marked_up, user_id)["balance"] == 1 - 2 * cost


def test_an_unpriced_model_is_refused_never_served_free(gw: Gateway, fake_provider: FakeProvider) -> None:
    user_id, key = gw.new_user(1)
    messages = _messages()
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            _create(gw, key, model="unpriced", messages=messages, stream=stream)
        error = caught.value.body
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            "model_not_priced",
            "model",
        )
        assert "no price" in error["message"] and "unpriced" in error["message"]
    assert provider_saw(fake_provider, messages[0]["content"].split()[0]) == []
    assert account(gw, user_id)["balance"] == 1
    assert charges(gw, key) == {}


def test_a_model_marked_free_is_served_and_charges_nothing(gw: Gateway) -> None:
    user_id, key = gw.new_user(0)  # free: not even a balance is needed
    raw = _create(gw, key, model="gratis", messages=_messages())
    assert raw.parse().usage.completion_tokens == 5
    assert Decimal(raw.headers["x-request-cost"]) == 0
    acct = account(gw, user_id)
    assert (acct["balance"], acct["reserved"]) == (0, 0)
    assert all(row.amount == 0 for row in charges(gw, key).values())


def test_a_model_priced_by_litellms_cost_map_is_charged_its_price(gw: Gateway) -> None:
    import litellm

    info = litellm.get_model_info("openai/gpt-4o-mini")
    inp, out = Decimal(str(info["input_cost_per_token"])), Decimal(str(info["output_cost_per_token"]))
    user_id, key = gw.new_user(1)
    messages = _messages()
    raw = _create(gw, key, model="mapped", messages=messages)
    usage = raw.parse().usage
    cost = (usage.prompt_tokens * inp + usage.completion_tokens * out).quantize(Decimal("0.00000001"))
    assert cost > 0
    assert Decimal(raw.headers["x-request-cost"]) == cost
    assert account(gw, user_id)["balance"] == 1 - cost


def test_the_request_cost_header_is_the_ledger_charge(gw: Gateway) -> None:
    user_id, key = gw.new_user(1)
    seen: dict[str, Decimal] = {}
    for words in range(1, 6):
        messages = [{"role": "user", "content": " ".join([tag()] * words)}]
        raw = _create(gw, key, model="five", messages=messages)
        seen[raw.headers["x-request-id"]] = Decimal(raw.headers["x-request-cost"])
        assert seen[raw.headers["x-request-id"]] == expected_cost(words + 1, 5)
    charged = charges(gw, key)
    assert {rid: -row.amount for rid, row in charged.items()} == seen
    assert account(gw, user_id)["balance"] == 1 - sum(seen.values())
