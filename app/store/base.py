"""The store contract: accounts, API keys and money, one protocol for every backend."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal, Protocol

from app.errors import StoreFailure
from app.store.topups import AutoTopup, SavedCard, TopupClaim, TopupResult

MONEY_PLACES = Decimal("0.00000001")
# Token counts in billing_reserve are Postgres integers. Asking for more tokens than that is the
# same request as asking for that many: no provider generates two billion tokens in one call.
TOKEN_LIMIT = 2**31 - 1


def token_count(value: int | None) -> int | None:
    """A max_tokens-like count as the stores take it: at most TOKEN_LIMIT."""
    return None if value is None else min(value, TOKEN_LIMIT)


class StoreError(StoreFailure):
    """The store could not be reached or failed; callers fail closed."""


class UserExists(StoreFailure):
    """An account with that id already exists."""


class UserNotFound(StoreFailure):
    """No account with that id."""


class BalanceConflict(StoreFailure):
    """The change would take money that is not there (or is held for calls in flight)."""


@dataclass(frozen=True, slots=True)
class User:
    id: str
    balance: Decimal
    reserved: Decimal
    rpm_limit: int | None = None
    rph_limit: int | None = None
    tpm_limit: int | None = None
    # What refunds took back beyond the balance; calls are refused until credits pay it.
    debt: Decimal = Decimal(0)

    @property
    def available(self) -> Decimal:
        return self.balance - self.reserved


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    user_id: str
    name: str | None
    revoked: bool
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    budget: Decimal | None = None
    budget_period: BudgetPeriod | None = None
    budget_spent: Decimal = Decimal(0)  # in the current period, as of the last charge
    expires_at: datetime | None = None
    models: tuple[str, ...] | None = None
    created: datetime | None = None


BudgetPeriod = Literal["day", "week", "month", "total"]
UsageGroup = Literal["day", "model", "key"]


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """What a key may spend (per period), until when, and on which models; None means no limit."""

    budget: Decimal | None = None
    period: BudgetPeriod | None = None
    expires_at: datetime | None = None
    models: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One group of the usage rollups: a day (ISO date), a model or a key id ('' for sessions)."""

    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal


@dataclass(frozen=True, slots=True)
class Reversal:
    """A refund or dispute applied to a payment: what the balance gave back, what became debt."""

    status: Literal["applied", "duplicate", "unknown_payment"]
    user_id: str | None
    taken: Decimal
    debt: Decimal
    balance: Decimal


ReserveStatus = Literal[
    "ok",
    "insufficient",
    "no_account",
    "duplicate",
    "key_revoked",
    "key_expired",
    "model_not_allowed",
    "key_budget",
    "debt",
]


@dataclass(frozen=True, slots=True)
class Reservation:
    status: ReserveStatus
    max_tokens: int | None
    hold: Decimal
    available: Decimal


@dataclass(frozen=True, slots=True)
class Settlement:
    status: Literal["charged", "duplicate"]
    charged: Decimal
    balance: Decimal


