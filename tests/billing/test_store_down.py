"""The store goes away: the gateway fails closed, and a charge it could not write lands later, once.

A TCP proxy between the gateway and Postgres takes the database away (every connection closed,
new ones refused) and gives it back, while the gateway process keeps running.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.billing.support import (
    account,
    audit,
    charges,
    decimal_json,
    expected_cost,
    ledger,
    provider_prompt_tokens,
    provider_saw,
    tag,
)
from tests.billing.tcp_proxy import TcpProxy
from tests.conftest import Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider


@pytest.fixture(scope="module")
def proxy(pg_database: str) -> Iterator[TcpProxy]:
    relay = TcpProxy.for_url(pg_database).start()
    yield relay
    relay.stop()


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider, pg_database: str, proxy: TcpProxy
) -> Iterator[Gateway]:
    base = fake_provider.base_url
    gateway = start_gateway(
        tmp_path_factory.mktemp("store-down"),
        models=[
            model_entry("five", "fake+chunks-5", base),
            model_entry("slow", "fake+chunks-5+slow-1500", base),
        ],
        env={"DATABASE_URL": proxy.url(pg_database), "DATABASE_POOL_SIZE": "2"},
    )
    yield gateway
    proxy.restore()
    stop_gateway(gateway)


@pytest.fixture
def database_back(proxy: TcpProxy) -> Iterator[None]:
    """Whatever a test does to the proxy, the next one starts with the database reachable."""
    yield
    proxy.delay = 0.0
    proxy.restore()


def _chat(
    gw: Gateway, key: str, content: str, *, model: str = "five", stream: bool = False
) -> httpx.Response:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
    }
    return httpx.post(
        gw.v1 + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def _wait_until_served(gw: Gateway, key: str, *, timeout: float = 15.0) -> httpx.Response:
    """After the database comes back the pool reconnects; the first calls may still see 503."""
    deadline = time.monotonic() + timeout
    while True:
        r = _chat(gw, key, tag())
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        assert r.status_code == 503, r.text
        time.sleep(0.2)


def test_with_the_store_down_a_call_gets_503_and_never_reaches_the_provider(
    gw: Gateway, proxy: TcpProxy, fake_provider: FakeProvider, database_back: None
) -> None:
    user_id, warm_key = gw.new_user(1)
    _, cold_key = gw.new_user(1)
    assert _chat(gw, warm_key, tag()).status_code == 200  # this key is now cached by auth
    before = account(gw, user_id)
    marker = tag()

    proxy.cut()
    # cold: the key itself must be looked up; warm: auth is cached, the reservation is not.
    for key in (cold_key, warm_key):
        for stream in (False, True):
            r = _chat(gw, key, marker, stream=stream)
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/json")
            body = r.json()
            assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
            assert (body["error"]["type"], body["error"]["code"]) == ("api_error", "store_unavailable")
            assert "Traceback" not in r.text
    assert provider_saw(fake_provider, marker) == []

    proxy.restore()
    assert _wait_until_served(gw, warm_key).status_code == 200
    assert _wait_until_served(gw, cold_key).status_code == 200
    after = account(gw, user_id)
    assert after["reserved"] == 0
    assert len(charges(gw, warm_key)) == 2  # the calls before and after; none while it was down
    assert after["balance"] < before["balance"]


async def test_a_settlement_the_store_cannot_take_is_journaled_and_lands_exactly_once(
    gw: Gateway, proxy: TcpProxy, fake_provider: FakeProvider, database_back: None
) -> None:
    user_id, key = gw.new_user(1)
    first = _chat(gw, key, tag())
    assert first.status_code == 200
    journal = gw.data_dir / "journal"
    marker = tag()
    content = f"{marker} one two three"

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_chat, gw, key, content, model="slow")
        # The provider sees the call only after the hold is in place; it answers 1.5 s later.
        deadline = time.monotonic() + 10
        while not provider_saw(fake_provider, marker):
            assert time.monotonic() < deadline, "the slow call never reached the provider"
            time.sleep(0.02)
        assert account(gw, user_id)["reserved"] > 0
        proxy.cut()
        r = pending.result(timeout=30)

    # The caller got its answer, and the price of it, although the store was gone.
    assert r.status_code == 200, r.text
    request_id = r.headers["x-request-id"]
    cost = expected_cost(provider_prompt_tokens([{"role": "user", "content": content}]), 5)
    assert Decimal(r.headers["x-request-cost"]) == cost
    assert decimal_json(r)["usage"]["completion_tokens"] == 5
    assert [p.name for p in journal.glob("*.json")] == [f"{request_id}.json"]
    entry = json.loads((journal / f"{request_id}.json").read_text())
    assert (entry["request_id"], entry["user_id"], Decimal(entry["cost"])) == (request_id, user_id, cost)

    proxy.restore()
    # The replayer runs every 5 s.
    deadline = time.monotonic() + 20
    while any(journal.glob("*.json")):
        assert time.monotonic() < deadline, "the journaled settlement was never replayed"
        time.sleep(0.2)

    charged = charges(gw, key)
    assert len(charged) == 2
    assert charged[request_id].amount == -cost
    acct = account(gw, user_id)
    assert acct["reserved"] == 0
    assert acct["balance"] == 1 - Decimal(first.headers["x-request-cost"]) - cost
    assert acct["balance"] == sum(row.amount for row in ledger(gw, key))
    assert await audit(gw) == []


async def test_a_client_that_leaves_while_its_charge_is_being_written_still_pays(
    gw: Gateway, proxy: TcpProxy, database_back: None
) -> None:
    """The stream is over and the settlement is on its way to a slow database when the client
    hangs up (having read the usage chunk, before [DONE]): the charge must still be written."""
    user_id, key = gw.new_user(1)
    content = f"{tag()} one two"
    proxy.delay = 0.5  # every database round trip now takes half a second
    body = {
        "model": "five",
        "messages": [{"role": "user", "content": content}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", gw.v1 + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as r:
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if '"usage":{' in line:
                break  # everything has arrived; leave without waiting for [DONE]
        else:
            pytest.fail("no usage chunk")
    proxy.delay = 0.0
    cost = expected_cost(provider_prompt_tokens(body["messages"]), 5)
    deadline = time.monotonic() + 10
    while (acct := account(gw, user_id))["reserved"] != 0:
        assert time.monotonic() < deadline, f"the hold was never settled: {acct}"
        time.sleep(0.1)
    assert charges(gw, key)[request_id].amount == -cost
    assert acct["balance"] == 1 - cost
