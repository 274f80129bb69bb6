"""The caller's own keys (/account/keys), usage (/billing/usage) and ledger as CSV."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Query
from fastapi.responses import Response

from app.accounts.keys import KeyService, key_json, parse_name, parse_policy
from app.accounts.usage import day_range, group_by, transactions_csv, usage_json
from app.api.deps import CurrentUser, JsonBody, State
from app.api.money_json import MoneyJSONResponse
from app.auth.service import Principal
from app.errors import PermissionDenied, StoreUnavailable
from app.state import AppState
from app.store.base import StoreError

router = APIRouter()


def _keys(state: AppState) -> KeyService:
    return KeyService(store=state.store, auth=state.auth)


def _session_only(principal: Principal) -> None:
    if principal.via != "jwt":
        raise PermissionDenied("Creating or revoking keys needs a signed-in session (JWT), not an API key.")


@router.get("/account/keys")
async def list_keys(principal: CurrentUser, state: State) -> MoneyJSONResponse:
    """The caller's keys with their budgets, expiry and allowed models."""
    keys = await _keys(state).list(principal.user_id)
    return MoneyJSONResponse({"user_id": principal.user_id, "keys": [key_json(k) for k in keys]})


@router.post("/account/keys", status_code=201)
async def create_key(principal: CurrentUser, state: State, body: JsonBody) -> MoneyJSONResponse:
    """Issue a key for the signed-in user; the key itself is shown only in this response."""
    _session_only(principal)
    name, policy = parse_name(body), parse_policy(body)
    key, key_id = await _keys(state).issue(user_id=principal.user_id, name=name, policy=policy)
    return MoneyJSONResponse({"key": key, "key_id": key_id, "name": name}, status_code=201)


@router.delete("/account/keys/{key_id}")
async def revoke_key(key_id: str, principal: CurrentUser, state: State) -> MoneyJSONResponse:
    """Revoke one of the signed-in user's keys."""
    _session_only(principal)
    await _keys(state).revoke(user_id=principal.user_id, key_id=key_id)
    return MoneyJSONResponse({"key_id": key_id, "revoked": True})


@router.get("/billing/usage")
async def usage(
    principal: CurrentUser,
    state: State,
    start: str | None = None,
    end: str | None = None,
    group: str = Query("day", alias="group_by"),
) -> MoneyJSONResponse:
    """Requests, tokens and cost per UTC day, model or key, from the incremental rollups."""
    first, after = day_range(start, end, now=datetime.now(UTC))
    grouping = group_by(group)
    try:
        rows = await state.store.usage(principal.user_id, start=first, end=after, group_by=grouping)
    except StoreError as exc:
        raise StoreUnavailable("Billing is unavailable; try again.") from exc
    return MoneyJSONResponse(usage_json(rows, grouping, state.settings.BILLING_CURRENCY))


@router.get("/billing/transactions.csv")
async def transactions_download(
    principal: CurrentUser,
    state: State,
    limit: int = Query(1000, ge=1, le=10000),
    offset: int = Query(0, ge=0),
) -> Response:
    """The ledger, newest first, as a CSV download."""
    try:
        rows = await state.store.transactions(principal.user_id, limit=limit, offset=offset)
    except StoreError as exc:
        raise StoreUnavailable("Billing is unavailable; try again.") from exc
    return Response(
        transactions_csv(rows),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="transactions.csv"'},
    )
