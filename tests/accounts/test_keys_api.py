"""Self-service keys end to end: budgets, expiry and model lists refuse calls atomically with the hold.

Runs against the embedded store and real Postgres, through the official openai SDK.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import openai
import pytest

from tests.accounts.support import JWT_SECRET, body, call, new_session_user
from tests.billing.support import account, audit, wait_reserved_zero
from tests.conftest import Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider

# Input is free and each output token costs 0.1, so a call with max_tokens=10 holds and costs 1.
PER_CALL = Decimal(1)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_provider: FakeProvider,
    pg_database: str,
) -> Iterator[Gateway]:
    env = {"JWT_SECRET_KEY": JWT_SECRET}
    if request.param == "postgres":
        env |= {"DATABASE_URL": pg_database, "DATABASE_POOL_SIZE": "5"}
    price = {"input_cost_per_token": "0", "output_cost_per_token": "0.1"}
    models = [
        # slow-200: the provider answers after 200 ms, so the calls really are in flight together.
        model_entry("small", "fake+chunks-10+slow-200", fake_provider.base_url, **price),
        model_entry("big", "fake+chunks-10", fake_provider.base_url, **price),
    ]
    gateway = start_gateway(tmp_path_factory.mktemp(f"keys-{request.param}"), models=models, env=env)
    yield gateway
    try:
        assert asyncio.run(audit(gateway)) == []
    finally:
        stop_gateway(gateway)


def _new_key(gw: Gateway, token: str, **spec: object) -> tuple[str, str]:
    r = call(gw, "POST", "/account/keys", token, json={"name": "mine", **spec})
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["key_id"]


async def _chat(gw: Gateway, key: str, model: str = "small") -> tuple[int, str | None]:
    client = gw.async_client(key)
    try:
        await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=10
        )
    except openai.APIStatusError as exc:
        error = exc.body if isinstance(exc.body, dict) else {}
        return exc.status_code, error.get("code")
    finally:
        await client.close()
    return 200, None


def test_20_concurrent_calls_against_a_key_budget_that_covers_5_spend_only_the_budget(gw: Gateway) -> None:
    user_id, token = new_session_user(gw, balance="100")
    key, key_id = _new_key(gw, token, budget={"amount": "5", "period": "day"})

    async def burst() -> list[tuple[int, str | None]]:
        return await asyncio.gather(*(_chat(gw, key) for _ in range(20)))

    results = asyncio.run(burst())
    assert results.count((200, None)) == 5, results
    assert results.count((402, "key_budget_exceeded")) == 15, results
    acct = wait_reserved_zero(gw, user_id)
    assert acct["balance"] == Decimal(100) - 5 * PER_CALL
    (listed,) = body(call(gw, "GET", "/account/keys", token))["keys"]
    assert listed["key_id"] == key_id
    assert listed["budget"] == {"amount": Decimal(5), "period": "day", "spent": Decimal(5)}
    # The session itself is not bound by the key's budget.
    assert asyncio.run(_chat(gw, token)) == (200, None)


def test_an_api_key_may_list_keys_but_not_create_or_revoke_them(gw: Gateway) -> None:
    _, token = new_session_user(gw)
    key, key_id = _new_key(gw, token)
    assert call(gw, "GET", "/account/keys", key).status_code == 200
    created = call(gw, "POST", "/account/keys", key, json={"name": "x"})
    assert created.status_code == 403 and created.json()["error"]["type"] == "permission_error"
    assert call(gw, "DELETE", f"/account/keys/{key_id}", key).status_code == 403
    assert call(gw, "DELETE", f"/account/keys/{key_id}", token).status_code == 200
    assert call(gw, "DELETE", f"/account/keys/{key_id}", token).status_code == 404
    assert asyncio.run(_chat(gw, key))[0] == 401


def test_a_key_outside_its_models_or_past_its_expiry_is_refused(gw: Gateway) -> None:
    user_id, token = new_session_user(gw)
    key, _ = _new_key(gw, token, models=["small"])
    assert asyncio.run(_chat(gw, key, "big")) == (403, "model_not_allowed")
    assert asyncio.run(_chat(gw, key, "small")) == (200, None)
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    expiring, expiring_id = _new_key(gw, token, expires_at=soon)
    assert asyncio.run(_chat(gw, expiring, "big")) == (200, None)
    # The admin sets the same policies for any user's key.
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    r = gw.admin("PUT", f"/admin/users/{user_id}/keys/{expiring_id}", {"expires_at": past})
    assert r.status_code == 200, r.text
    assert asyncio.run(_chat(gw, expiring, "big")) == (401, "key_expired")
    r = gw.admin(
        "PUT", f"/admin/users/{user_id}/keys/{expiring_id}", {"budget": {"amount": "1", "period": "week"}}
    )
    assert r.json()["budget"]["period"] == "week" and r.json()["expires_at"] is None
    assert wait_reserved_zero(gw, user_id)["reserved"] == 0


@pytest.mark.parametrize(
    "spec",
    [
        {"budget": {"amount": "5", "period": "year"}},
        {"budget": {"amount": "-1", "period": "day"}},
        {"budget": {"amount": "0.000000001", "period": "day"}},
        {"budget": "5"},
        {"models": "small"},
        {"models": []},
        {"models": [1]},
        {"expires_at": "tomorrow"},
        {"name": ""},
    ],
)
def test_a_malformed_key_request_is_a_400_in_openais_shape(gw: Gateway, spec: dict[str, object]) -> None:
    _, token = new_session_user(gw)
    r = call(gw, "POST", "/account/keys", token, json=spec)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["param"]


def test_usage_by_day_model_and_key_and_the_ledger_as_csv(gw: Gateway) -> None:
    user_id, token = new_session_user(gw)
    key_a, id_a = _new_key(gw, token)
    key_b, id_b = _new_key(gw, token)
    for credential, model in [(key_a, "small"), (key_a, "big"), (key_b, "big"), (token, "big")]:
        assert asyncio.run(_chat(gw, credential, model)) == (200, None)
    wait_reserved_zero(gw, user_id)

    def usage(group: str, **params: str) -> list[dict[str, object]]:
        r = call(gw, "GET", "/billing/usage", key_a, params={"group_by": group, **params})
        assert r.status_code == 200, r.text
        assert r.json()["currency"] == "USD"
        rows: list[dict[str, object]] = body(r)["rows"]
        return rows

    today = datetime.now(UTC).date()
    (day,) = usage("day")
    assert day["day"] == today.isoformat() and day["requests"] == 4 and day["cost"] == 4 * PER_CALL
    assert day["completion_tokens"] == 40
    by_model = {r["model"]: (r["requests"], r["cost"]) for r in usage("model")}
    assert by_model == {"big": (3, 3 * PER_CALL), "small": (1, PER_CALL)}
    by_key = {r["key_id"]: r["requests"] for r in usage("key")}
    assert by_key == {id_a: 2, id_b: 1, None: 1}
    tomorrow = (today + timedelta(days=1)).isoformat()
    assert usage("day", start=tomorrow, end=(today + timedelta(days=3)).isoformat()) == []
    assert usage("day", start=today.isoformat(), end=tomorrow)[0]["requests"] == 4

    for params in (
        {"group_by": "week"},
        {"start": "yesterday"},
        {"start": tomorrow, "end": today.isoformat()},
    ):
        r = call(gw, "GET", "/billing/usage", key_a, params=params)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text

    r = call(gw, "GET", "/billing/transactions.csv", key_a)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["kind"] for row in rows] == ["charge"] * 4 + ["credit"]
    assert sum(Decimal(row["amount"]) for row in rows) == account(gw, user_id)["balance"]


def test_payments_answer_404_when_stripe_is_not_configured(gw: Gateway) -> None:
    _, token = new_session_user(gw)
    r = call(gw, "POST", "/billing/checkout", token, json={"amount": "10"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "payments_not_configured", r.text
    r = call(gw, "POST", "/billing/stripe/webhook", token, content=b"{}")
    assert r.status_code == 404
    balance = body(call(gw, "GET", "/billing/balance", token))
    assert (balance["debt"], balance["auto_topup"]) == (0, None)
