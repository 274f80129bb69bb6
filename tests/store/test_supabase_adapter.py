"""SupabaseStore through supabase-py against a PostgREST stand-in on real Postgres."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import traceback
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal

import httpx
import pytest
import pytest_asyncio
from supabase import AsyncClientOptions, acreate_client

from app.store.base import BalanceConflict, StoreError, UserNotFound
from app.store.supabase import SupabaseStore
from tests.store.conftest import SERVICE_KEY
from tests.store.postgrest_shim import PostgrestShim

MONEY_PARAMS = {"p_balance", "p_amount", "p_prompt_cost", "p_output_price", "p_cost"}


@pytest_asyncio.fixture
async def store(shim: PostgrestShim) -> AsyncIterator[SupabaseStore]:
    s = SupabaseStore(shim.url, SERVICE_KEY)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def _uid() -> str:
    return f"user-{secrets.token_hex(6)}"


def _rpc_calls(shim: PostgrestShim, fn: str, since: int = 0) -> list[dict[str, object]]:
    return [r.json() for r in shim.requests[since:] if r.path == f"/rest/v1/rpc/{fn}"]


def _no_key_anywhere(exc: BaseException) -> None:
    assert SERVICE_KEY not in str(exc)
    assert SERVICE_KEY not in "".join(traceback.format_exception(exc))


@pytest.mark.asyncio
async def test_ensure_user_creates_once_under_20_concurrent_calls(store: SupabaseStore) -> None:
    uid = _uid()
    results = await asyncio.gather(*(store.ensure_user(uid, Decimal(5)) for _ in range(20)))
    assert sum(created for _, created in results) == 1
    assert {user.balance for user, _ in results} == {Decimal("5.00000000")}
    history = await store.transactions(uid, limit=50, offset=0)
    assert [(t.kind, t.amount, t.description) for t in history] == [
        ("credit", Decimal("5.00000000"), "opening balance")
    ]


@pytest.mark.asyncio
async def test_credit_applies_once_per_idempotency_key(store: SupabaseStore, shim: PostgrestShim) -> None:
    uid = _uid()
    await store.ensure_user(uid, Decimal(1))
    since = len(shim.requests)
    first = await store.credit(
        user_id=uid, amount=Decimal("0.1"), description="top-up", idempotency_key="pay-1"
    )
    again = await store.credit(
        user_id=uid, amount=Decimal("0.1"), description="top-up", idempotency_key="pay-1"
    )
    assert first == (Decimal("1.10000000"), True)
    assert again == (Decimal("1.10000000"), False)
    keyless = await store.credit(user_id=uid, amount=Decimal("0.2"), description="gift", idempotency_key=None)
    assert keyless == (Decimal("1.30000000"), True)
    assert [c["p_amount"] for c in _rpc_calls(shim, "billing_credit", since)] == ["0.1"] * 2 + ["0.2"]


@pytest.mark.asyncio
async def test_taking_held_funds_is_balance_conflict(store: SupabaseStore) -> None:
    uid = _uid()
    await store.ensure_user(uid, Decimal(1))
    reservation = await store.reserve(
        user_id=uid,
        request_id=f"req-{uid}",
        prompt_cost=Decimal("0.6"),
        output_price=Decimal(0),
        max_tokens=None,
        model_max_output=None,
        ttl_seconds=60,
    )
    assert reservation.status == "ok"
    # Taking back 0.5 would leave 0.5 against 0.6 held for the call in flight.
    with pytest.raises(BalanceConflict):
        await store.credit(user_id=uid, amount=Decimal("-0.5"), description="refund", idempotency_key=None)
    user = await store.get_user(uid)
    assert user is not None and user.balance == Decimal(1) and user.reserved == Decimal("0.6")


@pytest.mark.asyncio
async def test_money_on_an_unknown_account_is_user_not_found(store: SupabaseStore) -> None:
    with pytest.raises(UserNotFound):
        await store.credit(user_id=_uid(), amount=Decimal(1), description="x", idempotency_key=None)
    with pytest.raises(UserNotFound):
        await store.settle(
            user_id=_uid(),
            request_id=f"req-{_uid()}",
            cost=Decimal(1),
            model="m",
            prompt_tokens=1,
            completion_tokens=1,
            description="d",
        )


@pytest.mark.asyncio
async def test_reserve_settle_and_duplicate_settle_is_a_no_op(store: SupabaseStore) -> None:
    uid = _uid()
    await store.ensure_user(uid, Decimal(10))
    reservation = await store.reserve(
        user_id=uid,
        request_id=f"req-{uid}",
        prompt_cost=Decimal("0.00012345"),
        output_price=Decimal("0.00000150"),
        max_tokens=1000,
        model_max_output=4096,
        ttl_seconds=60,
    )
    assert reservation.status == "ok"
    assert reservation.max_tokens == 1000
    assert reservation.hold == Decimal("0.00162345")
    assert reservation.available == Decimal(10)
    held = await store.get_user(uid)
    assert held is not None and held.reserved == Decimal("0.00162345")

    kwargs = {
        "user_id": uid,
        "request_id": f"req-{uid}",
        "cost": Decimal("0.00042345"),
        "model": "gpt-test",
        "prompt_tokens": 82,
        "completion_tokens": 200,
        "description": "chat gpt-test",
    }
    settled = await store.settle(**kwargs)  # type: ignore[arg-type]
    assert (settled.status, settled.charged, settled.balance) == (
        "charged",
        Decimal("0.00042345"),
        Decimal("9.99957655"),
    )
    duplicate = await store.settle(**kwargs)  # type: ignore[arg-type]
    assert (duplicate.status, duplicate.charged, duplicate.balance) == (
        "duplicate",
        Decimal("0.00042345"),
        Decimal("9.99957655"),
    )
    user = await store.get_user(uid)
    assert user is not None
    assert (user.balance, user.reserved) == (Decimal("9.99957655"), Decimal(0))


@pytest.mark.asyncio
async def test_reserve_insufficient_says_how_many_tokens_are_affordable(
    store: SupabaseStore,
) -> None:
    uid = _uid()
    await store.ensure_user(uid, Decimal(1))
    reservation = await store.reserve(
        user_id=uid,
        request_id=f"req-{uid}",
        prompt_cost=Decimal("0.1"),
        output_price=Decimal("0.001"),
        max_tokens=10_000,
        model_max_output=None,
        ttl_seconds=60,
    )
    assert (reservation.status, reservation.max_tokens) == ("insufficient", 900)
    assert (reservation.hold, reservation.available) == (Decimal(0), Decimal(1))
    nobody = await store.reserve(
        user_id=_uid(),
        request_id=f"req-nobody-{uid}",
        prompt_cost=Decimal("0.1"),
        output_price=Decimal("0.001"),
        max_tokens=None,
        model_max_output=None,
        ttl_seconds=60,
    )
    assert nobody.status == "no_account"


@pytest.mark.asyncio
async def test_release_gives_the_hold_back_once(store: SupabaseStore) -> None:
    uid = _uid()
    await store.ensure_user(uid, Decimal(2))
    reservation = await store.reserve(
        user_id=uid,
        request_id=f"req-{uid}",
        prompt_cost=Decimal("0.5"),
        output_price=Decimal("0.01"),
        max_tokens=None,
        model_max_output=100,
        ttl_seconds=60,
    )
    assert (reservation.status, reservation.max_tokens, reservation.hold) == (
        "ok",
        100,
        Decimal("1.50000000"),
    )
    assert await store.release(user_id=uid, request_id=f"req-{uid}") is True
    assert await store.release(user_id=uid, request_id=f"req-{uid}") is False
    user = await store.get_user(uid)
    assert user is not None and (user.balance, user.reserved) == (Decimal(2), Decimal(0))


@pytest.mark.asyncio
async def test_sweep_releases_expired_holds(store: SupabaseStore) -> None:
    uid = _uid()
    await store.ensure_user(uid, Decimal(2))
    await store.reserve(
        user_id=uid,
        request_id=f"req-{uid}",
        prompt_cost=Decimal("0.5"),
        output_price=Decimal(0),
        max_tokens=None,
        model_max_output=None,
        ttl_seconds=0,
    )
    await asyncio.sleep(0.01)
    assert await store.sweep_expired() >= 1
    user = await store.get_user(uid)
    assert user is not None and user.reserved == Decimal(0)


@pytest.mark.asyncio
async def test_transactions_newest_first_and_paged(store: SupabaseStore) -> None:
    uid = _uid()
    await store.ensure_user(uid, Decimal(3))
    for n, description in ((1, "second"), (2, "third")):
        await store.settle(
            user_id=uid,
            request_id=f"req-{uid}-{n}",
            cost=Decimal("0.25") * n,
            model="m",
            prompt_tokens=n,
            completion_tokens=2 * n,
            description=description,
        )
    history = await store.transactions(uid, limit=10, offset=0)
    assert [t.description for t in history] == ["third", "second", "opening balance"]
    assert [t.amount for t in history] == [Decimal("-0.5"), Decimal("-0.25"), Decimal(3)]
    assert [t.kind for t in history] == ["charge", "charge", "credit"]
    charge = history[0]
    assert (charge.model, charge.request_id) == ("m", f"req-{uid}-2")
    assert (charge.prompt_tokens, charge.completion_tokens) == (2, 4)
    assert isinstance(charge.timestamp, datetime) and charge.timestamp.tzinfo is not None
    assert history[0].timestamp >= history[1].timestamp >= history[2].timestamp
    page = await store.transactions(uid, limit=1, offset=1)
    assert [t.description for t in page] == ["second"]


@pytest.mark.asyncio
async def test_api_keys_and_limits(store: SupabaseStore) -> None:
    uid = _uid()
    await store.ensure_user(uid, Decimal(0))
    key_hash = secrets.token_hex(32)
    await store.create_api_key(user_id=uid, key_id=f"k-{uid}", key_hash=key_hash, name="ci")
    key = await store.find_api_key(key_hash)
    assert key is not None
    assert (key.key_id, key.user_id, key.name, key.revoked) == (f"k-{uid}", uid, "ci", False)
    assert await store.find_api_key("no-such-hash") is None
    assert await store.revoke_api_key(user_id="someone-else", key_id=f"k-{uid}") is False
    assert await store.revoke_api_key(user_id=uid, key_id=f"k-{uid}") is True
    assert await store.revoke_api_key(user_id=uid, key_id=f"k-{uid}") is False
    revoked = await store.find_api_key(key_hash)
    assert revoked is not None and revoked.revoked
    with pytest.raises(UserNotFound):
        await store.create_api_key(user_id=_uid(), key_id=f"k2-{uid}", key_hash="h", name=None)

    user = await store.set_user_limits(uid, rpm=60, rph=None, tpm=100_000)
    assert (user.rpm_limit, user.rph_limit, user.tpm_limit) == (60, None, 100_000)
    assert await store.get_user(uid) == user
    with pytest.raises(UserNotFound):
        await store.set_user_limits(_uid(), rpm=1, rph=1, tpm=1)
    assert await store.get_user(_uid()) is None


@pytest.mark.asyncio
async def test_audit_is_empty_after_all_that(store: SupabaseStore) -> None:
    uid = _uid()
    await store.ensure_user(uid, Decimal(1))
    for i in range(3):
        await store.reserve(
            user_id=uid,
            request_id=f"req-{uid}-{i}",
            prompt_cost=Decimal("0.01"),
            output_price=Decimal("0.0001"),
            max_tokens=100,
            model_max_output=None,
            ttl_seconds=60,
        )
    await store.settle(
        user_id=uid,
        request_id=f"req-{uid}-0",
        cost=Decimal("0.015"),
        model="m",
        prompt_tokens=1,
        completion_tokens=1,
        description="d",
    )
    await store.release(user_id=uid, request_id=f"req-{uid}-1")
    assert await store.audit() == []


@pytest.mark.asyncio
async def test_amounts_travel_as_exact_decimal_strings(store: SupabaseStore, shim: PostgrestShim) -> None:
    uid = _uid()
    since = len(shim.requests)
    await store.ensure_user(uid, Decimal("123456789012.12345678"))
    for n, cost in enumerate((Decimal("0.1"), Decimal("0.2"))):
        settled = await store.settle(
            user_id=uid,
            request_id=f"req-{uid}-{n}",
            cost=cost,
            model="m",
            prompt_tokens=1,
            completion_tokens=1,
            description="d",
        )
    # 20 significant digits: read through a float this would come back as 123456789011.82346.
    assert settled.balance == Decimal("123456789011.82345678")
    user = await store.get_user(uid)
    assert user is not None and user.balance == Decimal("123456789011.82345678")

    assert [c["p_cost"] for c in _rpc_calls(shim, "billing_settle", since)] == ["0.1", "0.2"]
    assert _rpc_calls(shim, "billing_ensure_user", since)[0]["p_balance"] == "123456789012.12345678"
    sent = [r for r in shim.requests[since:] if r.path.startswith("/rest/v1/rpc/")]
    for request in sent:
        for name, value in request.json().items():
            if name in MONEY_PARAMS:
                assert isinstance(value, str), (name, request.body)
        assert "0.30000000000000004" not in request.body


@pytest.mark.asyncio
async def test_supabase_py_would_read_an_uncast_numeric_as_float(shim: PostgrestShim) -> None:
    """Why the adapter casts money to text: supabase-py decodes JSON numbers with json.loads."""
    uid = _uid()
    store = SupabaseStore(shim.url, SERVICE_KEY)
    await store.open()
    try:
        await store.ensure_user(uid, Decimal("123456789012.12345678"))
    finally:
        await store.close()
    async with httpx.AsyncClient() as http:
        client = await acreate_client(shim.url, SERVICE_KEY, options=AsyncClientOptions(httpx_client=http))
        response = await client.table("users").select("balance").eq("id", uid).execute()
    raw = [r for r in shim.requests if r.query == [("select", "balance"), ("id", f"eq.{uid}")]]
    assert raw and isinstance(response.data[0]["balance"], float)  # type: ignore[index,call-overload]
    assert Decimal(str(response.data[0]["balance"])) != Decimal("123456789012.12345678")  # type: ignore[index,call-overload]


@pytest.mark.asyncio
async def test_server_error_is_store_error_without_the_key(store: SupabaseStore, shim: PostgrestShim) -> None:
    body = json.dumps({"code": "XX000", "message": f"boom apikey={SERVICE_KEY}", "details": None})
    shim.fail_next(500, body)
    with pytest.raises(StoreError) as caught:
        await store.get_user(_uid())
    _no_key_anywhere(caught.value)
    assert "XX000" in str(caught.value)

    shim.fail_next(500, f"<html>proxy error, key {SERVICE_KEY}</html>", content_type="text/html")
    with pytest.raises(StoreError) as caught:
        await store.reserve(
            user_id=_uid(),
            request_id="r",
            prompt_cost=Decimal(1),
            output_price=Decimal(0),
            max_tokens=None,
            model_max_output=None,
            ttl_seconds=1,
        )
    _no_key_anywhere(caught.value)

    shim.fail_next(200, "<html>not json</html>", content_type="text/html")
    with pytest.raises(StoreError):
        await store.ping()
    await store.ping()


@pytest.mark.asyncio
async def test_closed_port_is_store_error_without_the_key() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = SupabaseStore(f"http://127.0.0.1:{port}", SERVICE_KEY)
    with pytest.raises(StoreError) as caught:
        await store.open()
    _no_key_anywhere(caught.value)
    with pytest.raises(StoreError):
        await store.ping()


@pytest.mark.asyncio
async def test_wrong_key_is_store_error(shim: PostgrestShim) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    since = len(shim.requests)
    store = SupabaseStore(shim.url, wrong)
    with pytest.raises(StoreError) as caught:
        await store.open()
    assert wrong not in str(caught.value)
    assert [r.headers.get("apikey") for r in shim.requests[since:]] == [wrong]


@pytest.mark.asyncio
async def test_requests_carry_the_service_key_and_ping_is_one_cheap_read(
    store: SupabaseStore, shim: PostgrestShim
) -> None:
    since = len(shim.requests)
    await store.ping()
    (request,) = shim.requests[since:]
    assert (request.method, request.path) == ("GET", "/rest/v1/users")
    assert dict(request.query) == {"select": "id", "limit": "1"}
    assert request.headers["apikey"] == SERVICE_KEY
    assert request.headers["authorization"] == f"Bearer {SERVICE_KEY}"
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.ping()
