"""Automatic top-ups in the store, every backend: one payment in flight, credit once, three strikes.

The claim is decided in one statement under the rule's row lock, so 20 concurrent settles that
all see the balance below the threshold start exactly one payment.
"""

from __future__ import annotations

import asyncio
import secrets
from decimal import Decimal

from app.store.base import Store
from tests.store.test_contract import Backend, backend  # noqa: F401 - the parametrised fixture

DECLINED = "card_declined: Your card was declined."


async def _user_with_card(store: Store, balance: str = "10") -> str:
    uid = f"user-{secrets.token_hex(6)}"
    await store.ensure_user(uid, Decimal(balance))
    await store.save_payment_method(user_id=uid, customer=f"cus_{uid}", payment_method=f"pm_{uid}")
    return uid


async def _spend(store: Store, uid: str, amount: str) -> None:
    await store.credit(user_id=uid, amount=-Decimal(amount), description="spent", idempotency_key=None)


async def _claim(store: Store, uid: str, stale_seconds: int = 600):  # type: ignore[no-untyped-def]
    return await store.auto_topup_claim(
        user_id=uid, attempt=f"atu_{secrets.token_hex(8)}", stale_seconds=stale_seconds
    )


async def test_a_rule_needs_a_saved_card_and_shows_what_it_is(backend: Backend) -> None:  # noqa: F811
    store = backend.store
    bare = f"user-{secrets.token_hex(6)}"
    await store.ensure_user(bare, Decimal(1))
    assert await store.set_auto_topup(user_id=bare, threshold=Decimal(5), amount=Decimal(20)) is False
    assert await store.get_auto_topup(bare) is None and await store.saved_card(bare) is None
    uid = await _user_with_card(store)
    assert (await store.saved_card(uid)).customer == f"cus_{uid}"  # type: ignore[union-attr]
    await store.save_payment_method(user_id=uid, customer=f"cus_{uid}", payment_method="pm_newer")
    assert (await store.saved_card(uid)).payment_method == "pm_newer"  # type: ignore[union-attr]
    assert await store.set_auto_topup(user_id=uid, threshold=Decimal("5.5"), amount=Decimal(20))
    rule = await store.get_auto_topup(uid)
    assert rule is not None
    assert (rule.threshold, rule.amount, rule.enabled, rule.failures, rule.in_flight) == (
        Decimal("5.5"), Decimal(20), True, 0, False,
    )  # fmt: skip
    assert await store.delete_auto_topup(uid) is True and await store.delete_auto_topup(uid) is False
    assert await store.get_auto_topup(uid) is None
    assert await _claim(store, uid) is None


async def test_20_concurrent_claims_below_the_threshold_start_exactly_one_payment(backend: Backend) -> None:  # noqa: F811
    store = backend.store
    uid = await _user_with_card(store, balance="10")
    assert await store.set_auto_topup(user_id=uid, threshold=Decimal(5), amount=Decimal(20))
    assert await _claim(store, uid) is None  # 10 is not below 5
    await _spend(store, uid, "6")
    claims = await asyncio.gather(*(_claim(store, uid) for _ in range(20)))
    started = [c for c in claims if c is not None]
    assert len(started) == 1
    (claim,) = started
    assert (claim.amount, claim.customer, claim.payment_method) == (Decimal(20), f"cus_{uid}", f"pm_{uid}")
    assert (await store.get_auto_topup(uid)).in_flight  # type: ignore[union-attr]
    assert await _claim(store, uid) is None  # still in flight
    # Stripe's answer and its webhook (redelivered) all report the success: one credit.
    results = await asyncio.gather(
        store.auto_topup_succeeded(
            attempt=claim.attempt, payment_intent=f"pi_{uid}", amount=Decimal(20), event_id=None,
            event_type="payment_intent.create",
        ),
        *(
            store.auto_topup_succeeded(
                attempt=claim.attempt, payment_intent=f"pi_{uid}", amount=Decimal(20), event_id=f"evt_{uid}",
                event_type="payment_intent.succeeded",
            )
            for _ in range(5)
        ),
    )  # fmt: skip
    assert sorted(r.status for r in results) == ["credited"] + ["duplicate"] * 5
    user = await store.get_user(uid)
    assert user is not None and user.balance == Decimal(24)
    kinds = [(t.kind, t.amount) for t in await store.transactions(uid, limit=10, offset=0)]
    assert [amount for _, amount in kinds] == [20, -6, 10]  # the top-up, once
    rule = await store.get_auto_topup(uid)
    assert rule is not None and not rule.in_flight and rule.failures == 0
    # A refund of the automatic top-up finds its payment like a Checkout's.
    refund = await store.payment_reverse(
        payment_intent=f"pi_{uid}", amount=Decimal(20), cumulative=True, event_id=f"evt_{uid}_refund",
        event_type="charge.refunded",
    )  # fmt: skip
    assert (refund.status, refund.taken, refund.balance) == ("applied", Decimal(20), Decimal(4))