RequestStatus = Literal["held", "charged", "released"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One call as billing saw it: held, then charged or released."""

    request_id: str
    status: RequestStatus
    model: str | None
    deployment: str | None
    hold: Decimal
    cost: Decimal | None
    uncollected: Decimal
    usage: dict[str, Any] | None
    created: datetime
    settled: datetime | None


@dataclass(frozen=True, slots=True)
class Transaction:
    id: str
    amount: Decimal
    kind: str
    description: str
    timestamp: datetime
    model: str | None
    request_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass(frozen=True, slots=True)
class AuditRow:
    user_id: str
    balance: Decimal
    ledger_sum: Decimal
    reserved: Decimal
    held_sum: Decimal


class Store(Protocol):
    """Accounts, keys and the ledger. Every method is one atomic operation."""

    kind: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def ensure_user(self, user_id: str, balance: Decimal) -> tuple[User, bool]:
        """Create the account once (crediting `balance` via the ledger); True if created now."""
        ...

    async def get_user(self, user_id: str) -> User | None: ...

    async def set_user_limits(
        self, user_id: str, *, rpm: int | None, rph: int | None, tpm: int | None
    ) -> User: ...

    async def create_api_key(self, *, user_id: str, key_id: str, key_hash: str, name: str | None) -> None: ...

    async def find_api_key(self, key_hash: str) -> ApiKey | None: ...

    async def revoke_api_key(self, *, user_id: str, key_id: str) -> bool: ...

    async def credit(
        self, *, user_id: str, amount: Decimal, description: str, idempotency_key: str | None
    ) -> tuple[Decimal, bool]:
        """Add credit once per idempotency key; returns (balance, applied now)."""
        ...

    async def reserve(
        self,
        *,
        user_id: str,
        request_id: str,
        prompt_cost: Decimal,
        output_price: Decimal,
        max_tokens: int | None,
        model_max_output: int | None,
        ttl_seconds: int,
        model: str | None = None,
        key_id: str | None = None,
    ) -> Reservation:
        """Hold the most a call can cost, within the balance and the key's policy, atomically."""
        ...

    async def settle(
        self,
        *,
        user_id: str,
        request_id: str,
        cost: Decimal,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        description: str,
        deployment: str | None = None,
        usage: dict[str, Any] | None = None,
    ) -> Settlement: ...

    async def release(self, *, user_id: str, request_id: str) -> bool: ...

    async def sweep_expired(self) -> int: ...

    async def transactions(self, user_id: str, *, limit: int, offset: int) -> list[Transaction]: ...

    async def get_request(self, user_id: str, request_id: str) -> RequestRecord | None:
        """The record of one of the user's calls; None if it is not theirs or unknown."""
        ...

    async def list_api_keys(self, user_id: str) -> list[ApiKey]:
        """The user's keys (revoked ones included), oldest first."""
        ...

    async def set_key_policy(self, *, user_id: str, key_id: str, policy: KeyPolicy) -> bool:
        """Replace a key's budget, expiry and model list; a new budget counts from now."""
        ...

    async def usage(self, user_id: str, *, start: date, end: date, group_by: UsageGroup) -> list[UsageRow]:
        """Usage rollups for days in [start, end), grouped by day, model or key."""
        ...

    async def list_users(self, *, limit: int, offset: int) -> list[User]:
        """Accounts ordered by id, for the admin view."""
        ...

    async def usage_all(self, *, start: date, end: date, group_by: UsageGroup) -> list[UsageRow]:
        """Every account's usage rollups for days in [start, end), grouped by day, model or key."""
        ...

    async def payment_credit(
        self,
        *,
        user_id: str,
        session_id: str,
        payment_intent: str | None,
        amount: Decimal,
        event_id: str,
        event_type: str,
    ) -> tuple[bool, Decimal]:
        """Credit a paid checkout once per session and per event id; debt is paid first."""
        ...

    async def payment_reverse(
        self, *, payment_intent: str, amount: Decimal, cumulative: bool, event_id: str, event_type: str
    ) -> Reversal:
        """Take a refunded or disputed payment back once per event; what is not there becomes debt."""
        ...

    async def alert_crossings(self, user_id: str, thresholds: list[Decimal]) -> list[tuple[Decimal, Decimal]]:
        """Thresholds the balance has just fallen below, once each until it rises above them again.

        Returns (threshold, balance) pairs; thresholds the balance is at or above are re-armed.
        """
        ...

    async def save_payment_method(self, *, user_id: str, customer: str, payment_method: str) -> None:
        """Remember the card a paid Checkout saved (the newest replaces the last)."""
        ...

    async def saved_card(self, user_id: str) -> SavedCard | None: ...

    async def set_auto_topup(self, *, user_id: str, threshold: Decimal, amount: Decimal) -> bool:
        """Set or re-enable the rule (failures back to 0); False when no card is saved."""
        ...

    async def delete_auto_topup(self, user_id: str) -> bool: ...

    async def get_auto_topup(self, user_id: str) -> AutoTopup | None: ...

    async def auto_topup_claim(self, *, user_id: str, attempt: str, stale_seconds: int) -> TopupClaim | None:
        """The payment to start now, if the balance is below the threshold and none is in flight.

        Atomic: of any number of concurrent callers, one gets it. An attempt in flight for longer
        than `stale_seconds` is handed out again under its own id (Stripe then dedupes it).
        """
        ...

    async def auto_topup_succeeded(
        self, *, attempt: str, payment_intent: str, amount: Decimal, event_id: str | None, event_type: str
    ) -> TopupResult:
        """Credit a succeeded payment once per payment intent (and per event id when given)."""
        ...

    async def auto_topup_failed(
        self,
        *,
        attempt: str,
        payment_intent: str | None,
        error: str,
        event_id: str | None,
        event_type: str,
        max_failures: int,
    ) -> TopupResult:
        """Count a failed attempt once; `max_failures` in a row switch the rule off."""
        ...

    async def audit(self) -> list[AuditRow]:
        """Accounts whose balance is not their ledger sum, or whose holds don't add up."""
        ...


class Row(Protocol):
    """A database row read by column name (asyncpg.Record, sqlite3.Row, a JSON object)."""

    def __getitem__(self, key: str, /) -> Any: ...


def to_decimal(value: object) -> Decimal:
    """Exact Decimal from a NUMERIC read as Decimal, text or int (never via float)."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def user_from_row(row: Row) -> User:
    """An account from a `users` row, whichever backend read it."""
    return User(
        id=row["id"],
        balance=to_decimal(row["balance"]),
        reserved=to_decimal(row["reserved"]),
        rpm_limit=row["rpm_limit"],
        rph_limit=row["rph_limit"],
        tpm_limit=row["tpm_limit"],
        debt=to_decimal(row["debt"]),
    )


def money(value: Decimal | int | str) -> Decimal:
    """Quantize to the ledger's 8 decimal places, half away from zero as Postgres rounds."""
    return Decimal(value).quantize(MONEY_PLACES, rounding=ROUND_HALF_UP)


def request_from_row(row: Row, usage: dict[str, Any] | None) -> RequestRecord:
    """A call record from a `requests` row (timestamps already parsed by the backend)."""
    cost = row["cost"]
    return RequestRecord(
        request_id=row["request_id"],
        status=row["status"],
        model=row["model"],
        deployment=row["deployment"],
        hold=to_decimal(row["hold"]),
        cost=None if cost is None else to_decimal(cost),
        uncollected=to_decimal(row["uncollected"]),
        usage=usage,
        created=row["created_at"],
        settled=row["settled_at"],
    )


def key_from_row(row: Row, *, revoked: bool, models: tuple[str, ...] | None) -> ApiKey:
    """A key from an `api_keys` row (timestamps already parsed by the backend)."""
    budget = row["budget_amount"]
    return ApiKey(
        key_id=row["id"],
        user_id=row["user_id"],
        name=row["name"],
        revoked=revoked,
        rpm_limit=row["rpm_limit"],
        tpm_limit=row["tpm_limit"],
        budget=None if budget is None else to_decimal(budget),
        budget_period=row["budget_period"],
        budget_spent=to_decimal(row["budget_spent"]),
        expires_at=row["expires_at"],
        models=models,
        created=row["created_at"],
    )
