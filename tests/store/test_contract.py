"""One contract for every store backend: the money rules hold the same on each of them.

Backends: the embedded SqliteStore, PostgresStore on a fresh database (with prepared statements,
and without them as behind a transaction pooler), and SupabaseStore through the PostgREST shim.
After every test the backend's own audit must find nothing out of line.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from app.store.base import Reservation, Settlement, Store
from app.store.postgres import PostgresStore
from app.store.sqlite import SqliteStore
from app.store.supabase import SupabaseStore
from tests.store.conftest import SERVICE_KEY
from tests.store.postgrest_shim import PostgrestShim

BACKENDS = ["sqlite", "postgres", "postgres-pooler", "supabase"]
INT32_MAX = 2**31 - 1


@dataclass
class Backend:
    """A store under test and a raw SQL door into the database behind it."""

    name: str
    store: Store
    execute: Callable[[str], Awaitable[Any]]
    rest_url: str | None = None


def _sqlite_executor(path: Path) -> Callable[[str], Awaitable[Any]]:
    async def execute(sql: str) -> Any:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    return execute


def _pg_executor(url: str) -> Callable[[str], Awaitable[Any]]:
    async def execute(sql: str) -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(sql)
        finally:
            await conn.close()

    return execute


@pytest_asyncio.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    store_pg_url: str,
    shim: PostgrestShim,
    shim_db_url: str,
) -> AsyncIterator[Backend]:
    name: str = request.param
    store: Store
    if name == "sqlite":
        store = SqliteStore(tmp_path)
        execute = _sqlite_executor(tmp_path / "gateway.sqlite3")
    elif name == "postgres":
        store = PostgresStore(store_pg_url, pool_size=10)
        execute = _pg_executor(store_pg_url)
    elif name == "postgres-pooler":
        store = PostgresStore(store_pg_url, pool_size=10, statement_cache=False)
        execute = _pg_executor(store_pg_url)
    else:
        store = SupabaseStore(shim.url, SERVICE_KEY)
        execute = _pg_executor(shim_db_url)
    await store.open()
    try:
        yield Backend(name, store, execute, shim.url if name == "supabase" else None)
        # Every test leaves the books consistent: balance == ledger sum, reserved == holds.
        assert await store.audit() == []
    finally:
        await store.close()


def _uid() -> str:
    return f"user-{secrets.token_hex(6)}"


def _rid() -> str:
    return f"req-{secrets.token_hex(8)}"


async def _reserve(
    store: Store,
    user_id: str,
    *,
    request_id: str | None = None,
    prompt_cost: str = "0.1",
    output_price: str = "0.001",
    max_tokens: int | None = None,
    model_max_output: int | None = None,
    ttl_seconds: int = 60,
) -> Reservation:
    return await store.reserve(
        user_id=user_id,
        request_id=request_id or _rid(),
        prompt_cost=Decimal(prompt_cost),
        output_price=Decimal(output_price),
        max_tokens=max_tokens,
        model_max_output=model_max_output,
        ttl_seconds=ttl_seconds,
    )


async def _settle(store: Store, user_id: str, request_id: str, cost: str | Decimal) -> Settlement:
    return await store.settle(
        user_id=user_id,
        request_id=request_id,
        cost=Decimal(cost),
        model="m",
        prompt_tokens=10,
        completion_tokens=20,
        description=f"charge {request_id}",
    )


async def _money(store: Store, user_id: str) -> tuple[Decimal, Decimal]:
    user = await store.get_user(user_id)
    assert user is not None
    return user.balance, user.reserved


async def _ledger(store: Store, user_id: str) -> list[tuple[str, Decimal, str | None]]:
    rows = await store.transactions(user_id, limit=1000, offset=0)
    return [(t.kind, t.amount, t.request_id) for t in rows]


# -- accounts ------------------------------------------------------------------------------


async def test_ensure_user_creates_once_under_20_concurrent_calls(backend: Backend) -> None:
    store, uid = backend.store, _uid()
    results = await asyncio.gather(*(store.ensure_user(uid, Decimal("5")) for _ in range(20)))
    assert sum(created for _, created in results) == 1
    assert {(u.id, u.balance, u.reserved) for u, _ in results} == {(uid, Decimal(5), Decimal(0))}
    assert await _ledger(store, uid) == [("credit", Decimal(5), None)]
    (row,) = await store.transactions(uid, limit=10, offset=0)
    assert row.description == "opening balance"
    # Ensuring again never credits again.
    user, created = await store.ensure_user(uid, Decimal("100"))
    assert (created, user.balance) == (False, Decimal(5))


async def test_zero_opening_balance_writes_no_ledger_row(backend: Backend) -> None:
    uid = _uid()
    user, created = await backend.store.ensure_user(uid, Decimal(0))
    assert created and user.balance == Decimal(0)
    assert await _ledger(backend.store, uid) == []


async def test_credit_applies_once_per_idempotency_key(backend: Backend) -> None:
    store, uid = backend.store, _uid()
    await store.ensure_user(uid, Decimal(1))
    first = await store.credit(
        user_id=uid, amount=Decimal("0.1"), description="top-up", idempotency_key="pay-1"
    )
    again = await store.credit(
        user_id=uid, amount=Decimal("0.1"), description="top-up", idempotency_key="pay-1"
    )
    other = await store.credit(
        user_id=uid, amount=Decimal("0.2"), description="top-up", idempotency_key="pay-2"
    )
    keyless = [
        await store.credit(user_id=uid, amount=Decimal("0.05"), description="gift", idempotency_key=None)
        for _ in range(2)
    ]
    assert first == (Decimal("1.1"), True)
    assert again == (Decimal("1.1"), False)
    assert other == (Decimal("1.3"), True)
    assert keyless == [(Decimal("1.35"), True), (Decimal("1.4"), True)]
    assert await _money(store, uid) == (Decimal("1.4"), Decimal(0))
    assert sorted(a for k, a, _ in await _ledger(store, uid)) == [
        Decimal("0.05"), Decimal("0.05"), Decimal("0.1"), Decimal("0.2"), Decimal(1),
    ]  # fmt: skip


async def test_concurrent_credits_with_one_idempotency_key_apply_once(backend: Backend) -> None:
    store, uid = backend.store, _uid()
    await store.ensure_user(uid, Decimal(0))
    results = await asyncio.gather(
        *(
            store.credit(user_id=uid, amount=Decimal("2.5"), description="pay", idempotency_key="once")
            for _ in range(10)
        )
    )
    assert sum(applied for _, applied in results) == 1
    assert await _money(store, uid) == (Decimal("2.5"), Decimal(0))


# -- reserve -------------------------------------------------------------------------------


async def test_reserve_without_max_tokens_is_capped_at_what_the_balance_affords(backend: Backend) -> None:
    store, uid = backend.store, _uid()
    await store.ensure_user(uid, Decimal(1))
    # (1 - 0.1) / 0.001 = 900 tokens affordable.
    r = await _reserve(store, uid, prompt_cost="0.1", output_price="0.001")
    assert (r.status, r.max_tokens, r.hold, r.available) == ("ok", 900, Decimal(1), Decimal(1))
    assert await _money(store, uid) == (Decimal(1), Decimal(1))
    # Nothing left to afford now: the next call is refused, not capped at zero.
    refused = await _reserve(store, uid, prompt_cost="0.1", output_price="0.001")
    assert (refused.status, refused.hold, refused.available) == ("insufficient", Decimal(0), Decimal(0))


async def test_reserve_without_max_tokens_is_capped_at_the_model_limit(backend: Backend) -> None:
    store, uid = backend.store, _uid()
    await store.ensure_user(uid, Decimal(1))
    r = await _reserve(store, uid, prompt_cost="0.1", output_price="0.001", model_max_output=300)
    assert (r.status, r.max_tokens, r.hold) == ("ok", 300, Decimal("0.4"))
    assert await _money(store, uid) == (Decimal(1), Decimal("0.4"))


async def test_reserve_cap_never_exceeds_a_32_bit_token_count(backend: Backend) -> None:
    store, uid = backend.store, _uid()
    await store.ensure_user(uid, Decimal(1000))
    r = await _reserve(store, uid, prompt_cost="0", output_price="0.00000001")
    assert (r.status, r.max_tokens, r.hold) == ("ok", INT32_MAX, Decimal(1000))
    refused = await _reserve(store, uid, prompt_cost="0", output_price="0.00000001", max_tokens=1)
    assert refused.status == "insufficient"


async def test_explicit_max_tokens_beyond_the_balance_is_insufficient_with_the_affordable_count(
    backend: Backend,
) -> None:
    store, uid = backend.store, _uid()
    await store.ensure_user(uid, Decimal(1))
    r = await _reserve(store, uid, prompt_cost="0.1", output_price="0.001", max_tokens=901)
    assert (r.status, r.max_tokens, r.hold, r.available) == ("insufficient", 900, Decimal(0), Decimal(1))
    assert await _money(store, uid) == (Decimal(1), Decimal(0))
    exact = await _reserve(store, uid, prompt_cost="0.1", output_price="0.001", max_tokens=900)
    assert (exact.status, exact.max_tokens, exact.hold) == ("ok", 900, Decimal(1))


async def test_a_max_tokens_beyond_any_integer_column_is_just_unaffordable(backend: Backend) -> None:
    store, uid = backend.store, _uid()
    await store.ensure_user(uid, Decimal(1))
    r = await _reserve(store, uid, prompt_cost="0.1", output_price="0.001", max_tokens=2**40)
    assert (r.status, r.max_tokens, r.hold) == ("insufficient", 900, Decimal(0))
    # With free output the prompt is all there is to hold, however many tokens are asked for.
    free = await _reserve(store, uid, prompt_cost="0.1", output_price="0", max_tokens=2**40)
    assert (free.status, free.hold) == ("ok", Decimal("0.1"))
    assert await _money(store, uid) == (Decimal(1), Decimal("0.1"))


async def test_zero_balance_is_insufficient(backend: Backend) -> None:
    store, uid = backend.store, _uid()
    await store.ensure_user(uid, Decimal(0))
    for max_tokens in (None, 1):
        r = await _reserve(store, uid, prompt_cost="0.000001", output_price="0.000002", max_tokens=max_tokens)
        assert (r.status, r.hold) == ("insufficient", Decimal(0))
    # A balance that does not even cover the prompt is refused too.
    poor = _uid()
    await store.ensure_user(poor, Decimal("0.05"))
    r = await _reserve(store, poor, prompt_cost="0.1", output_price="0.001")
    assert (r.status, r.available) == ("insufficient", Decimal("0.05"))
    assert await _money(store, poor) == (Decimal("0.05"), Decimal(0))


async def test_reserve_for_an_unknown_account_and_a_duplicate_request_id(backend: Backend) -> None:
    store, uid = backend.store, _uid()
    assert (await _reserve(store, _uid())).status == "no_account"
    await store.ensure_user(uid, Decimal(1))
    rid = _rid()
    first = await _reserve(store, uid, request_id=rid, max_tokens=10)
    second = await _reserve(store, uid, request_id=rid, max_tokens=10)
    assert (first.status, second.status) == ("ok", "duplicate")
    assert await _money(store, uid) == (Decimal(1), Decimal("0.11"))
    assert await store.release(user_id=uid, request_id=rid) is True


# -- settle and release --------------------------------------------------------------------


async def test_settle_charges_the_actual_cost_and_releases_the_rest(backend: Backend) -> None:
    store, uid, rid = backend.store, _uid(), _rid()
    await store.ensure_user(uid, Decimal(10))
    r = await _reserve(
        store, uid, request_id=rid, prompt_cost="0.00012345", output_price="0.0000015", max_tokens=1000
    )
    assert (r.status, r.hold) == ("ok", Decimal("0.00162345"))
    s = await _settle(store, uid, rid, "0.00042345")
    assert (s.status, s.charged, s.balance) == ("charged", Decimal("0.00042345"), Decimal("9.99957655"))
    assert await _money(store, uid) == (Decimal("9.99957655"), Decimal(0))
    assert (await _ledger(store, uid))[0] == ("charge", Decimal("-0.00042345"), rid)


async def test_a_repeated_settle_is_a_no_op(backend: Backend) -> None:
    store, uid, rid = backend.store, _uid(), _rid()
    await store.ensure_user(uid, Decimal(1))
    await _reserve(store, uid, request_id=rid, max_tokens=100)
    first = await _settle(store, uid, rid, "0.15")
    again = [await _settle(store, uid, rid, cost) for cost in ("0.15", "0.5")]
    concurrent = await asyncio.gather(*(_settle(store, uid, rid, "0.15") for _ in range(5)))
    assert (first.status, first.charged, first.balance) == ("charged", Decimal("0.15"), Decimal("0.85"))
    for s in [*again, *concurrent]:
        assert (s.status, s.charged, s.balance) == ("duplicate", Decimal("0.15"), Decimal("0.85"))
    assert await _money(store, uid) == (Decimal("0.85"), Decimal(0))
    assert [row for row in await _ledger(store, uid) if row[0] == "charge"] == [
        ("charge", Decimal("-0.15"), rid)
    ]


async def test_concurrent_first_settles_of_one_request_charge_once(backend: Backend) -> None:
    store, uid, rid = backend.store, _uid(), _rid()
    await store.ensure_user(uid, Decimal(1))
    await _reserve(store, uid, request_id=rid, max_tokens=100)
    results = await asyncio.gather(*(_settle(store, uid, rid, "0.12") for _ in range(8)))
    assert sorted(s.status for s in results) == ["charged"] + ["duplicate"] * 7
    assert await _money(store, uid) == (Decimal("0.88"), Decimal(0))


async def test_settle_after_the_hold_expired_and_was_swept_still_charges(backend: Backend) -> None:
    store, uid, rid = backend.store, _uid(), _rid()
    await store.ensure_user(uid, Decimal(1))
    r = await _reserve(store, uid, request_id=rid, max_tokens=100, ttl_seconds=0)
    assert r.status == "ok"
    await asyncio.sleep(0.05)
    assert await store.sweep_expired() >= 1
    assert await _money(store, uid) == (Decimal(1), Decimal(0))
    s = await _settle(store, uid, rid, "0.15")
    assert (s.status, s.charged, s.balance) == ("charged", Decimal("0.15"), Decimal("0.85"))
    assert await _money(store, uid) == (Decimal("0.85"), Decimal(0))


async def test_a_late_charge_never_takes_more_than_is_available(backend: Backend) -> None:
    store, uid, late, other = backend.store, _uid(), _rid(), _rid()
    await store.ensure_user(uid, Decimal(1))
    await _reserve(store, uid, request_id=late, max_tokens=100, ttl_seconds=0)
    await asyncio.sleep(0.05)
    await store.sweep_expired()
    # Another call now holds 0.9 of the 1.0; the late call (cost 0.5) may take only 0.1.
    held = await _reserve(store, uid, request_id=other, prompt_cost="0.9", output_price="0", max_tokens=1)
    assert (held.status, held.hold) == ("ok", Decimal("0.9"))
    s = await _settle(store, uid, late, "0.5")
    assert (s.status, s.charged, s.balance) == ("charged", Decimal("0.1"), Decimal("0.9"))
    assert await _money(store, uid) == (Decimal("0.9"), Decimal("0.9"))
    # The other call's hold is intact and settles in full.
    s = await _settle(store, uid, other, "0.9")
    assert (s.charged, s.balance) == (Decimal("0.9"), Decimal(0))
    assert await _money(store, uid) == (Decimal(0), Decimal(0))
    # Nothing at all left: a charge is recorded as zero, never below zero.
    nothing = await _settle(store, uid, _rid(), "0.3")
    assert (nothing.status, nothing.charged, nothing.balance) == ("charged", Decimal(0), Decimal(0))


async def test_a_cost_beyond_the_hold_is_charged_up_to_the_balance(backend: Backend) -> None:
    store, uid, rid = backend.store, _uid(), _rid()
    await store.ensure_user(uid, Decimal(1))
    await _reserve(store, uid, request_id=rid, prompt_cost="0.1", output_price="0.001", max_tokens=10)
    s = await _settle(store, uid, rid, "0.7")  # more than the 0.11 held, less than the balance
    assert (s.charged, s.balance) == (Decimal("0.7"), Decimal("0.3"))
    rid2 = _rid()
    await _reserve(store, uid, request_id=rid2, prompt_cost="0.1", output_price="0.001", max_tokens=10)
    s = await _settle(store, uid, rid2, "5")
    assert (s.charged, s.balance) == (Decimal("0.3"), Decimal(0))


async def test_a_cost_finer_than_the_ledger_is_rounded_once_and_the_books_still_balance(
    backend: Backend,
) -> None:
    store, uid = backend.store, _uid()
    await store.ensure_user(uid, Decimal(1))
    for cost, charged in (
        ("0.000000015", "0.00000002"),
        ("0.000000025", "0.00000003"),
        ("0.000000014", "0.00000001"),
    ):
        rid = _rid()
        await _reserve(store, uid, request_id=rid, max_tokens=1)
        s = await _settle(store, uid, rid, cost)
        assert (s.status, s.charged) == ("charged", Decimal(charged))
    assert await _money(store, uid) == (Decimal("0.99999994"), Decimal(0))


async def test_release_gives_everything_back_once(backend: Backend) -> None:
    store, uid, rid = backend.store, _uid(), _rid()
    await store.ensure_user(uid, Decimal(2))
    r = await _reserve(
        store, uid, request_id=rid, prompt_cost="0.5", output_price="0.01", model_max_output=100
    )
    assert (r.status, r.max_tokens, r.hold) == ("ok", 100, Decimal("1.5"))
    assert await _money(store, uid) == (Decimal(2), Decimal("1.5"))
    assert await store.release(user_id=uid, request_id=rid) is True
    assert await store.release(user_id=uid, request_id=rid) is False
    assert await store.release(user_id=_uid(), request_id=_rid()) is False
    assert await _money(store, uid) == (Decimal(2), Decimal(0))
    assert await _ledger(store, uid) == [("credit", Decimal(2), None)]


async def test_release_of_someone_elses_request_does_nothing(backend: Backend) -> None:
    store, owner, stranger, rid = backend.store, _uid(), _uid(), _rid()
    await store.ensure_user(owner, Decimal(1))
    await store.ensure_user(stranger, Decimal(1))
    await _reserve(store, owner, request_id=rid, max_tokens=10)
    assert await store.release(user_id=stranger, request_id=rid) is False
    assert await _money(store, owner) == (Decimal(1), Decimal("0.11"))
    assert await store.release(user_id=owner, request_id=rid) is True


async def test_sweep_releases_only_expired_holds(backend: Backend) -> None:
    store, uid = backend.store, _uid()
    await store.ensure_user(uid, Decimal(3))
    await _reserve(store, uid, prompt_cost="0.5", output_price="0", ttl_seconds=0)
    await _reserve(store, uid, prompt_cost="0.25", output_price="0", ttl_seconds=1)
    kept = await _reserve(store, uid, prompt_cost="0.75", output_price="0", ttl_seconds=600)
    assert kept.status == "ok"
    assert await _money(store, uid) == (Decimal(3), Decimal("1.5"))
    await asyncio.sleep(1.1)
    assert await store.sweep_expired() >= 2
    assert await _money(store, uid) == (Decimal(3), Decimal("0.75"))
    await store.sweep_expired()  # (holds of other tests may expire meanwhile; ours are gone)
    assert await _money(store, uid) == (Decimal(3), Decimal("0.75"))


# -- the ledger ----------------------------------------------------------------------------


async def test_transactions_newest_first_with_pagination(backend: Backend) -> None:
    store, uid = backend.store, _uid()
    await store.ensure_user(uid, Decimal(3))
    await store.credit(user_id=uid, amount=Decimal("0.5"), description="top-up", idempotency_key=None)
    rids = [_rid() for _ in range(3)]
    for n, rid in enumerate(rids, start=1):
        await _reserve(store, uid, request_id=rid, max_tokens=10)
        await _settle(store, uid, rid, Decimal("0.01") * n)
    history = await store.transactions(uid, limit=10, offset=0)
    assert [(t.kind, t.amount, t.request_id) for t in history] == [
        ("charge", Decimal("-0.03"), rids[2]),
        ("charge", Decimal("-0.02"), rids[1]),
        ("charge", Decimal("-0.01"), rids[0]),
        ("credit", Decimal("0.5"), None),
        ("credit", Decimal(3), None),
    ]
    assert [t.description for t in history][-2:] == ["top-up", "opening balance"]
    assert all(t.timestamp.tzinfo is not None for t in history)
    assert [t.timestamp for t in history] == sorted((t.timestamp for t in history), reverse=True)
    assert len({t.id for t in history}) == 5
    assert (history[0].model, history[0].prompt_tokens, history[0].completion_tokens) == ("m", 10, 20)
    pages = [await store.transactions(uid, limit=2, offset=o) for o in (0, 2, 4, 6)]
    assert [[t.id for t in p] for p in pages] == [
        [history[0].id, history[1].id],
        [history[2].id, history[3].id],
        [history[4].id],
        [],
    ]
    balance, _ = await _money(store, uid)
    assert balance == sum(t.amount for t in history) == Decimal("3.44")


async def test_the_ledger_is_append_only_at_the_database(backend: Backend) -> None:
    store, uid = backend.store, _uid()
    await store.ensure_user(uid, Decimal(1))
    before = await _ledger(store, uid)
    for sql in (
        f"update transactions set amount = 1000 where user_id = '{uid}'",
        f"delete from transactions where user_id = '{uid}'",
    ):
        with pytest.raises((sqlite3.IntegrityError, asyncpg.PostgresError), match="append-only"):
            await backend.execute(sql)
    if backend.rest_url is not None:
        # Through the REST API too, even with the service role's key.
        async with httpx.AsyncClient() as http:
            r = await http.patch(
                f"{backend.rest_url}/rest/v1/transactions",
                params={"user_id": f"eq.{uid}"},
                json={"amount": "1000"},
                headers={"apikey": SERVICE_KEY, "Authorization": f"Bearer {SERVICE_KEY}"},
            )
        assert r.status_code == 400 and r.json()["code"] == "23514", r.text
    assert await _ledger(store, uid) == before
    assert await _money(store, uid) == (Decimal(1), Decimal(0))


async def test_a_negative_adjustment_cannot_take_held_funds(backend: Backend) -> None:
    from app.store.base import BalanceConflict

    store, uid, rid = backend.store, _uid(), _rid()
    await store.ensure_user(uid, Decimal(1))
    await _reserve(store, uid, request_id=rid, prompt_cost="0.6", output_price="0", max_tokens=1)
    with pytest.raises(BalanceConflict):
        await store.credit(user_id=uid, amount=Decimal("-0.5"), description="refund", idempotency_key=None)
    assert await _money(store, uid) == (Decimal(1), Decimal("0.6"))
    assert await store.credit(
        user_id=uid, amount=Decimal("-0.4"), description="refund", idempotency_key=None
    ) == (Decimal("0.6"), True)
    await store.release(user_id=uid, request_id=rid)


# -- many calls at once --------------------------------------------------------------------


async def test_many_concurrent_calls_never_overdraw_and_the_books_balance(backend: Backend) -> None:
    """60 calls at once on one account whose balance covers only some of them."""
    store, uid = backend.store, _uid()
    start = Decimal("1.00")
    await store.ensure_user(uid, start)
    rng = random.Random(20261122)
    plans = [
        # (delay before settling, completion tokens used, fail upstream?, cost overrun?)
        (rng.random() * 0.02, rng.randint(0, 100), rng.random() < 0.15, rng.random() < 0.1)
        for _ in range(60)
    ]
    lows: list[Decimal] = []

    async def call(i: int, delay: float, used: int, fails: bool, overrun: bool) -> tuple[str, Decimal]:
        rid = f"req-{uid}-{i}"
        # Each call can cost up to 0.05 + 100 x 0.001 = 0.15; the account affords about 6 at once.
        r = await _reserve(
            store, uid, request_id=rid, prompt_cost="0.05", output_price="0.001", max_tokens=100
        )
        if r.status != "ok":
            assert r.status == "insufficient"
            return "refused", Decimal(0)
        await asyncio.sleep(delay)
        user = await store.get_user(uid)
        assert user is not None
        lows.append(user.balance - user.reserved)
        if fails:
            assert await store.release(user_id=uid, request_id=rid) is True
            return "released", Decimal(0)
        # An overrun costs more than was held (a provider that counted more tokens than we did).
        cost = Decimal("0.05") + used * Decimal("0.001") + (Decimal("0.2") if overrun else 0)
        s = await _settle(store, uid, rid, cost)
        assert s.status == "charged"
        assert Decimal(0) <= s.charged <= cost
        assert s.balance >= 0
        return "charged", s.charged

    outcomes = await asyncio.gather(*(call(i, *plan) for i, plan in enumerate(plans)))
    charged = [amount for kind, amount in outcomes if kind == "charged"]
    kinds = [kind for kind, _ in outcomes]
    assert kinds.count("refused") > 0 and len(charged) > 0, kinds
    assert min(lows) >= 0
    balance, reserved = await _money(store, uid)
    assert balance >= 0 and reserved == 0
    assert balance == start - sum(charged)
    ledger = await store.transactions(uid, limit=1000, offset=0)
    charges = [t for t in ledger if t.kind == "charge"]
    assert len(charges) == len(charged)
    assert sorted(-t.amount for t in charges) == sorted(charged)
    assert balance == sum(t.amount for t in ledger)


# -- the record of each call -----------------------------------------------------------------


async def test_a_call_record_follows_its_hold_and_its_charge(backend: Backend) -> None:
    store, uid, rid = backend.store, _uid(), _rid()
    await store.ensure_user(uid, Decimal(10))
    await store.reserve(
        user_id=uid,
        request_id=rid,
        prompt_cost=Decimal("0.001"),
        output_price=Decimal("0.0001"),
        max_tokens=10,
        model_max_output=None,
        ttl_seconds=60,
        model="gpt-test",
    )
    held = await store.get_request(uid, rid)
    assert held is not None
    assert (held.status, held.model, held.hold, held.cost, held.settled) == (
        "held",
        "gpt-test",
        Decimal("0.002"),
        None,
        None,
    )
    usage = {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}}
    await store.settle(
        user_id=uid,
        request_id=rid,
        cost=Decimal("0.0013"),
        model="gpt-test",
        prompt_tokens=10,
        completion_tokens=3,
        description="charge",
        deployment="gpt-test#0",
        usage=usage,
    )
    done = await store.get_request(uid, rid)
    assert done is not None
    assert (done.status, done.deployment, done.cost, done.uncollected, done.usage) == (
        "charged",
        "gpt-test#0",
        Decimal("0.0013"),
        Decimal(0),
        usage,
    )
    assert done.settled is not None and done.settled >= done.created
    # Only its own user sees it.
    assert await store.get_request(_uid(), rid) is None
    assert await store.get_request(uid, _rid()) is None


async def test_a_released_call_is_recorded_as_released(backend: Backend) -> None:
    store, uid, rid = backend.store, _uid(), _rid()
    await store.ensure_user(uid, Decimal(10))
    await _reserve(store, uid, request_id=rid, max_tokens=10)
    assert await store.release(user_id=uid, request_id=rid)
    record = await store.get_request(uid, rid)
    assert record is not None and (record.status, record.cost) == ("released", None)


async def test_what_a_charge_could_not_collect_is_written_down(backend: Backend) -> None:
    store, uid, rid = backend.store, _uid(), _rid()
    await store.ensure_user(uid, Decimal(1))
    await _reserve(store, uid, request_id=rid, prompt_cost="0.1", output_price="0.001", max_tokens=10)
    s = await _settle(store, uid, rid, "1.25")
    assert (s.charged, s.balance) == (Decimal(1), Decimal(0))
    record = await store.get_request(uid, rid)
    assert record is not None and (record.cost, record.uncollected) == (Decimal(1), Decimal("0.25"))
    [charge] = [t for t in await store.transactions(uid, limit=10, offset=0) if t.kind == "charge"]
    assert "uncollected 0.25" in charge.description
