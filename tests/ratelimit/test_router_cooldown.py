"""Router cooldowns are shared through REDIS_URL: one gateway's failing deployment is skipped by another."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Gateway, stop_gateway
from tests.fake_provider import FakeProvider
from tests.ratelimit.conftest import RedisServer, limit_env, new_user, start_gateways, unique

# LiteLLM reads a cooldown it has not seen from Redis at most every 10 s (redis_batch_cache_expiry).
PROPAGATION_S = 15.0


def _deployment(model: str, api_base: str, weight: int) -> dict[str, Any]:
    return {
        "model_name": "pool",
        "litellm_params": {
            "model": f"openai/{model}",
            "api_base": api_base,
            "api_key": "x",
            "weight": weight,
        },
        "model_info": {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002},
    }


def _states(gateway: Gateway) -> dict[str, str]:
    r = httpx.get(gateway.url + "/health/circuit-breakers", timeout=10)
    assert r.status_code == 200, r.text
    return {d["deployment_id"]: d["state"] for d in r.json()["deployments"]}


def test_a_deployment_cooled_down_by_one_gateway_is_skipped_by_another(
    tmp_path: Path, own_redis: RedisServer, fake_provider: FakeProvider
) -> None:
    failing, healthy = unique("fake+fail-429+"), unique("fake+")
    # The failing deployment weighs 1000 times more: a gateway that does not know it is cooling
    # down sends nearly every call there.
    models = [
        _deployment(failing, fake_provider.base_url, 1000),
        _deployment(healthy, fake_provider.base_url, 1),
    ]
    router_settings = {"num_retries": 0, "cooldown_time": 120, "routing_strategy": "simple-shuffle"}
    env = limit_env(own_redis.url, rpm=1000)
    first, second = start_gateways(
        (tmp_path / "a", {"models": models, "router_settings": router_settings, "env": env}),
        (tmp_path / "b", {"models": models, "router_settings": router_settings, "env": env}),
    )
    try:
        _, key = new_user(first)
        _, other_key = new_user(second)

        def calls_to(model: str) -> int:
            return sum(1 for r in fake_provider.requests() if r["model"] == model)

        # The first gateway meets the provider's 429 and cools the deployment down.
        for _ in range(20):
            _call(first, key)
            if calls_to(failing) >= 1:
                break
        assert calls_to(failing) >= 1
        failing_id = "pool#0"
        deadline = time.monotonic() + 5
        while _states(first)[failing_id] != "open" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _states(first)[failing_id] == "open"

        # The second gateway never called it, yet sees it cooling down, and routes around it.
        deadline = time.monotonic() + PROPAGATION_S
        while _states(second)[failing_id] != "open" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _states(second) == {"pool#0": "open", "pool#1": "closed"}
        before = calls_to(failing)
        statuses = [_call(second, other_key) for _ in range(10)]
        assert statuses == [200] * 10
        assert calls_to(failing) == before
    finally:
        stop_gateway(first)
        stop_gateway(second)


def _call(gateway: Gateway, key: str) -> int:
    r = httpx.post(
        gateway.v1 + "/chat/completions",
        json={"model": "pool", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    return r.status_code
