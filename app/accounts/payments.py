"""Top-ups through Stripe: Checkout sessions, and the webhook that credits (and takes back) them.

Calls to Stripe go through the official library's async methods (`*_async`, over httpx), never
its blocking client on the event loop. Verifying a webhook signature is local HMAC work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import stripe

from app.accounts.auto_topup import record_intent
from app.config import Settings
from app.errors import GatewayError, InvalidRequest, StoreUnavailable, UpstreamError
from app.store.base import Store, StoreError, UserNotFound

log = logging.getLogger(__name__)

MIN_TOPUP = Decimal("1")
MAX_TOPUP = Decimal("10000")
CENTS = Decimal(100)
# Stripe's signed timestamp may be at most this old (the library's default).
SIGNATURE_TOLERANCE_SECONDS = 300


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    """What the gateway did with one event (sent back to Stripe, which only reads the status)."""

    event_id: str
    type: str
    action: str  # credited, duplicate, reversed, counted (a failed auto top-up), ignored
    user_id: str | None = None


def parse_topup(raw: object) -> Decimal:
    """A top-up amount in the billing currency: whole cents, between MIN_TOPUP and MAX_TOPUP."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise InvalidRequest("'amount' must be a number.", param="amount")
    try:
        value = Decimal(str(raw))
    except InvalidOperation as exc:
        raise InvalidRequest("'amount' must be a number.", param="amount") from exc
    if not value.is_finite() or not MIN_TOPUP <= value <= MAX_TOPUP or value * CENTS != int(value * CENTS):
        raise InvalidRequest(
            f"'amount' must be between {MIN_TOPUP} and {MAX_TOPUP} with at most 2 decimals.", param="amount"
        )
    return value


