"""Low-balance alerts end to end: signed, once per downward crossing, retried, never on the call path.

Runs against the embedded store and real Postgres; 20 concurrent calls cross the thresholds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.accounts.alert_receiver import AlertReceiver
from tests.accounts.support import JWT_SECRET, new_session_user
from tests.billing.support import audit, wait_reserved_zero
from tests.conftest import Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider

ALERT_SECRET = "alert-secret-0123456789"


@pytest.fixture(scope="module")
def receiver() -> Iterator[AlertReceiver]:
    r = AlertReceiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_provider: FakeProvider,
    receiver: AlertReceiver,
    pg_database: str,
) -> Iterator[Gateway]:
    env = {
        "JWT_SECRET_KEY": JWT_SECRET,
        "ALERT_WEBHOOK_URL": receiver.url,
        "ALERT_WEBHOOK_SECRET": ALERT_SECRET,
        "BILLING_ALERT_THRESHOLDS": "5, 2",
    }
    if request.param == "postgres":
        env |= {"DATABASE_URL": pg_database, "DATABASE_POOL_SIZE": "5"}
    price = {"input_cost_per_token": "0", "output_cost_per_token": "0.1"}  # 1 per call of 10 tokens
    models = [model_entry("m", "fake+chunks-10+slow-100", fake_provider.base_url, **price)]
    gateway = start_gateway(tmp_path_factory.mktemp(f"alerts-{request.param}"), models=models, env=env)
    yield gateway
    try:
        assert asyncio.run(audit(gateway)) == []
    finally:
        stop_gateway(gateway)


async def _calls(gw: Gateway, token: str, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=30) as http:

        async def one() -> int:
            r = await http.post(
                gw.url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {token}"},
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10},
            )
            return r.status_code

        return await asyncio.gather(*(one() for _ in range(n)))


def _alerts_for(
    receiver: AlertReceiver, user_id: str, count: int, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """The accepted alerts for a user, once `count` have arrived (and a moment more for strays)."""
    deadline = time.monotonic() + timeout
    while True:
        mine = [d for d in receiver.accepted() if json.loads(d.body)["user_id"] == user_id]
        if len(mine) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    mine = [d for d in receiver.accepted() if json.loads(d.body)["user_id"] == user_id]
    for d in mine:
        expected = "sha256=" + hmac.new(ALERT_SECRET.encode(), d.body, hashlib.sha256).hexdigest()
        assert d.signature == expected
    return [json.loads(d.body, parse_float=Decimal, parse_int=Decimal) for d in mine]


def test_20_concurrent_calls_crossing_two_thresholds_alert_once_each_even_when_delivery_fails_first(
    gw: Gateway, receiver: AlertReceiver
) -> None:
    user_id, token = new_session_user(gw, balance="10")
    receiver.fail_first = 1  # the first delivery attempt gets a 500 and is retried
    statuses = asyncio.run(_calls(gw, token, 20))
    assert statuses.count(200) == 10 and statuses.count(402) == 10
    wait_reserved_zero(gw, user_id)
    alerts = _alerts_for(receiver, user_id, 2)
    assert sorted(a["threshold"] for a in alerts) == [2, 5]
    assert all(a["event"] == "balance.low" and a["balance"] < a["threshold"] for a in alerts)
    assert any(d.answered == 500 for d in receiver.deliveries)


def test_an_alert_fires_again_only_after_the_balance_rose_above_its_threshold(
    gw: Gateway, receiver: AlertReceiver
) -> None:
    user_id, token = new_session_user(gw, balance="6")
    assert asyncio.run(_calls(gw, token, 2)) == [200, 200]  # 6 -> 4: below 5
    wait_reserved_zero(gw, user_id)
    assert [a["threshold"] for a in _alerts_for(receiver, user_id, 1)] == [5]
    # Up to 4.5 (still below 5), then down again: no new alert for 5.
    assert gw.admin("POST", f"/admin/users/{user_id}/credits", {"amount": "0.5"}).status_code == 200
    assert asyncio.run(_calls(gw, token, 1)) == [200]  # 3.5
    wait_reserved_zero(gw, user_id)
    assert [a["threshold"] for a in _alerts_for(receiver, user_id, 2, timeout=1)] == [5]
    # Above 5, then below it again: a second alert for 5.
    assert gw.admin("POST", f"/admin/users/{user_id}/credits", {"amount": "3"}).status_code == 200  # 6.5
    assert asyncio.run(_calls(gw, token, 2)) == [200, 200]  # 4.5
    wait_reserved_zero(gw, user_id)
    assert [a["threshold"] for a in _alerts_for(receiver, user_id, 2)] == [5, 5]
