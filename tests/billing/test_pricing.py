"""Properties of app/billing/pricing.py: exact money, monotone costs, affordability, YAML prices."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from app.billing.pricing import MONEY_PLACES, Price, PriceBook, affordable_tokens, call_cost, deployment_price
from app.config import load_model_config

# Prices per token as providers publish them: a few significant digits, 1e-12 .. 1e-3.
prices = st.builds(
    lambda digits, exp: Decimal(digits).scaleb(exp),
    st.integers(min_value=0, max_value=999_999),
    st.integers(min_value=-17, max_value=-6),
)
positive_prices = prices.filter(lambda d: d > 0)
tokens = st.integers(min_value=0, max_value=2_000_000)
markups = st.sampled_from([Decimal(1), Decimal("1.5"), Decimal("1.2"), Decimal("2"), Decimal("0.9")])
# Balances as the ledger holds them: 8 decimal places, up to a billion.
balances = st.builds(lambda units: Decimal(units).scaleb(-8), st.integers(min_value=0, max_value=10**17))


def _raw(price: Price, prompt: int, completion: int) -> Decimal:
    return prompt * price.input + completion * price.output


@given(prices, prices, tokens, tokens)
def test_call_cost_is_the_exact_sum_rounded_half_up_to_8_places(
    inp: Decimal, out: Decimal, prompt: int, completion: int
) -> None:
    price = Price(inp, out)
    cost = call_cost(price, prompt, completion)
    raw = _raw(price, prompt, completion)
    assert cost == cost.quantize(MONEY_PLACES)  # exactly 8 places, no float anywhere
    assert cost.as_tuple().exponent == -8
    assert abs(cost - raw) <= Decimal("0.000000005")
    if raw == raw.quantize(MONEY_PLACES):
        assert cost == raw  # already on the ledger's grid: charged to the unit
    # Half-way goes up, like Postgres' round().
    assert cost == (raw * 10**8 + Decimal("0.5")).to_integral_value(rounding="ROUND_FLOOR") / 10**8


@given(
    prices,
    prices,
    tokens,
    tokens,
    st.integers(min_value=0, max_value=1000),
    st.integers(min_value=0, max_value=1000),
)
def test_call_cost_is_monotone_and_never_negative(
    inp: Decimal, out: Decimal, prompt: int, completion: int, more_prompt: int, more_completion: int
) -> None:
    price = Price(inp, out)
    cost = call_cost(price, prompt, completion)
    assert cost >= 0
    assert call_cost(price, prompt + more_prompt, completion) >= cost
    assert call_cost(price, prompt, completion + more_completion) >= cost
    assert call_cost(price, 0, 0) == 0


@given(prices, prices, tokens, tokens, markups)
def test_markup_multiplies_the_unrounded_cost_exactly(
    inp: Decimal, out: Decimal, prompt: int, completion: int, markup: Decimal
) -> None:
    entry = {
        "model_name": "m",
        "litellm_params": {"model": "openai/m"},
        "model_info": {"input_cost_per_token": str(inp), "output_cost_per_token": str(out)},
    }
    price = deployment_price(entry, markup=markup, free_unpriced=False)
    assert price is not None
    assert (price.input, price.output) == (inp * markup, out * markup)
    expected = ((prompt * inp + completion * out) * markup).quantize(MONEY_PLACES, rounding="ROUND_HALF_UP")
    assert call_cost(price, prompt, completion) == expected


@settings(max_examples=300)
@given(prices, positive_prices, balances, tokens)
def test_affordable_tokens_is_the_most_the_balance_pays_for(
    inp: Decimal, out: Decimal, available: Decimal, prompt: int
) -> None:
    price = Price(inp, out)
    n = affordable_tokens(price, available, prompt)
    assert n is not None and n >= 0
    if _raw(price, prompt, 0) >= available:
        assert n == 0  # not even the prompt (or exactly only the prompt): nothing to generate
        return
    assert _raw(price, prompt, n) <= available < _raw(price, prompt, n + 1)
    # So the charge for any completion up to n tokens fits in the balance, rounding included.
    assert call_cost(price, prompt, n) <= available


@given(prices, balances, tokens)
def test_affordable_tokens_is_unlimited_only_for_free_output(
    inp: Decimal, available: Decimal, prompt: int
) -> None:
    n = affordable_tokens(Price(inp, Decimal(0)), available, prompt)
    if available - prompt * inp > 0:
        assert n is None
    else:
        assert n == 0


@given(st.integers(min_value=1, max_value=999_999), st.integers(min_value=-16, max_value=-4))
def test_a_yaml_float_price_is_read_exactly_via_its_text(
    tmp_path_factory: pytest.TempPathFactory, digits: int, exponent: int
) -> None:
    exact = Decimal(digits).scaleb(exponent)
    as_float = float(exact)  # what yaml.safe_load makes of 1.5e-07
    text = yaml.safe_dump(
        {
            "model_list": [
                {
                    "model_name": "m",
                    "litellm_params": {"model": "openai/m"},
                    "model_info": {"input_cost_per_token": as_float, "output_cost_per_token": as_float},
                }
            ]
        }
    )
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(text)
    config = load_model_config(path)
    assert isinstance(config.model_list[0]["model_info"]["input_cost_per_token"], float)
    price = PriceBook(config, markup=Decimal(1), free_unpriced=False).for_group("m")
    assert price is not None
    assert price.input == price.output == exact
    assert Decimal(repr(as_float)) == exact  # the float's shortest text is the published price


def test_the_classic_yaml_example_prices_exactly(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "model_list:\n"
        "  - model_name: m\n"
        "    litellm_params: {model: openai/m}\n"
        "    model_info: {input_cost_per_token: 1.5e-07, output_cost_per_token: 6.0e-07}\n"
    )
    price = PriceBook(load_model_config(path), markup=Decimal("1.5"), free_unpriced=False).for_group("m")
    assert price is not None
    assert (price.input, price.output) == (Decimal("0.000000225"), Decimal("0.0000009"))
    assert Decimal(1.5e-07) != Decimal("1.5e-07")  # noqa: RUF032 - why str() comes first
    assert call_cost(price, 1000, 1000) == Decimal("0.001125")


def test_unpriced_models_are_none_unless_marked_free() -> None:
    entry = {
        "model_name": "x",
        "litellm_params": {"model": "openai/no-such-model-anywhere"},
        "model_info": {},
    }
    assert deployment_price(entry, markup=Decimal(1), free_unpriced=False) is None
    free = deployment_price({**entry, "model_info": {"free": True}}, markup=Decimal(1), free_unpriced=False)
    assert free is not None and free.free and (free.input, free.output) == (0, 0)
    assert call_cost(free, 10_000, 10_000) == 0
