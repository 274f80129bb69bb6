"""Automatic top-ups: an off-session Stripe payment when a settle leaves the balance below a threshold.

Never on a call's path: `balance_changed` (BillingService.after_settle) only schedules a task. The
store decides atomically which settle starts the payment (at most one in flight per user, across
every worker), credits a succeeded one once per payment intent whether Stripe's answer or its
webhook reports it first, and counts a failure once per attempt; three in a row switch it off.
Stripe is called with the library's async methods; the attempt id is the idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import stripe

from app.errors import InvalidRequest
from app.store.base import Store, StoreError
from app.store.topups import AutoTopup, TopupClaim, TopupResult

log = logging.getLogger(__name__)

MAX_FAILURES = 3
# An attempt in flight this long (its worker died, or Stripe's answer was lost) is asked again,
# under the same idempotency key, by the next settle below the threshold.
STALE_SECONDS = 600
MAX_THRESHOLD = Decimal("10000")
CENTS = Decimal(100)
# Stripe's answer to these says nothing about whether the payment happened: wait, never count.
_AMBIGUOUS = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError)


def parse_threshold(raw: object) -> Decimal:
    """The balance below which to top up: more than 0, at most MAX_THRESHOLD, whole cents."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise InvalidRequest("'threshold' must be a number.", param="threshold")
    try:
        value = Decimal(str(raw))
    except InvalidOperation as exc:
        raise InvalidRequest("'threshold' must be a number.", param="threshold") from exc
    if not value.is_finite() or not 0 < value <= MAX_THRESHOLD or value * CENTS != int(value * CENTS):
        raise InvalidRequest(
            f"'threshold' must be more than 0 and at most {MAX_THRESHOLD}, with at most 2 decimals.",
            param="threshold",
        )
    return value


def rule_json(rule: AutoTopup | None) -> dict[str, Any] | None:
    """The rule as /billing/balance and /billing/auto-topup show it."""
    if rule is None:
        return None
    return {
        "threshold": rule.threshold,
        "amount": rule.amount,
        "enabled": rule.enabled,
        "failures": rule.failures,
        "last_error": rule.last_error,
        "in_flight": rule.in_flight,
    }


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _error_body(exc: stripe.StripeError) -> dict[str, Any]:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error = body.get("error")
    return error if isinstance(error, dict) else {}


def _intent_id(value: object) -> str | None:
    return _text(value.get("id")) if isinstance(value, dict) else _text(value)


def describe_error(error: object, fallback: str) -> str:
    """A Stripe error object (or a PaymentIntent's last_payment_error) as the user sees it."""
    if not isinstance(error, dict):
        return fallback
    code = _text(error.get("decline_code")) or _text(error.get("code")) or fallback
    message = _text(error.get("message"))
    return f"{code}: {message}"[:300] if message else code


async def record_intent(
    store: Store, intent: dict[str, Any], *, event_id: str | None, event_type: str, currency: str
) -> TopupResult | None:
    """Record what a PaymentIntent of an automatic top-up says; None if it is not one (or not final)."""
    attempt = _text((intent.get("metadata") or {}).get("auto_topup"))
    intent_id = _text(intent.get("id"))
    if attempt is None or intent_id is None:
        return None  # e.g. the intent of a Checkout session, credited through the session
    status = intent.get("status")
    if status == "succeeded":
        cents = intent.get("amount_received")
        if intent.get("currency") != currency or isinstance(cents, bool) or not isinstance(cents, int):
            log.error(
                "succeeded auto top-up in another currency or without an amount", extra={"pi": intent_id}
            )
            return None
        return await store.auto_topup_succeeded(
            attempt=attempt,
            payment_intent=intent_id,
            amount=Decimal(cents) / CENTS,
            event_id=event_id,
            event_type=event_type,
        )
    if status in ("requires_payment_method", "requires_action", "canceled") or (
        event_type == "payment_intent.payment_failed"
    ):
        fallback = "authentication_required" if status == "requires_action" else f"payment {status}"
        return await store.auto_topup_failed(
            attempt=attempt,
            payment_intent=intent_id,
            error=describe_error(intent.get("last_payment_error"), fallback),
            event_id=event_id,
            event_type=event_type,
            max_failures=MAX_FAILURES,
        )
    return None  # processing: the webhook will say how it ends


RULE_CACHE_SECONDS = 30.0
RULE_CACHE_SIZE = 100_000


