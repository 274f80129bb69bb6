"""RateLimiter on its own, against real Redis servers: buckets, fallback timing, metrics, logs."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from starlette.requests import Request

from app.auth.service import Principal
from app.config import Settings
from app.errors import RateLimited
from app.observability.metrics import Metrics
from app.ratelimit import RateLimiter
from tests.conftest import REDIS_URL
from tests.ratelimit.conftest import RedisServer

LOGGER = "app.ratelimit.limiter"


@dataclass(frozen=True, slots=True)
class KeyPrincipal(Principal):
    """A principal whose key has a limit of its own (what auth will pass once it carries it)."""

    key_rpm_limit: int | None = None


def _settings(redis_url: str, **limits: int) -> Settings:
    return Settings(_env_file=None, REDIS_URL=redis_url, ENVIRONMENT="test", **limits)


def _request(method: str = "POST") -> Request:
    return Request(
        {"type": "http", "method": method, "path": "/v1/chat/completions", "headers": [], "state": {}}
    )


def _user(**limits: int | None) -> Principal:
    return Principal(user_id=f"user-{uuid.uuid4().hex[:10]}", via="key", key_id="key_1", **limits)


async def _allowed(limiter: RateLimiter, principal: Principal, calls: int, method: str = "POST") -> int:
    ok = 0
    for _ in range(calls):
        try:
            await limiter.check(_request(method), principal)
            ok += 1
        except RateLimited:
            pass
    return ok


def _outcomes(metrics: Metrics) -> dict[str, float]:
    text = metrics.render()[0].decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("rate_limit_requests_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = float(line.rsplit(" ", 1)[1])
    return out


@pytest.fixture
async def limiter() -> AsyncIterator[RateLimiter]:
    rl = await RateLimiter.create(
        _settings(REDIS_URL, RATE_LIMIT_REQUESTS_PER_MINUTE=3), Metrics(enabled=False)
    )
    yield rl
    await rl.close()


async def test_keys_of_one_user_share_the_bucket_and_a_limited_key_has_its_own(limiter: RateLimiter) -> None:
    user_id = f"user-{uuid.uuid4().hex[:10]}"
    first = KeyPrincipal(user_id=user_id, via="key", key_id="key_a")
    second = KeyPrincipal(user_id=user_id, via="key", key_id="key_b")
    assert await _allowed(limiter, first, 2) == 2
    assert await _allowed(limiter, second, 5) == 1  # the user's bucket: 3 in all

    other = f"user-{uuid.uuid4().hex[:10]}"
    tight = KeyPrincipal(user_id=other, via="key", key_id="key_t", key_rpm_limit=1)
    loose = KeyPrincipal(user_id=other, via="key", key_id="key_l")
    assert await _allowed(limiter, tight, 3) == 1
    assert await _allowed(limiter, loose, 3) == 2  # the key's call still counted for the user


async def test_reads_have_a_bucket_of_their_own(limiter: RateLimiter) -> None:
    principal = _user()
    assert await _allowed(limiter, principal, 4) == 3
    assert await _allowed(limiter, principal, 4, method="GET") == 3


async def test_a_rejection_consumes_nothing(limiter: RateLimiter) -> None:
    principal = _user(rph_limit=1)
    assert await _allowed(limiter, principal, 10) == 1  # the hour refuses calls 2 to 10
    quoted = "{" + principal.user_id + "}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        minute = client.get(f"LIMITS:LIMITER/llm-gateway/user/{quoted}/3/1/minute")
        hour = client.get(f"LIMITS:LIMITER/llm-gateway/user/{quoted}/1/1/hour")
    finally:
        client.close()
    assert (minute, hour) == (b"1", b"1")


async def test_a_zero_limit_switches_the_window_off(limiter: RateLimiter) -> None:
    assert await _allowed(limiter, _user(rpm_limit=0), 10) == 10


async def test_tokens_of_calls_that_end_together_all_count(limiter: RateLimiter) -> None:
    # Written to Redis together (one pipeline per flush), not one round trip per call.
    principal = _user(tpm_limit=1000)
    await limiter.check(_request(), principal)
    for _ in range(50):
        limiter.record_tokens(principal.user_id, 20)
    await asyncio.sleep(0.05)
    quoted = "{" + principal.user_id + "}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        used = client.get(f"LIMITS:LIMITER/llm-gateway/user/{quoted}/tokens/1000/1/minute")
        ttl = client.ttl(f"LIMITS:LIMITER/llm-gateway/user/{quoted}/tokens/1000/1/minute")
    finally:
        client.close()
    assert used == b"1000" and 0 < ttl <= 60
    with pytest.raises(RateLimited) as caught:
        await limiter.check(_request(), principal)
    assert "tokens per minute" in caught.value.message


async def test_tokens_are_counted_after_the_call(limiter: RateLimiter) -> None:
    principal = _user(tpm_limit=100)
    await limiter.check(_request(), principal)
    await limiter.check(_request("GET"), principal)  # a read meanwhile (the balance) changes nothing
    limiter.record_tokens(principal.user_id, 60)
    await asyncio.sleep(0.05)
    await limiter.check(_request(), principal)  # 60 of 100: room left
    limiter.record_tokens(principal.user_id, 60)
    await asyncio.sleep(0.05)
    request = _request()
    with pytest.raises(RateLimited) as caught:
        await limiter.check(request, principal)
    assert "tokens per minute" in caught.value.message
    assert dict(request.state.ratelimit_headers)[b"x-ratelimit-limit"] == b"100"


async def test_without_redis_limits_are_in_memory(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(enabled=True)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        rl = await RateLimiter.create(_settings("", RATE_LIMIT_REQUESTS_PER_MINUTE=2), metrics)
    try:
        assert await _allowed(rl, _user(), 3) == 2
        await rl.ping()  # nothing configured, nothing down
    finally:
        await rl.close()
    assert [r.message for r in caplog.records].count(
        "REDIS_URL is not set: rate limits are kept in memory, per worker"
    ) == 1
    assert _outcomes(metrics) == {"degraded": 2.0, "limited": 1.0}


async def test_a_hanging_redis_costs_one_short_timeout_then_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """A Redis that accepts connections and never answers (a partition, a stuck server)."""
    hold: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hold.append(writer)
        await reader.read()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    metrics = Metrics(enabled=True)
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            started = time.perf_counter()
            rl = await RateLimiter.create(
                _settings(f"redis://127.0.0.1:{port}/0", RATE_LIMIT_REQUESTS_PER_MINUTE=5), metrics
            )
            assert time.perf_counter() - started < 1.0
            principal = _user(tpm_limit=1000)
            timings = []
            for _ in range(7):
                started = time.perf_counter()
                try:
                    await rl.check(_request(), principal)
                except RateLimited:
                    pass
                timings.append(time.perf_counter() - started)
            started = time.perf_counter()
            rl.record_tokens(principal.user_id, 10)  # schedules, never waits
            assert time.perf_counter() - started < 0.01
            with pytest.raises(redis.RedisError):
                await rl.ping()
            await rl.close()
    finally:
        for writer in hold:
            writer.close()
        server.close()
        await server.wait_closed()
    # Redis was found dead at start-up: no call waited for it.
    assert max(timings) < 0.05, timings
    assert _outcomes(metrics) == {"degraded": 5.0, "limited": 2.0}
    assert sum("is not answering" in r.message for r in caplog.records) == 1


async def test_redis_lost_and_found_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    metrics = Metrics(enabled=True)
    rl = await RateLimiter.create(_settings(server.url, RATE_LIMIT_REQUESTS_PER_MINUTE=100), metrics)
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert await _allowed(rl, _user(), 3) == 3
            server.kill()
            started = time.perf_counter()
            assert await _allowed(rl, _user(), 50) == 50
            assert time.perf_counter() - started < 1.0  # 50 calls: one failed round trip, then memory
            server.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _outcomes(metrics).get("allowed", 0) < 4:
                await _allowed(rl, _user(), 1)
                await asyncio.sleep(0.1)
            await rl.ping()
    finally:
        await rl.close()
        server.kill()
    outcomes = _outcomes(metrics)
    assert outcomes["allowed"] >= 4 and outcomes["degraded"] >= 50
    messages = [r.message for r in caplog.records]
    assert sum("is not answering" in m for m in messages) == 1
    assert sum("answers again" in m for m in messages) == 1
