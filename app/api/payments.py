"""Top-ups: POST /billing/checkout (a Stripe Checkout session), automatic top-ups, Stripe's webhook."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.accounts.auto_topup import parse_threshold, rule_json
from app.accounts.payments import not_configured, parse_topup
from app.api.deps import CurrentUser, JsonBody, State
from app.api.money_json import MoneyJSONResponse
from app.auth.service import Principal
from app.errors import GatewayError, PermissionDenied, StoreUnavailable
from app.store.base import StoreError

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


def _session_only(principal: Principal) -> None:
    # An API key runs programs; charging the card is for the signed-in user.
    if principal.via != "jwt":
        raise PermissionDenied("Automatic top-ups need a signed-in session (JWT), not an API key.")


@router.put("/auto-topup")
async def set_auto_topup(principal: CurrentUser, state: State, body: JsonBody) -> MoneyJSONResponse:
    """Top up `amount` on the saved card whenever a call leaves the balance below `threshold`."""
    if state.payments is None:
        raise not_configured()
    _session_only(principal)
    threshold = parse_threshold(body.get("threshold"))
    amount = parse_topup(body.get("amount"))
    try:
        if not await state.store.set_auto_topup(
            user_id=principal.user_id, threshold=threshold, amount=amount
        ):
            raise GatewayError(
                "No saved card: pay once with POST /billing/checkout, then set automatic top-ups.",
                code="no_saved_payment_method",
                status_code=409,
            )
        rule = await state.store.get_auto_topup(principal.user_id)
    except StoreError as exc:
        raise StoreUnavailable("Billing is unavailable; try again.") from exc
    if state.auto_topups is not None:
        state.auto_topups.forget(principal.user_id)
    return MoneyJSONResponse({"user_id": principal.user_id, "auto_topup": rule_json(rule)})


@router.delete("/auto-topup")
async def delete_auto_topup(principal: CurrentUser, state: State) -> MoneyJSONResponse:
    """Switch automatic top-ups off (a payment already started still credits when it succeeds)."""
    if state.payments is None:
        raise not_configured()
    _session_only(principal)
    try:
        deleted = await state.store.delete_auto_topup(principal.user_id)
    except StoreError as exc:
        raise StoreUnavailable("Billing is unavailable; try again.") from exc
    if state.auto_topups is not None:
        state.auto_topups.forget(principal.user_id)
    return MoneyJSONResponse({"user_id": principal.user_id, "auto_topup": None, "deleted": deleted})
