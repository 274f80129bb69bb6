"""Keys with budgets, expiry and model lists, debt and usage rollups: one contract, every backend.

The key's policy is checked and held in the same atomic statement as the balance, so 20
concurrent calls against a budget that covers 5 spend exactly the budget, never more.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from app.auth.keys import new_key
from app.store.base import KeyPolicy, Reservation, Store
from tests.store.test_contract import Backend, backend  # noqa: F401 - the parametrised fixture

TODAY = datetime.now(UTC).date()
TOMORROW = TODAY + timedelta(days=1)


def _rid() -> str:
    return f"req-{secrets.token_hex(8)}"


async def _user_with_key(
    store: Store, balance: str = "100", policy: KeyPolicy | None = None
) -> tuple[str, str]:
    uid = f"user-{secrets.token_hex(6)}"
    await store.ensure_user(uid, Decimal(balance))
    _, key_id, key_hash = new_key()
    await store.create_api_key(user_id=uid, key_id=key_id, key_hash=key_hash, name="k")
    if policy is not None:
        assert await store.set_key_policy(user_id=uid, key_id=key_id, policy=policy)
    return uid, key_id


async def _reserve(
    store: Store, uid: str, key_id: str | None, *, model: str = "m", rid: str | None = None, cost: str = "1"
) -> Reservation:
    # A fixed-size call: prompt cost `cost`, no output tokens.
    return await store.reserve(
        user_id=uid,
        request_id=rid or _rid(),
        prompt_cost=Decimal(cost),
        output_price=Decimal(0),
        max_tokens=None,
        model_max_output=None,
        ttl_seconds=60,
        model=model,
        key_id=key_id,
    )


async def _settle(store: Store, uid: str, rid: str, cost: str, *, model: str = "m") -> Decimal:
    s = await store.settle(
        user_id=uid,
        request_id=rid,
        cost=Decimal(cost),
        model=model,
        prompt_tokens=10,
        completion_tokens=5,
        description="call",
    )
    return s.charged


async def _call(store: Store, uid: str, key_id: str | None, cost: str = "1", *, model: str = "m") -> str:
    rid = _rid()
    r = await _reserve(store, uid, key_id, rid=rid, cost=cost, model=model)
    if r.status == "ok":
        await _settle(store, uid, rid, cost, model=model)
    return r.status


async def test_20_concurrent_calls_against_a_key_budget_that_covers_5_spend_exactly_it(
    backend: Backend,  # noqa: F811
) -> None:
    store = backend.store
    uid, key_id = await _user_with_key(store, policy=KeyPolicy(budget=Decimal(5), period="day"))
    statuses = await asyncio.gather(*(_call(store, uid, key_id) for _ in range(20)))
    assert statuses.count("ok") == 5
    assert set(statuses) == {"ok", "key_budget"}
    user = await store.get_user(uid)
    assert user is not None and (user.balance, user.reserved) == (Decimal(95), Decimal(0))
    (key,) = await store.list_api_keys(uid)
    assert (key.budget, key.budget_period, key.budget_spent) == (Decimal(5), "day", Decimal(5))
    # The user's other credentials are not bound by this key's budget.
    assert await _call(store, uid, None) == "ok"


async def test_a_charge_never_takes_a_key_past_its_budget(backend: Backend) -> None:  # noqa: F811
    store = backend.store
    uid, key_id = await _user_with_key(store, policy=KeyPolicy(budget=Decimal(2), period="total"))
    rid = _rid()
    assert (await _reserve(store, uid, key_id, rid=rid, cost="1.5")).status == "ok"
    # The provider reported more than was held: the key still spends at most its budget.
    assert await _settle(store, uid, rid, "3") == Decimal(2)
    assert (await _reserve(store, uid, key_id, cost="0.01")).status == "key_budget"


async def test_a_budget_resets_on_the_next_period(backend: Backend) -> None:  # noqa: F811
    store = backend.store
    uid, key_id = await _user_with_key(store, policy=KeyPolicy(budget=Decimal(1), period="month"))
    assert await _call(store, uid, key_id) == "ok"
    assert await _call(store, uid, key_id) == "key_budget"
    # Pretend the spending happened last period.
    if backend.name == "sqlite":
        await backend.execute(f"update api_keys set budget_window = '2000-01-01' where id = '{key_id}'")
    else:
        await backend.execute(
            f"update api_keys set budget_window = budget_window - interval '40 days' where id = '{key_id}'"
        )
    (key,) = await store.list_api_keys(uid)
    assert key.budget_spent == 0
    assert await _call(store, uid, key_id) == "ok"


async def test_the_budget_caps_how_many_tokens_a_call_may_generate(backend: Backend) -> None:  # noqa: F811
    store = backend.store
    uid, key_id = await _user_with_key(store, policy=KeyPolicy(budget=Decimal("0.5"), period="week"))
    r = await store.reserve(
        user_id=uid,
        request_id=_rid(),
        prompt_cost=Decimal("0.1"),
        output_price=Decimal("0.001"),
        max_tokens=None,
        model_max_output=4096,
        ttl_seconds=60,
        model="m",
        key_id=key_id,
    )
    assert (r.status, r.max_tokens, r.hold) == ("ok", 400, Decimal("0.5"))
    refused = await store.reserve(
        user_id=uid,
        request_id=_rid(),
        prompt_cost=Decimal("0"),
        output_price=Decimal("0.001"),
        max_tokens=10,
        model_max_output=4096,
        ttl_seconds=60,
        model="m",
        key_id=key_id,
    )
    assert refused.status == "key_budget"


async def test_expired_revoked_and_model_restricted_keys_are_refused_atomically(
    backend: Backend,  # noqa: F811
) -> None:
    store = backend.store
    past = datetime.now(UTC) - timedelta(seconds=1)
    uid, expired = await _user_with_key(store, policy=KeyPolicy(expires_at=past))
    assert (await _reserve(store, uid, expired)).status == "key_expired"
    uid2, limited = await _user_with_key(store, policy=KeyPolicy(models=("small", "tiny")))
    assert (await _reserve(store, uid2, limited, model="big")).status == "model_not_allowed"
    assert await _call(store, uid2, limited, model="small") == "ok"
    assert await store.revoke_api_key(user_id=uid2, key_id=limited)
    assert (await _reserve(store, uid2, limited, model="small")).status == "key_revoked"
    # Someone else's key is no key of this user's.
    assert (await _reserve(store, uid, limited, model="small")).status == "key_revoked"
    for u in (uid, uid2):
        user = await store.get_user(u)
        assert user is not None and user.reserved == 0


async def test_released_and_swept_holds_give_the_key_its_budget_back(backend: Backend) -> None:  # noqa: F811
    store = backend.store
    uid, key_id = await _user_with_key(store, policy=KeyPolicy(budget=Decimal(1), period="total"))
    rid = _rid()
    assert (await _reserve(store, uid, key_id, rid=rid)).status == "ok"
    assert (await _reserve(store, uid, key_id)).status == "key_budget"
    assert await store.release(user_id=uid, request_id=rid)
    rid2 = _rid()
    assert (await _reserve(store, uid, key_id, rid=rid2)).status == "ok"
    if backend.name == "sqlite":
        await backend.execute(f"update reservations set expires_at = 0 where request_id = '{rid2}'")
    else:
        await backend.execute(
            f"update reservations set expires_at = now() - interval '1 s' where request_id = '{rid2}'"
        )
    assert await store.sweep_expired() == 1
    # A late settle of the swept call still counts against the key, via the call record.
    assert await _settle(store, uid, rid2, "0.25") == Decimal("0.25")
    (key,) = await store.list_api_keys(uid)
    assert key.budget_spent == Decimal("0.25")
    assert (await _reserve(store, uid, key_id, cost="0.75")).status == "ok"
    assert (await _reserve(store, uid, key_id, cost="0.01")).status == "key_budget"


async def test_a_debt_blocks_calls(backend: Backend) -> None:  # noqa: F811
    store = backend.store
    uid, key_id = await _user_with_key(store)
    await backend.execute(f"update users set debt = '1.5' where id = '{uid}'")
    assert (await _reserve(store, uid, key_id)).status == "debt"
    assert (await _reserve(store, uid, None)).status == "debt"
    user = await store.get_user(uid)
    assert user is not None and user.debt == Decimal("1.5")
    await backend.execute(f"update users set debt = '0' where id = '{uid}'")


async def test_usage_rollups_follow_every_charge_by_day_model_and_key(backend: Backend) -> None:  # noqa: F811
    store = backend.store
    uid, key_a = await _user_with_key(store)
    _, key_b, key_hash = new_key()
    await store.create_api_key(user_id=uid, key_id=key_b, key_hash=key_hash, name="b")
    for key, model, cost in [
        (key_a, "m1", "0.1"),
        (key_a, "m2", "0.2"),
        (key_b, "m1", "0.3"),
        (None, "m1", "0.4"),
    ]:
        assert await _call(store, uid, key, cost, model=model) == "ok"
    # A released call and a duplicate settle add nothing.
    rid = _rid()
    assert (await _reserve(store, uid, key_a, rid=rid)).status == "ok"
    await store.release(user_id=uid, request_id=rid)
    rid = _rid()
    assert (await _reserve(store, uid, key_a, rid=rid, cost="0.5")).status == "ok"
    await _settle(store, uid, rid, "0.5")
    await _settle(store, uid, rid, "0.5")

    by_day = await store.usage(uid, start=TODAY, end=TOMORROW, group_by="day")
    assert [(r.group, r.requests, r.prompt_tokens, r.completion_tokens, r.cost) for r in by_day] == [
        (TODAY.isoformat(), 5, 50, 25, Decimal("1.5"))
    ]
    by_model = await store.usage(uid, start=TODAY, end=TOMORROW, group_by="model")
    assert [(r.group, r.requests, r.cost) for r in by_model] == [
        ("m", 1, Decimal("0.5")), ("m1", 3, Decimal("0.8")), ("m2", 1, Decimal("0.2")),
    ]  # fmt: skip
    by_key = await store.usage(uid, start=TODAY, end=TOMORROW, group_by="key")
    assert {r.group: (r.requests, r.cost) for r in by_key} == {
        "": (1, Decimal("0.4")), key_a: (3, Decimal("0.8")), key_b: (1, Decimal("0.3")),
    }  # fmt: skip
    assert await store.usage(uid, start=TOMORROW, end=TOMORROW + timedelta(days=7), group_by="day") == []


async def test_listing_keys_shows_their_policies(backend: Backend) -> None:  # noqa: F811
    store = backend.store
    until = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    policy = KeyPolicy(budget=Decimal("2.5"), period="week", expires_at=until, models=("a", "b"))
    uid, key_id = await _user_with_key(store, policy=policy)
    _, other, key_hash = new_key()
    await store.create_api_key(user_id=uid, key_id=other, key_hash=key_hash, name=None)
    first, second = await store.list_api_keys(uid)
    assert (first.key_id, first.budget, first.budget_period, first.expires_at, first.models) == (
        key_id, Decimal("2.5"), "week", until, ("a", "b"),
    )  # fmt: skip
    assert (second.key_id, second.budget, second.models, second.revoked) == (other, None, None, False)
    assert await store.set_key_policy(user_id=uid, key_id=other, policy=KeyPolicy()) is True
    assert await store.set_key_policy(user_id="nobody", key_id=other, policy=KeyPolicy()) is False
    found = await store.find_api_key(key_hash)
    assert found is not None and found.key_id == other


# -- payments: credit once, refunds and disputes take it back, debt is paid first ---------------


async def _pay(store: Store, uid: str, session: str, amount: str, event: str | None = None) -> bool:
    applied, _ = await store.payment_credit(
        user_id=uid,
        session_id=session,
        payment_intent=f"pi_{session}",
        amount=Decimal(amount),
        event_id=event or f"evt_{secrets.token_hex(6)}",
        event_type="checkout.session.completed",
    )
    return applied


async def test_concurrent_deliveries_of_a_paid_checkout_credit_once(backend: Backend) -> None:  # noqa: F811
    store = backend.store
    uid, _ = await _user_with_key(store, balance="0")
    session = f"cs_{secrets.token_hex(6)}"
    # 10 redeliveries of one event and 10 other events about the same session, all at once.
    same = [_pay(store, uid, session, "10", event=f"evt_{session}") for _ in range(10)]
    other = [_pay(store, uid, session, "10") for _ in range(10)]
    results = await asyncio.gather(*same, *other)
    assert results.count(True) == 1
    user = await store.get_user(uid)
    assert user is not None and user.balance == Decimal(10)
    kinds = [t.kind for t in await store.transactions(uid, limit=100, offset=0)]
    assert kinds == ["credit"]


async def test_a_refund_takes_back_what_is_left_and_the_rest_becomes_debt(backend: Backend) -> None:  # noqa: F811
    store = backend.store
    uid, key_id = await _user_with_key(store, balance="0")
    session = f"cs_{secrets.token_hex(6)}"
    assert await _pay(store, uid, session, "10")
    for _ in range(6):
        assert await _call(store, uid, key_id) == "ok"  # spends 6 of the 10
    event = f"evt_{secrets.token_hex(6)}"
    refunds = await asyncio.gather(
        *(
            store.payment_reverse(
                payment_intent=f"pi_{session}",
                amount=Decimal(10),
                cumulative=True,
                event_id=event,
                event_type="charge.refunded",
            )
            for _ in range(5)
        )
    )
    assert sorted(r.status for r in refunds) == ["applied"] + ["duplicate"] * 4
    (done,) = [r for r in refunds if r.status == "applied"]
    assert (done.user_id, done.taken, done.debt, done.balance) == (uid, Decimal(4), Decimal(6), Decimal(0))
    # While there is debt, calls are refused; a later top-up pays the debt first.
    assert (await _reserve(store, uid, key_id)).status == "debt"
    balance, applied = await store.credit(
        user_id=uid, amount=Decimal(8), description="top-up", idempotency_key=None
    )
    assert (balance, applied) == (Decimal(2), True)
    user = await store.get_user(uid)
    assert user is not None and (user.balance, user.debt) == (Decimal(2), Decimal(0))
    assert await _call(store, uid, key_id) == "ok"
    kinds = [(t.kind, t.amount) for t in await store.transactions(uid, limit=100, offset=0)][:4]
    assert kinds == [
        ("charge", Decimal(-1)), ("debt_payment", Decimal(-6)), ("credit", Decimal(8)),
        ("refund", Decimal(-4)),
    ]  # fmt: skip


async def test_a_dispute_after_a_partial_refund_takes_back_no_more_than_was_paid(
    backend: Backend,  # noqa: F811
) -> None:
    store = backend.store
    uid, _ = await _user_with_key(store, balance="0")
    session = f"cs_{secrets.token_hex(6)}"
    assert await _pay(store, uid, session, "10")
    partial = await store.payment_reverse(
        payment_intent=f"pi_{session}", amount=Decimal(3), cumulative=True, event_id=f"evt_{session}_r",
        event_type="charge.refunded",
    )  # fmt: skip
    assert (partial.taken, partial.balance) == (Decimal(3), Decimal(7))
    dispute = await store.payment_reverse(
        payment_intent=f"pi_{session}", amount=Decimal(10), cumulative=False, event_id=f"evt_{session}_d",
        event_type="charge.dispute.created",
    )  # fmt: skip
    assert (dispute.taken, dispute.debt, dispute.balance) == (Decimal(7), Decimal(0), Decimal(0))
    unknown = await store.payment_reverse(
        payment_intent="pi_nobody",
        amount=Decimal(1),
        cumulative=False,
        event_id="evt_x",
        event_type="charge.refunded",
    )
    assert unknown.status == "unknown_payment"


# -- low-balance alerts: once per downward crossing, re-armed above ---------------------------


async def test_concurrent_checks_report_each_crossing_once_and_rearm_above(backend: Backend) -> None:  # noqa: F811
    store = backend.store
    uid, key_id = await _user_with_key(store, balance="10")
    thresholds = [Decimal(5), Decimal(2)]
    assert await store.alert_crossings(uid, thresholds) == []
    for _ in range(6):
        assert await _call(store, uid, key_id) == "ok"  # balance 4
    results = await asyncio.gather(*(store.alert_crossings(uid, thresholds) for _ in range(10)))
    assert sorted(r for result in results for r in result) == [(Decimal(5), Decimal(4))]
    await store.credit(user_id=uid, amount=Decimal("0.5"), description="up a bit", idempotency_key=None)
    assert await store.alert_crossings(uid, thresholds) == []  # 4.5: still below 5, nothing new
    await store.credit(user_id=uid, amount=Decimal(2), description="up", idempotency_key=None)
    assert await store.alert_crossings(uid, thresholds) == []  # 6.5: re-armed
    for _ in range(6):
        assert await _call(store, uid, key_id) == "ok"  # 0.5
    assert await store.alert_crossings(uid, thresholds) == [
        (Decimal(5), Decimal("0.5")),
        (Decimal(2), Decimal("0.5")),
    ]
    assert await store.alert_crossings("nobody", thresholds) == []


async def test_admin_lists_accounts_and_everyones_usage(backend: Backend) -> None:  # noqa: F811
    store = backend.store
    uid_a, key_a = await _user_with_key(store, balance="10")
    uid_b, key_b = await _user_with_key(store, balance="20")
    # Backends may share a database: models of this run's own.
    m1, m2 = f"m1-{secrets.token_hex(4)}", f"m2-{secrets.token_hex(4)}"
    assert await _call(store, uid_a, key_a, "0.25", model=m1) == "ok"
    assert await _call(store, uid_b, key_b, "0.5", model=m1) == "ok"
    assert await _call(store, uid_b, None, "0.125", model=m2) == "ok"

    listed = await store.list_users(limit=1000, offset=0)
    ids = [u.id for u in listed]
    assert ids == sorted(ids)
    by_id = {u.id: u for u in listed}
    assert by_id[uid_a].balance == Decimal("9.75")
    assert by_id[uid_b].balance == Decimal("19.375")
    assert by_id[uid_b].debt == 0
    assert [u.id for u in await store.list_users(limit=1, offset=ids.index(uid_b))] == [uid_b]

    by_model = {r.group: r for r in await store.usage_all(start=TODAY, end=TOMORROW, group_by="model")}
    assert (by_model[m1].requests, by_model[m1].cost) == (2, Decimal("0.75"))
    assert (by_model[m2].requests, by_model[m2].cost) == (1, Decimal("0.125"))
    (today,) = await store.usage_all(start=TODAY, end=TOMORROW, group_by="day")
    assert today.group == TODAY.isoformat() and today.requests >= 3
    assert await store.usage_all(start=TOMORROW, end=TOMORROW + timedelta(days=7), group_by="day") == []
