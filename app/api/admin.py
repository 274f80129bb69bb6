"""Admin API (ADMIN_API_KEY): accounts, keys, credits and limits."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter, Query

from app.accounts.keys import KeyService, key_json, parse_policy
from app.accounts.usage import day_range, group_by, usage_json
from app.api.deps import Admin, JsonBody, State
from app.api.money_json import MoneyJSONResponse
from app.errors import InvalidRequest, NotFound, StoreUnavailable
from app.store.base import BalanceConflict, StoreError, User, UserNotFound, money

router = APIRouter(prefix="/admin", dependencies=[Admin])

MAX_AMOUNT = Decimal("1000000000")


def _amount(body: dict[str, Any], key: str, *, required: bool) -> Decimal | None:
    raw = body.get(key)
    if raw is None:
        if required:
            raise InvalidRequest(f"'{key}' is required.", param=key)
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise InvalidRequest(f"'{key}' must be a number.", param=key)
    try:
        # str() first: a JSON number parsed as float must not carry binary noise into money.
        value = Decimal(str(raw))
    except InvalidOperation as exc:
        raise InvalidRequest(f"'{key}' must be a number.", param=key) from exc
    if not value.is_finite() or abs(value) > MAX_AMOUNT or value != money(value):
        raise InvalidRequest(f"'{key}' must be a finite amount with at most 8 decimals.", param=key)
    return value


def _optional_str(body: dict[str, Any], key: str, *, max_len: int = 200) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise InvalidRequest(
            f"'{key}' must be a non-empty string of at most {max_len} characters.", param=key
        )
    return value


@router.post("/users", status_code=201)
async def create_user(body: JsonBody, state: State) -> MoneyJSONResponse:
    """Create an account with an opening balance (credited through the ledger)."""
    user_id = _optional_str(body, "user_id") or "user_" + secrets.token_hex(8)
    if "/" in user_id or not user_id.isprintable() or user_id != user_id.strip():
        # Such an id could never be addressed again as /admin/users/{user_id}.
        raise InvalidRequest(
            "'user_id' must not contain '/', spaces at either end or control characters.", param="user_id"
        )
    balance = _amount(body, "balance", required=False) or Decimal(0)
    if balance < 0:
        raise InvalidRequest("'balance' must not be negative.", param="balance")
    try:
        user, created = await state.store.ensure_user(user_id, balance)
    except StoreError as exc:
        raise StoreUnavailable("The account store is unavailable.") from exc
    if not created:
        # The caller's mistake, not the gateway's: OpenAI's type for that is invalid_request_error.
        raise InvalidRequest(f"User '{user_id}' already exists.", code="user_exists", status_code=409)
    return MoneyJSONResponse({"user_id": user.id, "balance": user.balance}, status_code=201)


@router.post("/users/{user_id}/keys", status_code=201)
async def create_key(user_id: str, body: JsonBody, state: State) -> MoneyJSONResponse:
    """Issue an API key (optionally with a budget, expiry and models); shown only in this response."""
    name, policy = _optional_str(body, "name"), parse_policy(body)
    keys = KeyService(store=state.store, auth=state.auth)
    key, key_id = await keys.issue(user_id=user_id, name=name, policy=policy)
    return MoneyJSONResponse(
        {"key": key, "key_id": key_id, "user_id": user_id, "name": name}, status_code=201
    )


@router.get("/users/{user_id}/keys")
async def list_keys(user_id: str, state: State) -> MoneyJSONResponse:
    """A user's keys with their budgets, expiry and allowed models."""
    keys = await KeyService(store=state.store, auth=state.auth).list(user_id)
    return MoneyJSONResponse({"user_id": user_id, "keys": [key_json(k) for k in keys]})


@router.put("/users/{user_id}/keys/{key_id}")
async def restrict_key(user_id: str, key_id: str, body: JsonBody, state: State) -> MoneyJSONResponse:
    """Replace a key's budget, expiry and allowed models (absent = no limit); a new budget starts now."""
    keys = KeyService(store=state.store, auth=state.auth)
    await keys.restrict(user_id=user_id, key_id=key_id, policy=parse_policy(body))
    (key,) = [k for k in await keys.list(user_id) if k.key_id == key_id]
    return MoneyJSONResponse(key_json(key))


@router.delete("/users/{user_id}/keys/{key_id}")
async def revoke_key(user_id: str, key_id: str, state: State) -> MoneyJSONResponse:
    """Revoke a key; it stops working at once in this worker."""
    try:
        revoked = await state.store.revoke_api_key(user_id=user_id, key_id=key_id)
    except StoreError as exc:
        raise StoreUnavailable("The account store is unavailable.") from exc
    if not revoked:
        raise NotFound(f"No active key '{key_id}' for user '{user_id}'.", code="key_not_found")
    state.auth.invalidate_user(user_id)
    return MoneyJSONResponse({"key_id": key_id, "revoked": True})


