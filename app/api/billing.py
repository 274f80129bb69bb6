"""The caller's own balance and ledger."""

from __future__ import annotations

from fastapi import APIRouter, Query

from app.api.deps import CurrentUser, State
from app.api.responses import MoneyJSONResponse
from app.errors import StoreUnavailable
from app.store.base import StoreError

router = APIRouter(prefix="/billing")


@router.get("/balance")
async def balance(principal: CurrentUser, state: State) -> MoneyJSONResponse:
    """Current balance (money held for calls in flight is included until they settle)."""
    try:
        user = await state.store.get_user(principal.user_id)
    except StoreError as exc:
        raise StoreUnavailable("Billing is unavailable; try again.") from exc
    return MoneyJSONResponse(
        {
            "user_id": principal.user_id,
            "balance": user.balance if user else 0,
            "available": user.available if user else 0,
            "currency": state.settings.BILLING_CURRENCY,
            "debt": user.debt if user else 0,
            "auto_topup": None,  # automatic top-ups are not built yet
        }
    )


@router.get("/transactions")
async def transactions(
    principal: CurrentUser,
    state: State,
    limit: int = Query(10, ge=1, le=100),
    offset: int = Query(0, ge=0),
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
