"""Top-ups: POST /billing/checkout (a Stripe Checkout session) and Stripe's webhook."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.accounts.payments import not_configured, parse_topup
from app.api.deps import CurrentUser, JsonBody, State
from app.api.money_json import MoneyJSONResponse

router = APIRouter(prefix="/billing")


@router.post("/checkout")
async def checkout(principal: CurrentUser, state: State, body: JsonBody) -> MoneyJSONResponse:
    """Start a Stripe Checkout that tops up the caller's balance by `amount`."""
    if state.payments is None:
        raise not_configured()
    amount = parse_topup(body.get("amount"))
    url, session_id = await state.payments.checkout(user_id=principal.user_id, amount=amount)
    return MoneyJSONResponse({"url": url, "session_id": session_id})


@router.post("/stripe/webhook")
async def stripe_webhook(request: Request, state: State) -> MoneyJSONResponse:
    """Stripe's events, verified by their signature: paid checkouts credit, refunds and disputes debit."""
    if state.payments is None or not state.payments.webhook_enabled:
        raise not_configured()
    payload = await request.body()
    event = state.payments.verify(payload, request.headers.get("stripe-signature"))
    outcome = await state.payments.handle(event)
    if state.alerts is not None and outcome.action == "credited" and outcome.user_id:
        state.alerts.balance_changed(outcome.user_id)  # re-arms the thresholds it rose above
    return MoneyJSONResponse({"received": True, "id": outcome.event_id, "action": outcome.action})