class AutoTopups:
    """Starts the off-session payments, in background tasks, after settles."""

    def __init__(
        self,
        *,
        store: Store,
        client: stripe.StripeClient,
        currency: str,
        on_credit: Callable[[str], None] | None = None,
        stale_seconds: int = STALE_SECONDS,
    ) -> None:
        self._store = store
        self._client = client
        self._currency = currency.lower()
        self._on_credit = on_credit
        self._stale = stale_seconds
        self._tasks: set[asyncio.Task[None]] = set()
        # Per user: a check is running (True: another settle came meanwhile, check again after it).
        self._running: dict[str, bool] = {}
        # Per user: when the rule was read and its threshold (None: no rule, or switched off), so
        # a charge that leaves the balance above it costs no store query at all.
        self._rules: dict[str, tuple[float, Decimal | None]] = {}

    async def stop(self) -> None:
        # An attempt cut off here stays in flight and is asked again (same key) once stale.
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def charged(self, user_id: str, balance: Decimal) -> None:
        """After a charge: check only if the balance may be below the user's threshold.

        A rule set or changed in another process is seen within RULE_CACHE_SECONDS.
        """
        known = self._rules.get(user_id)
        if known is not None and time.monotonic() - known[0] < RULE_CACHE_SECONDS:
            if known[1] is None or balance >= known[1]:
                return
        self.balance_changed(user_id)

    def forget(self, user_id: str) -> None:
        """The user's rule changed here: read it again on the next charge."""
        self._rules.pop(user_id, None)

    def balance_changed(self, user_id: str) -> None:
        """Check the user's rule against the balance, in the background; never blocks."""
        if user_id in self._running:
            self._running[user_id] = True
            return
        self._running[user_id] = False
        task = asyncio.create_task(self._check(user_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, user_id: str) -> None:
        try:
            while True:
                try:
                    rule = await self._store.get_auto_topup(user_id)
                    if len(self._rules) >= RULE_CACHE_SIZE:
                        self._rules.clear()
                    threshold = rule.threshold if rule is not None and rule.enabled else None
                    self._rules[user_id] = (time.monotonic(), threshold)
                    claim = (
                        None
                        if threshold is None
                        else await self._store.auto_topup_claim(
                            user_id=user_id, attempt=f"atu_{uuid.uuid4().hex}", stale_seconds=self._stale
                        )
                    )
                    if claim is not None:
                        await self._charge(user_id, claim)
                except StoreError:
                    log.warning("auto top-up check skipped: the store is unavailable")
                if not self._running.get(user_id):
                    return
                self._running[user_id] = False
        finally:
            self._running.pop(user_id, None)

    async def _charge(self, user_id: str, claim: TopupClaim) -> None:
        params: dict[str, Any] = {
            "amount": int(claim.amount * CENTS),
            "currency": self._currency,
            "customer": claim.customer,
            "payment_method": claim.payment_method,
            "off_session": True,
            "confirm": True,
            "description": "Gateway credit (automatic top-up)",
            "metadata": {"user_id": user_id, "auto_topup": claim.attempt},
        }
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": f"auto-topup-{claim.attempt}"},
            )
        except stripe.CardError as exc:  # declined (402): Stripe's error names the intent it failed
            error = _error_body(exc)
            await self._store.auto_topup_failed(
                attempt=claim.attempt,
                payment_intent=_intent_id(error.get("payment_intent")),
                error=describe_error(error, "card_declined"),
                event_id=None,
                event_type="payment_intent.create",
                max_failures=MAX_FAILURES,
            )
            log.info("auto top-up declined", extra={"user": user_id, "stripe_code": exc.code})
            return
        except _AMBIGUOUS as exc:
            log.warning(
                "auto top-up: no answer from Stripe; asked again once stale",
                extra={"user": user_id, "stripe_status": exc.http_status},
            )
            return
        except stripe.StripeError as exc:  # refused outright (e.g. the card was detached)
            await self._store.auto_topup_failed(
                attempt=claim.attempt,
                payment_intent=None,
                error=describe_error(_error_body(exc), exc.code or "payment_error"),
                event_id=None,
                event_type="payment_intent.create",
                max_failures=MAX_FAILURES,
            )
            return
        result = await record_intent(
            self._store,
            intent.to_dict(),
            event_id=None,
            event_type="payment_intent.create",
            currency=self._currency,
        )
        if result is not None and result.status == "credited" and self._on_credit is not None:
            self._on_credit(user_id)
