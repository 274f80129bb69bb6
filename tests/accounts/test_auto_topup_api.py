"""Automatic top-ups end to end: off-session Stripe payments after calls, never on the call's path.

Two gateway processes share one store (the embedded SQLite file, or real Postgres), so concurrent
calls crossing the threshold race across processes; Stripe is the local fake, which answers the
PaymentIntent and also delivers its signed webhook (before or after its answer).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.accounts.support import JWT_SECRET, body, call, new_session_user
from tests.billing.support import audit, ledger, wait_reserved_zero
from tests.conftest import Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider
from tests.fake_stripe import FakeStripe, sign

STRIPE_KEY = "sk_test_fake_auto_0123456789"
WEBHOOK_SECRET = "whsec_test_auto_0123456789abcdef"


@pytest.fixture(scope="module")
def stripe_api() -> Iterator[FakeStripe]:
    fake = FakeStripe(STRIPE_KEY).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gws(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_provider: FakeProvider,
    stripe_api: FakeStripe,
    pg_database: str,
) -> Iterator[tuple[Gateway, Gateway]]:
    tmp = tmp_path_factory.mktemp(f"autotopup-{request.param}")
    env = {
        "JWT_SECRET_KEY": JWT_SECRET,
        "STRIPE_SECRET_KEY": STRIPE_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_SUCCESS_URL": "https://example.test/paid",
        "STRIPE_CANCEL_URL": "https://example.test/cancelled",
        "STRIPE_API_BASE": stripe_api.url,
        "DATA_DIR": str(tmp / "shared-data"),  # both processes on one embedded store
    }
    if request.param == "postgres":
        env |= {"DATABASE_URL": pg_database, "DATABASE_POOL_SIZE": "5"}
    price = {"input_cost_per_token": "0", "output_cost_per_token": "0.1"}  # 1 per call of 10 tokens
    models = [model_entry("m", "fake+chunks-10+slow-100", fake_provider.base_url, **price)]
    first = start_gateway(tmp / "a", models=models, env=env)
    try:
        second = start_gateway(tmp / "b", models=models, env=env)
    except BaseException:
        stop_gateway(first)
        raise
    yield first, second
    try:
        assert asyncio.run(audit(first)) == []
    finally:
        stop_gateway(second)
        stop_gateway(first)


@pytest.fixture
def gw(gws: tuple[Gateway, Gateway], stripe_api: FakeStripe) -> Gateway:
    stripe_api.send_webhooks_to(gws[0].url + "/billing/stripe/webhook", WEBHOOK_SECRET)
    stripe_api.webhook_timing = "after"
    return gws[0]


def _deliver(gw: Gateway, event: dict[str, Any]) -> httpx.Response:
    payload = json.dumps(event).encode()
    headers = {"Stripe-Signature": sign(payload, WEBHOOK_SECRET), "Content-Type": "application/json"}
    return httpx.post(gw.url + "/billing/stripe/webhook", content=payload, headers=headers, timeout=30)


def _card_user(
    gw: Gateway, stripe_api: FakeStripe, *, paid: str = "10", card: str = "ok"
) -> tuple[str, str, str]:
    """A signed-in user who paid `paid` through Checkout, which saved a card; (user, token, customer)."""
    user_id, token = new_session_user(gw, balance="0")
    r = call(gw, "POST", "/billing/checkout", token, json={"amount": paid})
    assert r.status_code == 200, r.text
    event = stripe_api.pay(r.json()["session_id"], card=card)
    assert _deliver(gw, event).json()["action"] == "credited"
    customer: str = event["data"]["object"]["customer"]
    assert customer.startswith("cus_")
    return user_id, token, customer


def _balance(gw: Gateway, token: str) -> dict[str, Any]:
    r = call(gw, "GET", "/billing/balance", token)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = body(r)
    return out


def _put(gw: Gateway, token: str, threshold: object, amount: object) -> httpx.Response:
    return call(gw, "PUT", "/billing/auto-topup", token, json={"threshold": threshold, "amount": amount})


def _wait(what: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.05)


async def _calls(urls: list[str], token: str, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=30) as http:

        async def one(i: int) -> int:
            r = await http.post(
                urls[i % len(urls)] + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {token}"},
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10},
            )
            return r.status_code

        return await asyncio.gather(*(one(i) for i in range(n)))


def _topups(gw: Gateway, token: str) -> list[Decimal]:
    return [row.amount for row in ledger(gw, token) if "auto top-up" in row.description]


def test_the_rule_needs_a_session_a_saved_card_and_valid_amounts(gw: Gateway, stripe_api: FakeStripe) -> None:
    _, bare = new_session_user(gw, balance="5")
    r = _put(gw, bare, "5", "20")
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_saved_payment_method", r.text
    user_id, token, customer = _card_user(gw, stripe_api)
    bad = [("0", "20", "threshold"), ("x", "20", "threshold"), (None, "20", "threshold"),
           ("5", "0.5", "amount"), ("5", "1.001", "amount"), ("5", True, "amount")]  # fmt: skip
    for threshold, amount, param in bad:
        r = _put(gw, token, threshold, amount)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (threshold, amount, r.text)
    key = call(gw, "POST", "/account/keys", token, json={"name": "program"}).json()["key"]
    r = _put(gw, key, "5", "20")
    assert r.status_code == 403, r.text  # an API key may not charge the card
    assert call(gw, "DELETE", "/billing/auto-topup", key).status_code == 403
    assert _balance(gw, key)["auto_topup"] is None  # but may read the balance
    r = _put(gw, token, "5", "20")
    assert r.status_code == 200, r.text
    expected = {
        "threshold": 5,
        "amount": 20,
        "enabled": True,
        "failures": 0,
        "last_error": None,
        "in_flight": False,
    }
    assert body(r)["auto_topup"] == expected
    assert _balance(gw, key)["auto_topup"] == expected
    # The next Checkout saves its card on the same Stripe customer.
    assert call(gw, "POST", "/billing/checkout", token, json={"amount": "5"}).status_code == 200
    assert stripe_api.requests[-1]["form"]["customer"] == customer
    r = call(gw, "DELETE", "/billing/auto-topup", token)
    assert r.status_code == 200 and r.json() == {"user_id": user_id, "auto_topup": None, "deleted": True}
    assert _balance(gw, token)["auto_topup"] is None


def test_20_concurrent_calls_on_two_processes_crossing_the_threshold_start_exactly_one_payment(
    gws: tuple[Gateway, Gateway], gw: Gateway, stripe_api: FakeStripe
) -> None:
    user_id, token, customer = _card_user(gw, stripe_api, paid="10")
    assert _put(gw, token, "5", "50").status_code == 200
    statuses = asyncio.run(_calls([g.url for g in gws], token, 20))
    assert set(statuses) <= {200, 402} and statuses.count(200) >= 10
    wait_reserved_zero(gw, user_id)
    _wait(lambda: _topups(gw, token) == [50] and not _balance(gw, token)["auto_topup"]["in_flight"])
    time.sleep(0.5)  # a second payment would have been asked for by now
    asked = stripe_api.intent_requests(customer)
    assert len(asked) == 1
    form = asked[0]["form"]
    assert (form["amount"], form["currency"], form["off_session"], form["confirm"]) == (
        "5000",
        "usd",
        "true",
        "true",
    )
    assert form["metadata"]["user_id"] == user_id and asked[0]["headers"]["Idempotency-Key"]
    bal = _balance(gw, token)
    assert bal["balance"] == 10 + 50 - statuses.count(200)
    assert _topups(gw, token) == [50]
    assert sum(row.amount for row in ledger(gw, token)) == bal["balance"]


@pytest.mark.parametrize("timing", ["before", "after"])
def test_a_success_credits_once_when_the_answer_and_the_webhook_both_report_it(
    gw: Gateway, stripe_api: FakeStripe, timing: str
) -> None:
    stripe_api.webhook_timing = timing  # the webhook lands before Stripe's answer, or after it
    user_id, token, customer = _card_user(gw, stripe_api, paid="10")
    assert _put(gw, token, "9.5", "20").status_code == 200
    assert asyncio.run(_calls([gw.url], token, 1)) == [200]  # 10 -> 9: below 9.5
    _wait(lambda: _topups(gw, token) == [20])
    (event,) = [e for e in stripe_api.events if e["data"]["object"]["customer"] == customer]
    assert event["type"] == "payment_intent.succeeded"
    _wait(lambda: stripe_api.deliveries_pending() == 0)

    async def redeliver() -> list[str]:
        async with httpx.AsyncClient(timeout=30) as http:
            payload = json.dumps(event).encode()
            headers = {"Stripe-Signature": sign(payload, WEBHOOK_SECRET)}
            url = gw.url + "/billing/stripe/webhook"
            rs = await asyncio.gather(*(http.post(url, content=payload, headers=headers) for _ in range(5)))
            return [r.json()["action"] for r in rs]

    assert asyncio.run(redeliver()) == ["duplicate"] * 5
    bal = _balance(gw, token)
    assert (bal["balance"], bal["auto_topup"]["failures"], bal["auto_topup"]["in_flight"]) == (29, 0, False)
    assert _topups(gw, token) == [20]
    assert len(stripe_api.intent_requests(customer)) == 1
    wait_reserved_zero(gw, user_id)


def test_three_declines_in_a_row_switch_it_off_and_the_balance_says_so(
    gw: Gateway, stripe_api: FakeStripe
) -> None:
    user_id, token, customer = _card_user(gw, stripe_api, paid="10", card="decline")
    assert _put(gw, token, "9.5", "20").status_code == 200
    for n in (1, 2, 3):
        assert asyncio.run(_calls([gw.url], token, 1)) == [200]  # each call leaves the balance below 9.5
        _wait(lambda n=n: _balance(gw, token)["auto_topup"]["failures"] == n)  # type: ignore[misc]
    assert asyncio.run(_calls([gw.url], token, 2)) == [200, 200]
    wait_reserved_zero(gw, user_id)
    time.sleep(0.5)  # the declines' webhooks arrive too, and count nothing more
    rule = _balance(gw, token)["auto_topup"]
    assert (rule["enabled"], rule["failures"], rule["in_flight"]) == (False, 3, False)
    assert rule["last_error"] == "insufficient_funds: Your card has insufficient funds."
    assert len(stripe_api.intent_requests(customer)) == 3  # none once it is off
    assert len([e for e in stripe_api.events if e["data"]["object"]["customer"] == customer]) == 3
    assert _balance(gw, token)["balance"] == 5 and _topups(gw, token) == []
    # The user fixes the card and sets the rule again: back on, from zero failures.
    (method,) = stripe_api.customers[customer]
    stripe_api.set_card(method, "ok")
    r = _put(gw, token, "9.5", "20")
    assert body(r)["auto_topup"]["enabled"] is True and body(r)["auto_topup"]["failures"] == 0
    assert asyncio.run(_calls([gw.url], token, 1)) == [200]
    _wait(lambda: _topups(gw, token) == [20])
    assert _balance(gw, token)["balance"] == 24


def test_a_checkout_payment_intent_event_credits_nothing_more(gw: Gateway, stripe_api: FakeStripe) -> None:
    _, token, customer = _card_user(gw, stripe_api, paid="10")
    (intent,) = [i for i in stripe_api.intents.values() if i["customer"] == customer]
    # Stripe also sends payment_intent.succeeded for the Checkout's own payment: the session credited it.
    r = _deliver(gw, stripe_api.event("payment_intent.succeeded", intent))
    assert r.status_code == 200 and r.json()["action"] == "ignored"
    assert _balance(gw, token)["balance"] == 10
