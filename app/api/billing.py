"""The caller's own balance and ledger."""

from __future__ import annotations

from fastapi import APIRouter, Query

from app.accounts.auto_topup import rule_json
from app.api.deps import CurrentUser, State
from app.api.money_json import MoneyJSONResponse
from app.errors import NotFound, StoreUnavailable
from app.store.base import StoreError

router = APIRouter(prefix="/billing")
OFFSET_MAX = 10_000_000  # deeper pages than any ledger has; every store takes it as an integer


@router.get("/balance")
async def balance(principal: CurrentUser, state: State) -> MoneyJSONResponse:
    """Current balance (money held for calls in flight is included until they settle)."""
    try:
        user = await state.store.get_user(principal.user_id)
        rule = await state.store.get_auto_topup(principal.user_id)
    except StoreError as exc:
        raise StoreUnavailable("Billing is unavailable; try again.") from exc
    return MoneyJSONResponse(
        {
            "user_id": principal.user_id,
            "balance": user.balance if user else 0,
            "available": user.available if user else 0,
            "currency": state.settings.BILLING_CURRENCY,
            "debt": user.debt if user else 0,
            "auto_topup": rule_json(rule),
        }
    )


@router.get("/transactions")
async def transactions(
    principal: CurrentUser,
    state: State,
    limit: int = Query(10, ge=1, le=100),
    offset: int = Query(0, ge=0, le=OFFSET_MAX),
) -> MoneyJSONResponse:
    """The ledger, newest first; charges are negative."""
    try:
        rows = await state.store.transactions(principal.user_id, limit=limit, offset=offset)
    except StoreError as exc:
        raise StoreUnavailable("Billing is unavailable; try again.") from exc
    return MoneyJSONResponse(
        {
            "user_id": principal.user_id,
            "transactions": [
                {
                    "id": t.id,
                    "amount": t.amount,
                    "description": t.description,
                    "timestamp": t.timestamp.isoformat(),
                    "model": t.model,
                    "request_id": t.request_id,
                    "prompt_tokens": t.prompt_tokens,
                    "completion_tokens": t.completion_tokens,
                }
                for t in rows
            ],
            "limit": limit,
            "offset": offset,
        }
    )


@router.get("/requests/{request_id}")
async def request_record(request_id: str, principal: CurrentUser, state: State) -> MoneyJSONResponse:
    """One of the caller's calls: held, charged or released, with its usage and cost."""
    record = await state.store.get_request(principal.user_id, request_id[:128])
    if record is None:
        raise NotFound(f"No request '{request_id[:128]}' of yours is known.", code="request_not_found")
    return MoneyJSONResponse(
        {
            "request_id": record.request_id,
            "status": record.status,
            "model": record.model,
            "deployment": record.deployment,
            "usage": record.usage or {},
            "hold": record.hold,
            "cost": record.cost,
            "uncollected": record.uncollected,
            "currency": state.settings.BILLING_CURRENCY,
            "created": record.created.isoformat(),
            "settled": None if record.settled is None else record.settled.isoformat(),
        }
    )