@router.post("/users/{user_id}/credits")
async def add_credits(user_id: str, body: JsonBody, state: State) -> MoneyJSONResponse:
    """Top up (or, with a negative amount, adjust) a balance; once per idempotency_key."""
    amount = _amount(body, "amount", required=True)
    assert amount is not None
    if amount == 0:
        raise InvalidRequest("'amount' must not be zero.", param="amount")
    description = _optional_str(body, "description") or ("credit" if amount > 0 else "adjustment")
    key = _optional_str(body, "idempotency_key")
    try:
        balance, applied = await state.store.credit(
            user_id=user_id, amount=amount, description=description, idempotency_key=key
        )
    except UserNotFound as exc:
        raise NotFound(f"User '{user_id}' does not exist.", code="user_not_found") from exc
    except BalanceConflict as exc:
        raise InvalidRequest("The adjustment would take the balance below zero.", param="amount") from exc
    except StoreError as exc:
        raise StoreUnavailable("The account store is unavailable.") from exc
    if state.alerts is not None and applied:
        state.alerts.balance_changed(user_id)  # re-arms the thresholds it rose above
    return MoneyJSONResponse({"user_id": user_id, "balance": balance, "applied": applied})


def _user_json(user: User) -> dict[str, Any]:
    return {
        "user_id": user.id,
        "balance": user.balance,
        "reserved": user.reserved,
        "available": user.available,
        "debt": user.debt,
        "rpm_limit": user.rpm_limit,
        "rph_limit": user.rph_limit,
        "tpm_limit": user.tpm_limit,
    }


@router.get("/users")
async def list_users(
    state: State, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=10_000_000)
) -> MoneyJSONResponse:
    """Accounts ordered by id, with balances, holds, debt and limits."""
    try:
        users = await state.store.list_users(limit=limit, offset=offset)
    except StoreError as exc:
        raise StoreUnavailable("The account store is unavailable.") from exc
    return MoneyJSONResponse({"users": [_user_json(u) for u in users], "limit": limit, "offset": offset})


@router.get("/usage")
async def usage(
    state: State,
    start: str | None = None,
    end: str | None = None,
    group: str = Query("day", alias="group_by"),
) -> MoneyJSONResponse:
    """Every account's requests, tokens and cost per UTC day, model or key (default: 30 days)."""
    first, after = day_range(start, end, now=datetime.now(UTC))
    grouping = group_by(group)
    try:
        rows = await state.store.usage_all(start=first, end=after, group_by=grouping)
    except StoreError as exc:
        raise StoreUnavailable("The account store is unavailable.") from exc
    return MoneyJSONResponse(usage_json(rows, grouping, state.settings.BILLING_CURRENCY))


@router.get("/users/{user_id}")
async def get_user(user_id: str, state: State) -> MoneyJSONResponse:
    """An account's balance, holds and limits."""
    try:
        user = await state.store.get_user(user_id)
    except StoreError as exc:
        raise StoreUnavailable("The account store is unavailable.") from exc
    if user is None:
        raise NotFound(f"User '{user_id}' does not exist.", code="user_not_found")
    return MoneyJSONResponse(_user_json(user))


def _limit(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= LIMIT_MAX:
        raise InvalidRequest(f"'{key}' must be an integer from 0 to {LIMIT_MAX}, or null.", param=key)
    return value


LIMIT_MAX = 2**31 - 1  # the stores keep limits as 32-bit integers


@router.put("/users/{user_id}/limits")
async def set_limits(user_id: str, body: JsonBody, state: State) -> MoneyJSONResponse:
    """Per-user rate limits (null = the gateway default)."""
    rpm, rph, tpm = _limit(body, "rpm_limit"), _limit(body, "rph_limit"), _limit(body, "tpm_limit")
    try:
        user = await state.store.set_user_limits(user_id, rpm=rpm, rph=rph, tpm=tpm)
    except UserNotFound as exc:
        raise NotFound(f"User '{user_id}' does not exist.", code="user_not_found") from exc
    except StoreError as exc:
        raise StoreUnavailable("The account store is unavailable.") from exc
    state.auth.invalidate_user(user_id)
    return MoneyJSONResponse(
        {
            "user_id": user.id,
            "rpm_limit": user.rpm_limit,
            "rph_limit": user.rph_limit,
            "tpm_limit": user.tpm_limit,
        }
    )
