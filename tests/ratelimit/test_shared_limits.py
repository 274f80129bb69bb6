"""Per-user limits hold across gunicorn workers and across gateway processes sharing one Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Gateway, model_entry, stop_gateway
from tests.fake_provider import FakeProvider
from tests.ratelimit.conftest import (
    MOCK_MODEL,
    Pinned,
    RedisServer,
    gunicorn_command,
    limit_env,
    new_user,
    pin_workers,
    start_gateways,
    unique,
    wait_for_log,
)

# Every fake-provider request for this run carries this model string, so counts are ours alone.
PROVIDER_MODEL = unique("fake+rl")


@pytest.fixture(scope="module")
def gateways(
    tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider
) -> Iterator[list[Gateway]]:
    """Two uvicorn workers under gunicorn, and a `python -m app` process, on one Redis and one database."""
    models = [MOCK_MODEL, model_entry("fake", PROVIDER_MODEL, fake_provider.base_url)]
    first_tmp, second_tmp = tmp_path_factory.mktemp("gunicorn"), tmp_path_factory.mktemp("second")
    # Limits are 5 per minute and the default TPM is off; tests set per-user limits through the admin API.
    env = limit_env()
    command = gunicorn_command(workers=2)
    started = start_gateways(
        (first_tmp, {"models": models, "env": {**env, **command.env}, "command": command.argv}),
        (second_tmp, {"models": models, "env": {**env, "DATA_DIR": str(first_tmp / "data")}}),
    )
    yield started
    for gateway in started:
        stop_gateway(gateway)


@pytest.fixture(scope="module")
def gunicorn_gw(gateways: list[Gateway]) -> Gateway:
    return gateways[0]


@pytest.fixture(scope="module")
def second_gw(gateways: list[Gateway]) -> Gateway:
    return gateways[1]


@pytest.fixture(scope="module")
def workers(gunicorn_gw: Gateway) -> Iterator[list[Pinned]]:
    pinned = pin_workers(gunicorn_gw, 2)
    yield pinned
    for p in pinned:
        p.http.close()


def _alternate(pinned: list[Pinned], key: str, calls: int) -> list[int]:
    return [pinned[i % len(pinned)].chat(key).status_code for i in range(calls)]


def test_limit_holds_across_two_gunicorn_workers(gunicorn_gw: Gateway, workers: list[Pinned]) -> None:
    _, key = new_user(gunicorn_gw)
    statuses = _alternate(workers, key, 12)
    # Each worker alone would have let 5 through (10 in all); shared, exactly 5 pass.
    assert statuses.count(200) == 5, statuses
    assert statuses.count(429) == 7, statuses
    # Both connections stayed on their workers: the 12 calls really were split 6 and 6.
    assert [p.worker_pid() for p in workers] == [p.pid for p in workers]
    assert len({p.pid for p in workers}) == 2


def test_limit_holds_across_two_gateway_processes(
    gunicorn_gw: Gateway, second_gw: Gateway, workers: list[Pinned]
) -> None:
    other = pin_workers(second_gw, 1)[0]
    try:
        _, key = new_user(gunicorn_gw)
        statuses = _alternate([workers[0], other, workers[1]], key, 12)
    finally:
        other.http.close()
    assert statuses.count(200) == 5, statuses
    assert set(statuses) == {200, 429}


def test_two_users_never_share_a_bucket(gunicorn_gw: Gateway, workers: list[Pinned]) -> None:
    _, first = new_user(gunicorn_gw)
    _, second = new_user(gunicorn_gw)
    assert _alternate(workers, first, 6) == [200] * 5 + [429]
    assert _alternate(workers, second, 6) == [200] * 5 + [429]


def test_429_is_openai_shaped_with_retry_after_and_ratelimit_headers(gunicorn_gw: Gateway) -> None:
    _, key = new_user(gunicorn_gw)
    client = gunicorn_gw.client(key)
    remaining = []
    for _ in range(5):
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
        assert raw.headers["x-ratelimit-limit"] == "5"
        remaining.append(int(raw.headers["x-ratelimit-remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    response = caught.value.response
    assert response.status_code == 429
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["param"] is None
    assert "requests per minute" in body["error"]["message"]
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert response.headers["x-ratelimit-limit"] == "5"
    assert response.headers["x-ratelimit-remaining"] == "0"
    # The reset is the epoch second the window frees (slowapi's convention): Retry-After from now.
    reset = int(response.headers["x-ratelimit-reset"])
    assert abs(reset - (time.time() + retry_after)) <= 2


def test_a_rejected_call_costs_nothing_and_never_reaches_the_provider(
    gunicorn_gw: Gateway, fake_provider: FakeProvider, workers: list[Pinned]
) -> None:
    _, key = new_user(gunicorn_gw)

    def provider_calls() -> int:
        return sum(1 for r in fake_provider.requests() if r["model"] == PROVIDER_MODEL)

    for i in range(5):
        assert workers[i % 2].chat(key, model="fake").status_code == 200
    balance, seen = gunicorn_gw.balance(key), provider_calls()
    transactions = _transactions(gunicorn_gw, key)
    assert balance < Decimal(10) and len(transactions) >= 5

    for i in range(4):
        r = workers[i % 2].chat(key, model="fake")
        assert r.status_code == 429, r.text
    # Reads have a bucket of their own: the balance stays readable after model calls are limited.
    assert gunicorn_gw.balance(key) == balance
    assert _transactions(gunicorn_gw, key) == transactions
    assert provider_calls() == seen


def _transactions(gateway: Gateway, key: str) -> list[dict[str, object]]:
    r = httpx.get(
        gateway.url + "/billing/transactions?limit=100",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return list(json.loads(r.text)["transactions"])


def test_per_user_override_from_the_admin_api(gunicorn_gw: Gateway, workers: list[Pinned]) -> None:
    _, key = new_user(gunicorn_gw, rpm_limit=2)
    assert _alternate(workers, key, 4) == [200, 200, 429, 429]


def test_token_limit_counts_reported_usage(gunicorn_gw: Gateway, workers: list[Pinned]) -> None:
    """Each call reports 8 tokens (3 prompt + 5 completion); at 20 a minute the 4th is refused."""
    _, key = new_user(gunicorn_gw, tpm_limit=20)
    responses = []
    for i in range(5):
        # Tokens recorded by one worker are seen by the other.
        responses.append(
            workers[i % 2].chat(key, model="fake", messages=[{"role": "user", "content": "a b"}])
        )
        time.sleep(0.05)  # the token write is scheduled after the response
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert "tokens per minute" in responses[3].json()["error"]["message"]
    assert responses[3].headers["x-ratelimit-limit"] == "20"


def test_redis_outage_degrades_to_memory_and_recovers(tmp_path: Path, own_redis: RedisServer) -> None:
    """Kill Redis mid-run: per-process limits, no 5xx, no stall; restart it: shared limits again."""
    env = limit_env(own_redis.url)
    first, second = start_gateways(
        (tmp_path / "a", {"models": [MOCK_MODEL], "env": env}),
        (tmp_path / "b", {"models": [MOCK_MODEL], "env": {**env, "DATA_DIR": str(tmp_path / "a" / "data")}}),
    )
    a, b = pin_workers(first, 1)[0], pin_workers(second, 1)[0]
    try:
        _, key = new_user(first)
        assert _alternate([a, b], key, 12).count(200) == 5  # shared

        own_redis.kill()
        _, key = new_user(first)
        timings, statuses = [], []
        for i in range(16):
            started = time.perf_counter()
            statuses.append([a, b][i % 2].chat(key).status_code)
            timings.append(time.perf_counter() - started)
        assert set(statuses) <= {200, 429}, statuses  # never a 5xx
        assert statuses.count(200) == 10  # 5 per process: each counts in its own memory
        assert max(timings) < 1.0, timings
        for gateway in (first, second):
            log = gateway.log_path.read_text(errors="replace")
            assert log.count("is not answering") == 1  # once per outage, not once per call
            metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
            assert 'rate_limit_requests_total{outcome="degraded"}' in metrics

        own_redis.start()
        _, throwaway = new_user(first)
        for pinned, gateway in ((a, first), (b, second)):
            wait_for_log(gateway, "answers again", poke=lambda p=pinned: p.chat(throwaway))
        _, key = new_user(first)
        assert _alternate([a, b], key, 12).count(200) == 5  # shared again, without a restart

        with own_redis.client() as client:
            names = [k.decode() for k in client.scan_iter("*")]
        limit_keys = [n for n in names if "LIMITER/" in n]
        assert limit_keys and not any("sk-" in n or key in n for n in names)
    finally:
        a.http.close()
        b.http.close()
        stop_gateway(first)
        stop_gateway(second)
