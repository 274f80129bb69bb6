"""Prices per token and the cost of a call: pure functions on Decimal, built once at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import litellm

from app.config import ModelConfig
from app.usage import Usage

log = logging.getLogger(__name__)

MONEY_PLACES = Decimal("0.00000001")


@dataclass(frozen=True, slots=True)
class Price:
    """Prices per unit with the markup already applied; `free` means deliberately unpriced.

    Component prices left as None cost what their plain counterpart costs (a cached token
    the input price, a reasoning token the output price).
    """

    input: Decimal
    output: Decimal
    max_output_tokens: int | None = None
    free: bool = False
    cache_read: Decimal | None = None
    cache_creation: Decimal | None = None
    reasoning: Decimal | None = None
    audio_input: Decimal | None = None
    per_image: Decimal | None = None
    per_second: Decimal | None = None
    per_character: Decimal | None = None
    per_query: Decimal | None = None

    @property
    def hold_input(self) -> Decimal:
        """The most one prompt token can cost, whichever kind it turns out to be."""
        parts = (self.cache_creation, self.audio_input, self.cache_read)
        return max([self.input, *(p for p in parts if p is not None)])

    @property
    def hold_output(self) -> Decimal:
        """The most one completion token can cost."""
        return self.output if self.reasoning is None else max(self.output, self.reasoning)


# LiteLLM's names for the component prices (model_info, litellm_params or its cost map).
_COMPONENTS = {
    "cache_read": "cache_read_input_token_cost",
    "cache_creation": "cache_creation_input_token_cost",
    "reasoning": "output_cost_per_reasoning_token",
    "audio_input": "input_cost_per_audio_token",
    "per_image": "output_cost_per_image",
    "per_second": "input_cost_per_second",
    "per_character": "input_cost_per_character",
    "per_query": "input_cost_per_query",
}
SERVICE_TIERS = ("priority", "flex")


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    # str() first: a YAML float such as 1.5e-07 must not carry binary noise into money.
    return Decimal(str(value))


def call_cost(price: Price, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """Cost of a call: prompt x input price + completion x output price, to 8 places."""
    raw = prompt_tokens * price.input + completion_tokens * price.output
    return raw.quantize(MONEY_PLACES, rounding=ROUND_HALF_UP)


def usage_cost(price: Price, usage: Usage) -> Decimal:
    """Cost of a call: each usage component at its own price, to 8 places."""
    raw = (
        usage.input_tokens * price.input
        + usage.cache_read_tokens * _or(price.cache_read, price.input)
        + usage.cache_creation_tokens * _or(price.cache_creation, price.input)
        + usage.audio_input_tokens * _or(price.audio_input, price.input)
        + usage.output_tokens * price.output
        + usage.reasoning_tokens * _or(price.reasoning, price.output)
        + usage.images * (price.per_image or 0)
        + Decimal(str(usage.seconds)) * (price.per_second or 0)
        + usage.characters * (price.per_character or 0)
        + usage.queries * (price.per_query or 0)
    )
    return raw.quantize(MONEY_PLACES, rounding=ROUND_HALF_UP)


def _or(value: Decimal | None, default: Decimal) -> Decimal:
    return default if value is None else value


def affordable_tokens(price: Price, available: Decimal, prompt_tokens: int) -> int | None:
    """How many completion tokens `available` pays for after the prompt; None if unlimited."""
    left = available - prompt_tokens * price.input
    if left <= 0:
        return 0
    if price.output <= 0:
        return None
    return int(left // price.output)


def _cost_map(litellm_model: str) -> dict[str, Any]:
    """A model's entry in LiteLLM's bundled cost map (never downloaded at run time)."""
    try:
        return dict(litellm.get_model_info(litellm_model))
    except Exception:  # litellm raises a bare Exception for unknown models
        return {}


def deployment_price(
    entry: dict[str, Any], *, markup: Decimal, free_unpriced: bool, tier: str | None = None
) -> Price | None:
    """Price of one model_list entry: model_info, then litellm_params, then the cost map.

    With a service tier, the tier's own token prices (`input_cost_per_token_priority`, ...)
    are required: a tier the operator has not priced is not served.
    """
    info: dict[str, Any] = entry.get("model_info") or {}
    params: dict[str, Any] = entry.get("litellm_params") or {}
    cost_map: dict[str, Any] | None = None

    def look(key: str) -> Decimal | None:
        nonlocal cost_map
        for source in (info, params):
            if source.get(key) is not None:
                return _decimal(source[key])
        if cost_map is None:
            cost_map = _cost_map(str(params.get("model", "")))
        return _decimal(cost_map.get(key))

    suffix = f"_{tier}" if tier else ""
    inp, out = look("input_cost_per_token" + suffix), look("output_cost_per_token" + suffix)
    max_out = info.get("max_output_tokens")
    if max_out is None:
        cost_map = cost_map if cost_map is not None else _cost_map(str(params.get("model", "")))
        max_out = cost_map.get("max_output_tokens") or cost_map.get("max_tokens")
    cap = int(max_out) if max_out else None
    if inp is None or out is None:
        if tier is None and (info.get("free") is True or free_unpriced):
            return Price(Decimal(0), Decimal(0), cap, free=True)
        return None
    parts = {name: look(key + suffix) if tier else look(key) for name, key in _COMPONENTS.items()}
    marked = {name: None if value is None else value * markup for name, value in parts.items()}
    return Price(inp * markup, out * markup, cap, False, **marked)


class PriceBook:
    """Prices of every deployment and model group, per service tier, resolved once at start-up."""

    def __init__(self, config: ModelConfig, *, markup: Decimal, free_unpriced: bool) -> None:
        self._config = config
        # (deployment id, tier) and (group, tier); tier None is the default tier.
        self._by_deployment: dict[tuple[str, str | None], Price | None] = {}
        self._by_group: dict[tuple[str, str | None], Price | None] = {}
        for tier in (None, *SERVICE_TIERS):
            groups: dict[str, list[Price | None]] = {}
            for entry in config.model_list:
                price = deployment_price(entry, markup=markup, free_unpriced=free_unpriced, tier=tier)
                model_id = entry.get("model_info", {}).get("id")
                if model_id:
                    self._by_deployment[(str(model_id), tier)] = price
                groups.setdefault(str(entry["model_name"]), []).append(price)
            for name, prices in groups.items():
                if any(p is None for p in prices):
                    if tier is None:
                        log.warning("model %r has a deployment with no known price: it will be refused", name)
                    self._by_group[(name, tier)] = None
                else:
                    self._by_group[(name, tier)] = _most_expensive([p for p in prices if p is not None])

    def for_group(self, model: str, tier: str | None = None) -> Price | None:
        """The most a call to this group (or any group it can fall back to, at any depth) can cost."""
        chain = [m for m in self._config.reachable(model) if (m, tier) in self._by_group]
        prices = [self._by_group[(m, tier)] for m in chain]
        if not prices or any(p is None for p in prices):
            return None
        return _most_expensive([p for p in prices if p is not None])

    def for_served(self, model: str, deployment_id: str | None, tier: str | None = None) -> Price | None:
        """The price of the deployment that actually answered, else the group's."""
        if deployment_id is not None and (deployment_id, tier) in self._by_deployment:
            return self._by_deployment[(deployment_id, tier)]
        return self._by_group.get((model, tier))


def _most_expensive(prices: list[Price]) -> Price:
    caps = [p.max_output_tokens for p in prices]

    def top(name: str) -> Decimal | None:
        values = [getattr(p, name) for p in prices if getattr(p, name) is not None]
        return max(values) if values else None

    return Price(
        input=max(p.input for p in prices),
        output=max(p.output for p in prices),
        max_output_tokens=None if any(c is None for c in caps) else max(c for c in caps if c),
        free=all(p.free for p in prices),
        **{name: top(name) for name in _COMPONENTS},
    )
