"""Prices per token and the cost of a call: pure functions on Decimal, built once at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from app.config import ModelConfig

log = logging.getLogger(__name__)

MONEY_PLACES = Decimal("0.00000001")


@dataclass(frozen=True, slots=True)
class Price:
    """Per-token prices with the markup already applied; `free` means deliberately unpriced."""

    input: Decimal
    output: Decimal
    max_output_tokens: int | None = None
    free: bool = False


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    # str() first: a YAML float such as 1.5e-07 must not carry binary noise into money.
    return Decimal(str(value))


def call_cost(price: Price, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """Cost of a call: prompt x input price + completion x output price, to 8 places."""
    raw = prompt_tokens * price.input + completion_tokens * price.output
    return raw.quantize(MONEY_PLACES, rounding=ROUND_HALF_UP)


def affordable_tokens(price: Price, available: Decimal, prompt_tokens: int) -> int | None:
    """How many completion tokens `available` pays for after the prompt; None if unlimited."""
    left = available - prompt_tokens * price.input
    if left <= 0:
        return 0
    if price.output <= 0:
        return None
    return int(left // price.output)


def _cost_map_price(litellm_model: str) -> tuple[Decimal, Decimal, int | None] | None:
    """Look a model up in LiteLLM's bundled cost map (never downloaded at run time)."""
    import litellm

    try:
        info = litellm.get_model_info(litellm_model)
    except Exception:  # litellm raises a bare Exception for unknown models
        return None
    inp, out = _decimal(info.get("input_cost_per_token")), _decimal(info.get("output_cost_per_token"))
    if inp is None or out is None:
        return None
    max_out = info.get("max_output_tokens") or info.get("max_tokens")
    return inp, out, int(max_out) if max_out else None


def deployment_price(entry: dict[str, Any], *, markup: Decimal, free_unpriced: bool) -> Price | None:
    """Price of one model_list entry: model_info, then litellm_params, then the cost map."""
    info: dict[str, Any] = entry.get("model_info") or {}
    params: dict[str, Any] = entry.get("litellm_params") or {}
    inp = _decimal(info.get("input_cost_per_token", params.get("input_cost_per_token")))
    out = _decimal(info.get("output_cost_per_token", params.get("output_cost_per_token")))
    max_out = info.get("max_output_tokens")
    if inp is None or out is None:
        found = _cost_map_price(str(params.get("model", "")))
        if found is not None:
            map_in, map_out, map_max = found
            inp = map_in if inp is None else inp
            out = map_out if out is None else out
            max_out = max_out or map_max
    if inp is None or out is None:
        if info.get("free") is True or free_unpriced:
            return Price(Decimal(0), Decimal(0), int(max_out) if max_out else None, free=True)
        return None
    return Price(inp * markup, out * markup, int(max_out) if max_out else None)


class PriceBook:
    """Prices of every deployment and model group, resolved once from the model config."""

    def __init__(self, config: ModelConfig, *, markup: Decimal, free_unpriced: bool) -> None:
        self._by_deployment: dict[str, Price | None] = {}
        groups: dict[str, list[Price | None]] = {}
        for entry in config.model_list:
            price = deployment_price(entry, markup=markup, free_unpriced=free_unpriced)
            model_id = entry.get("model_info", {}).get("id")
            if model_id:
                self._by_deployment[str(model_id)] = price
            groups.setdefault(str(entry["model_name"]), []).append(price)
        self._by_group: dict[str, Price | None] = {}
        for name, prices in groups.items():
            if any(p is None for p in prices):
                log.warning("model %r has a deployment with no known price: it will be refused", name)
                self._by_group[name] = None
            else:
                self._by_group[name] = _most_expensive([p for p in prices if p is not None])
        self._fallbacks = _fallback_chains(config)

    def for_group(self, model: str) -> Price | None:
        """The most a call to this model group (or any group it falls back to) can cost per token."""
        chain = [model, *self._fallbacks.get(model, [])]
        prices = [self._by_group.get(m) for m in chain if m in self._by_group]
        if not prices or any(p is None for p in prices):
            return None
        return _most_expensive([p for p in prices if p is not None])

    def for_served(self, model: str, deployment_id: str | None) -> Price | None:
        """The price of the deployment that actually answered, else the group's."""
        if deployment_id is not None and deployment_id in self._by_deployment:
            return self._by_deployment[deployment_id]
        return self._by_group.get(model)


def _most_expensive(prices: list[Price]) -> Price:
    caps = [p.max_output_tokens for p in prices]
    return Price(
        input=max(p.input for p in prices),
        output=max(p.output for p in prices),
        max_output_tokens=None if any(c is None for c in caps) else max(c for c in caps if c),
        free=all(p.free for p in prices),
    )


def _fallback_chains(config: ModelConfig) -> dict[str, list[str]]:
    """Model groups each group may fall back to, from router_settings (LiteLLM's list-of-dicts form)."""
    chains: dict[str, list[str]] = {}
    for key in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
        for item in config.router_settings.get(key) or []:
            if isinstance(item, dict):
                for src, targets in item.items():
                    chains.setdefault(str(src), []).extend(str(t) for t in targets or [])
    return chains
