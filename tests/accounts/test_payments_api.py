"""Top-ups through Stripe end to end: Checkout, the signed webhook, refunds, disputes and debt.

Stripe is a local fake speaking its HTTP API (reached through STRIPE_API_BASE); events are signed
with Stripe's scheme. Runs against the embedded store and real Postgres.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.accounts.support import JWT_SECRET, body, call, new_session_user
from tests.billing.support import account, audit, ledger, wait_reserved_zero
from tests.conftest import Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider
from tests.fake_stripe import FakeStripe, sign

STRIPE_KEY = "sk_test_fake_0123456789"
WEBHOOK_SECRET = "whsec_test_0123456789abcdef"


@pytest.fixture(scope="module")
def stripe_api() -> Iterator[FakeStripe]:
    fake = FakeStripe(STRIPE_KEY).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_provider: FakeProvider,
    stripe_api: FakeStripe,
    pg_database: str,
) -> Iterator[Gateway]:
    env = {
        "JWT_SECRET_KEY": JWT_SECRET,
        "STRIPE_SECRET_KEY": STRIPE_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_SUCCESS_URL": "https://example.test/paid",
        "STRIPE_CANCEL_URL": "https://example.test/cancelled",
        "STRIPE_API_BASE": stripe_api.url,
    }
    if request.param == "postgres":
        env |= {"DATABASE_URL": pg_database, "DATABASE_POOL_SIZE": "5"}
    # Each call with max_tokens=10 costs exactly 1.
    price = {"input_cost_per_token": "0", "output_cost_per_token": "0.1"}
    models = [model_entry("m", "fake+chunks-10", fake_provider.base_url, **price)]
    gateway = start_gateway(tmp_path_factory.mktemp(f"pay-{request.param}"), models=models, env=env)
    yield gateway
    try:
        assert asyncio.run(audit(gateway)) == []
    finally:
        stop_gateway(gateway)


def _deliver(gw: Gateway, event: dict[str, Any], *, secret: str = WEBHOOK_SECRET) -> httpx.Response:
    payload = json.dumps(event).encode()
    return httpx.post(
        gw.url + "/billing/stripe/webhook",
        content=payload,
        headers={"Stripe-Signature": sign(payload, secret), "Content-Type": "application/json"},
        timeout=30,
    )


def _checkout(gw: Gateway, token: str, amount: str) -> str:
    r = call(gw, "POST", "/billing/checkout", token, json={"amount": amount})
    assert r.status_code == 200, r.text
    assert r.json()["url"].startswith("https://checkout.stripe.com/")
    session_id: str = r.json()["session_id"]
    return session_id


def _balance(gw: Gateway, token: str) -> dict[str, Any]:
    r = call(gw, "GET", "/billing/balance", token)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = body(r)
    return out


def _chat(gw: Gateway, token: str) -> httpx.Response:
    return call(
        gw,
        "POST",
        "/v1/chat/completions",
        token,
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10},
    )


def test_checkout_creates_a_stripe_session_for_the_caller(gw: Gateway, stripe_api: FakeStripe) -> None:
    user_id, token = new_session_user(gw, balance="0")
    session_id = _checkout(gw, token, "25.50")
    sent = [r for r in stripe_api.requests if r["path"] == "/v1/checkout/sessions"][-1]
    assert sent["content_type"] == "application/x-www-form-urlencoded"
    assert sent["headers"]["Authorization"] == f"Bearer {STRIPE_KEY}"
    form = sent["form"]
    assert form["mode"] == "payment" and form["client_reference_id"] == user_id
    assert form["metadata"] == {"user_id": user_id}
    assert form["line_items"][0]["price_data"]["unit_amount"] == "2550"
    assert form["line_items"][0]["price_data"]["currency"] == "usd"
    assert form["success_url"] == "https://example.test/paid"
    assert stripe_api.sessions[session_id]["amount_total"] == 2550
    # Nothing is credited before Stripe says it was paid.
    assert _balance(gw, token)["balance"] == 0


@pytest.mark.parametrize("amount", ["0.5", "10.001", "abc", None, "100000", True])
def test_a_bad_checkout_amount_is_a_400(gw: Gateway, amount: object) -> None:
    _, token = new_session_user(gw, balance="0")
    r = call(gw, "POST", "/billing/checkout", token, json={"amount": amount})
    assert r.status_code == 400 and r.json()["error"]["param"] == "amount", r.text


def test_a_paid_checkout_is_credited_once_however_often_and_concurrently_it_is_delivered(
    gw: Gateway, stripe_api: FakeStripe
) -> None:
    user_id, token = new_session_user(gw, balance="0")
    session_id = _checkout(gw, token, "20")
    event = stripe_api.pay(session_id)
    # A second event about the same session (as Stripe may send for async payments).
    other = stripe_api.event("checkout.session.async_payment_succeeded", stripe_api.sessions[session_id])

    async def storm() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as http:

            async def one(e: dict[str, Any]) -> httpx.Response:
                payload = json.dumps(e).encode()
                return await http.post(
                    gw.url + "/billing/stripe/webhook",
                    content=payload,
                    headers={"Stripe-Signature": sign(payload, WEBHOOK_SECRET)},
                )

            return await asyncio.gather(*(one(event) for _ in range(10)), *(one(other) for _ in range(5)))

    responses = asyncio.run(storm())
    assert [r.status_code for r in responses] == [200] * 15
    actions = [r.json()["action"] for r in responses]
    assert actions.count("credited") == 1 and actions.count("duplicate") == 14
    assert _deliver(gw, event).json()["action"] == "duplicate"  # and a redelivery much later
    assert _balance(gw, token)["balance"] == Decimal(20)
    assert [row.kind for row in ledger(gw, token)] == ["credit"]
    assert account(gw, user_id)["balance"] == Decimal(20)


def test_a_bad_or_missing_signature_is_a_400_and_changes_nothing(gw: Gateway, stripe_api: FakeStripe) -> None:
    _, token = new_session_user(gw, balance="0")
    event = stripe_api.pay(_checkout(gw, token, "5"))
    payload = json.dumps(event).encode()
    attempts = [
        {},  # no signature
        {"Stripe-Signature": sign(payload, "whsec_someone_else")},
        {"Stripe-Signature": sign(payload, WEBHOOK_SECRET, timestamp=int(time.time()) - 3600)},  # replayed
        {"Stripe-Signature": "t=1,v1=deadbeef"},
        {"Stripe-Signature": "garbage"},
    ]
    for headers in attempts:
        r = httpx.post(gw.url + "/billing/stripe/webhook", content=payload, headers=headers, timeout=30)
        assert r.status_code == 400, (headers, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert WEBHOOK_SECRET not in r.text
    # A validly signed header for another body does not carry over to a tampered one.
    tampered = payload.replace(b'"amount_total": 500', b'"amount_total": 50000')
    assert tampered != payload
    r = httpx.post(
        gw.url + "/billing/stripe/webhook",
        content=tampered,
        headers={"Stripe-Signature": sign(payload, WEBHOOK_SECRET)},
        timeout=30,
    )
    assert r.status_code == 400
    assert _balance(gw, token)["balance"] == 0
    assert _deliver(gw, event).json()["action"] == "credited"
    assert _balance(gw, token)["balance"] == Decimal(5)


def test_a_refund_takes_back_what_is_left_and_the_rest_is_debt_that_blocks_calls_until_paid(
    gw: Gateway, stripe_api: FakeStripe
) -> None:
    user_id, token = new_session_user(gw, balance="0")
    session_id = _checkout(gw, token, "10")
    assert _deliver(gw, stripe_api.pay(session_id)).json()["action"] == "credited"
    for _ in range(6):
        assert _chat(gw, token).status_code == 200
    wait_reserved_zero(gw, user_id)
    refund = stripe_api.refund(session_id, 1000)
    assert _deliver(gw, refund).json()["action"] == "reversed"
    assert _deliver(gw, refund).json()["action"] == "duplicate"
    bal = _balance(gw, token)
    assert (bal["balance"], bal["debt"]) == (Decimal(0), Decimal(6))
    refused = _chat(gw, token)
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "outstanding_debt", refused.text
    # The next top-up pays the debt first.
    second = _checkout(gw, token, "8")
    assert _deliver(gw, stripe_api.pay(second)).json()["action"] == "credited"
    bal = _balance(gw, token)
    assert (bal["balance"], bal["debt"]) == (Decimal(2), Decimal(0))
    assert _chat(gw, token).status_code == 200
    wait_reserved_zero(gw, user_id)
    rows = ledger(gw, token)
    assert [row.amount for row in rows] == [-1, -6, 8, -4] + [-1] * 6 + [10]
    assert "debt" in rows[1].description and "refunded" in rows[3].description
    assert sum(row.amount for row in rows) == account(gw, user_id)["balance"]


def test_a_dispute_takes_the_credit_back_once(gw: Gateway, stripe_api: FakeStripe) -> None:
    _, token = new_session_user(gw, balance="0")
    session_id = _checkout(gw, token, "7")
    assert _deliver(gw, stripe_api.pay(session_id)).json()["action"] == "credited"
    assert _deliver(gw, stripe_api.refund(session_id, 200)).json()["action"] == "reversed"  # 2 of 7 refunded
    dispute = stripe_api.dispute(session_id, 700)
    assert _deliver(gw, dispute).json()["action"] == "reversed"
    assert _deliver(gw, dispute).json()["action"] == "duplicate"
    bal = _balance(gw, token)
    # Refund and dispute together never take back more than was paid.
    assert (bal["balance"], bal["debt"]) == (Decimal(0), Decimal(0))
    # An event about a payment the gateway never saw, or of a type it does not use, is acknowledged.
    other = stripe_api.event("customer.created", {"id": "cus_test_1", "object": "customer"})
    assert _deliver(gw, other).json()["action"] == "ignored"
