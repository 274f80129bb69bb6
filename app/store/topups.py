"""What the stores return about automatic top-ups (the rule, a claimed attempt, an outcome)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal


@dataclass(frozen=True, slots=True)
class AutoTopup:
    """A user's rule: below `threshold`, pay `amount`; off after three failures in a row."""

    threshold: Decimal
    amount: Decimal
    enabled: bool
    failures: int
    last_error: str | None
    in_flight: bool


@dataclass(frozen=True, slots=True)
class SavedCard:
    """The Stripe customer and payment method Checkout saved for off-session payments."""

    customer: str
    payment_method: str


@dataclass(frozen=True, slots=True)
class TopupClaim:
    """A payment this caller (alone) must now start; `attempt` is its Stripe idempotency key."""

    attempt: str
    amount: Decimal
    customer: str
    payment_method: str


@dataclass(frozen=True, slots=True)
class TopupResult:
    """What recording a payment's outcome did: credited/counted now, or it was known already."""

    status: Literal["credited", "counted", "duplicate", "unknown"]
    user_id: str | None
    balance: Decimal
    failures: int
    enabled: bool