async def test_three_failures_in_a_row_switch_it_off_and_each_counts_once(backend: Backend) -> None:  # noqa: F811
    store = backend.store
    uid = await _user_with_card(store, balance="4")
    assert await store.set_auto_topup(user_id=uid, threshold=Decimal(5), amount=Decimal(10))
    for n in (1, 2, 3):
        claim = await _claim(store, uid)
        assert claim is not None
        results = await asyncio.gather(
            *(
                store.auto_topup_failed(
                    attempt=claim.attempt, payment_intent=f"pi_{uid}_{n}", error=DECLINED,
                    event_id=event, event_type="payment_intent.payment_failed", max_failures=3,
                )
                for event in (None, f"evt_{uid}_{n}", f"evt_{uid}_{n}", f"evt_{uid}_{n}_other")
            )
        )  # fmt: skip
        assert sorted(r.status for r in results) == ["counted"] + ["duplicate"] * 3
        (counted,) = [r for r in results if r.status == "counted"]
        assert (counted.failures, counted.enabled) == (n, n < 3)
    rule = await store.get_auto_topup(uid)
    assert rule is not None
    assert (rule.enabled, rule.failures, rule.last_error) == (
        False,
        3,
        "card_declined: Your card was declined.",
    )
    assert await _claim(store, uid) is None  # off
    # A success reported late for a failed attempt still credits (the money was taken) ...
    late = await store.auto_topup_succeeded(
        attempt=claim.attempt, payment_intent=f"pi_{uid}_3", amount=Decimal(10), event_id=f"evt_{uid}_late",
        event_type="payment_intent.succeeded",
    )  # fmt: skip
    assert (late.status, late.balance) == ("credited", Decimal(14))
    # ... and setting the rule again switches it back on from zero failures.
    assert await store.set_auto_topup(user_id=uid, threshold=Decimal(20), amount=Decimal(10))
    rule = await store.get_auto_topup(uid)
    assert rule is not None and (rule.enabled, rule.failures, rule.last_error) == (True, 0, None)
    assert await _claim(store, uid) is not None
    unknown = await store.auto_topup_failed(
        attempt="atu_nobody", payment_intent=None, error="x", event_id=None, event_type="t", max_failures=3
    )
    assert unknown.status == "unknown"


async def test_a_stale_attempt_is_handed_out_again_under_its_own_id(backend: Backend) -> None:  # noqa: F811
    store = backend.store
    uid = await _user_with_card(store, balance="1")
    assert await store.set_auto_topup(user_id=uid, threshold=Decimal(5), amount=Decimal(10))
    first = await _claim(store, uid)
    assert first is not None
    assert await _claim(store, uid, stale_seconds=600) is None
    again = await _claim(store, uid, stale_seconds=0)
    assert again is not None and again.attempt == first.attempt  # Stripe dedupes it by this key