def _cents(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest("The event carries no valid amount.")
    return Decimal(value) / CENTS


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class StripePayments:
    """Checkout for top-ups and the webhook's effects on the ledger."""

    def __init__(
        self,
        *,
        store: Store,
        secret_key: str,
        webhook_secret: str,
        success_url: str,
        cancel_url: str,
        currency: str,
        api_base: str = "",
    ) -> None:
        self._store = store
        self._webhook_secret = webhook_secret
        self._success_url = success_url
        self._cancel_url = cancel_url
        self.currency = currency.lower()
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base.rstrip("/")} if api_base else {},
            http_client=stripe.HTTPXClient(),
            max_network_retries=2,
        )

    @classmethod
    def from_settings(cls, settings: Settings, store: Store) -> StripePayments | None:
        """Payments when STRIPE_SECRET_KEY is set; None otherwise (the routes then answer 404)."""
        if not settings.STRIPE_SECRET_KEY:
            return None
        return cls(
            store=store,
            secret_key=settings.STRIPE_SECRET_KEY,
            webhook_secret=settings.STRIPE_WEBHOOK_SECRET,
            success_url=settings.STRIPE_SUCCESS_URL,
            cancel_url=settings.STRIPE_CANCEL_URL,
            currency=settings.BILLING_CURRENCY,
            api_base=settings.STRIPE_API_BASE,
        )

    @property
    def webhook_enabled(self) -> bool:
        return bool(self._webhook_secret)

    @property
    def client(self) -> stripe.StripeClient:
        """The Stripe client (async methods only), shared with automatic top-ups."""
        return self._client

    async def checkout(self, *, user_id: str, amount: Decimal) -> tuple[str, str]:
        """A Checkout session that tops up `amount`; returns (url, session_id)."""
        params: dict[str, Any] = {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": self.currency,
                        "unit_amount": int(amount * CENTS),
                        "product_data": {"name": "Gateway credit"},
                    },
                }
            ],
            "client_reference_id": user_id,
            "metadata": {"user_id": user_id},
            # Saved for later off-session top-ups.
            "payment_intent_data": {"metadata": {"user_id": user_id}, "setup_future_usage": "off_session"},
            "success_url": self._success_url,
            "cancel_url": self._cancel_url,
        }
        # The card is saved on a Stripe customer (off-session payments need one): the user's own
        # once known, else a new one that the paid session's webhook remembers.
        try:
            saved = await self._store.saved_card(user_id)
        except StoreError as exc:
            raise StoreUnavailable("Billing is unavailable; try again.") from exc
        if saved is not None:
            params["customer"] = saved.customer
        else:
            params["customer_creation"] = "always"
        try:
            session = await self._client.v1.checkout.sessions.create_async(params)  # type: ignore[arg-type]
        except stripe.StripeError as exc:
            # The message may carry request details; the status and code are enough for the caller.
            log.warning(
                "stripe checkout failed", extra={"stripe_status": exc.http_status, "stripe_code": exc.code}
            )
            raise UpstreamError("The payment provider could not start a checkout; try again.") from None
        if not session.url:
            raise UpstreamError("The payment provider returned no checkout URL.")
        return session.url, session.id

    def verify(self, payload: bytes, signature: str | None) -> stripe.Event:
        """The event, if `Stripe-Signature` proves Stripe sent exactly this body recently."""
        if not signature:
            raise InvalidRequest("Missing Stripe-Signature header.", code="invalid_signature")
        try:
            event: stripe.Event = stripe.Webhook.construct_event(
                payload, signature, self._webhook_secret, tolerance=SIGNATURE_TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError:
            raise InvalidRequest("Invalid Stripe-Signature.", code="invalid_signature") from None
        except ValueError:
            raise InvalidRequest("The webhook body is not a Stripe event.", code="invalid_event") from None
        return event

    async def handle(self, event: stripe.Event) -> WebhookOutcome:
        """Apply one verified event to the ledger, once however often it is delivered."""
        # Plain dicts: Stripe's objects refuse dict methods and raise on absent keys.
        obj: dict[str, Any] = event.data.object.to_dict()
        try:
            if event.type in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
                return await self._paid(event, obj)
            if event.type == "charge.refunded":
                return await self._reverse(event, obj.get("payment_intent"), obj.get("amount_refunded"), True)
            if event.type == "charge.dispute.created":
                return await self._reverse(event, obj.get("payment_intent"), obj.get("amount"), False)
            if event.type in ("payment_intent.succeeded", "payment_intent.payment_failed"):
                return await self._intent(event, obj)
        except StoreError as exc:
            # A non-2xx answer makes Stripe deliver the event again later.
            raise StoreUnavailable("Billing is unavailable; the event was not applied.") from exc
        return WebhookOutcome(event.id, event.type, "ignored")

    async def _paid(self, event: stripe.Event, session: dict[str, Any]) -> WebhookOutcome:
        if session.get("payment_status") != "paid":
            return WebhookOutcome(event.id, event.type, "ignored")  # async methods: paid later
        user_id = _text((session.get("metadata") or {}).get("user_id")) or _text(
            session.get("client_reference_id")
        )
        currency = session.get("currency")
        if user_id is None or currency != self.currency:
            log.error(
                "paid checkout session without a user or in another currency",
                extra={"session": session.get("id")},
            )
            return WebhookOutcome(event.id, event.type, "ignored")
        session_id = _text(session.get("id"))
        if session_id is None:
            return WebhookOutcome(event.id, event.type, "ignored")
        try:
            applied, _ = await self._store.payment_credit(
                user_id=user_id,
                session_id=session_id,
                payment_intent=_text(session.get("payment_intent")),
                amount=_cents(session.get("amount_total")),
                event_id=event.id,
                event_type=event.type,
            )
        except UserNotFound:
            log.error("paid checkout session for an unknown user", extra={"session": session.get("id")})
            return WebhookOutcome(event.id, event.type, "ignored")
        # On redeliveries too: if saving failed once, Stripe's next delivery saves it.
        await self._save_card(user_id, _text(session.get("customer")), _text(session.get("payment_intent")))
        return WebhookOutcome(event.id, event.type, "credited" if applied else "duplicate", user_id)

    async def _save_card(self, user_id: str, customer: str | None, payment_intent: str | None) -> None:
        """Remember the session's customer and card for automatic top-ups."""
        if customer is None or payment_intent is None:
            return
        try:
            intent = await self._client.v1.payment_intents.retrieve_async(payment_intent)
        except stripe.StripeError as exc:
            log.warning("could not read a paid session's payment", extra={"stripe_status": exc.http_status})
            # A non-2xx answer: Stripe delivers the event again (its credit is then a duplicate).
            raise UpstreamError(
                "The payment provider could not be reached; the card was not saved."
            ) from None
        method = intent.payment_method
        method_id = method if isinstance(method, str) else getattr(method, "id", None)
        if method_id:
            await self._store.save_payment_method(
                user_id=user_id, customer=customer, payment_method=method_id
            )

    async def _intent(self, event: stripe.Event, intent: dict[str, Any]) -> WebhookOutcome:
        result = await record_intent(
            self._store, intent, event_id=event.id, event_type=event.type, currency=self.currency
        )
        if result is None:
            return WebhookOutcome(event.id, event.type, "ignored")
        action = {"credited": "credited", "counted": "counted", "duplicate": "duplicate"}.get(
            result.status, "ignored"
        )
        return WebhookOutcome(event.id, event.type, action, result.user_id)

    async def _reverse(
        self, event: stripe.Event, payment_intent: object, amount: object, cumulative: bool
    ) -> WebhookOutcome:
        intent = _text(payment_intent)
        if intent is None:
            return WebhookOutcome(event.id, event.type, "ignored")
        r = await self._store.payment_reverse(
            payment_intent=intent,
            amount=_cents(amount),
            cumulative=cumulative,
            event_id=event.id,
            event_type=event.type,
        )
        if r.status == "applied" and r.debt > 0:
            log.warning("payment reversed beyond the balance: account in debt", extra={"user": r.user_id})
        action = {"applied": "reversed", "duplicate": "duplicate"}.get(r.status, "ignored")
        return WebhookOutcome(event.id, event.type, action)


def not_configured() -> GatewayError:
    return GatewayError(
        "Payments are not configured on this gateway.", code="payments_not_configured", status_code=404
    )
