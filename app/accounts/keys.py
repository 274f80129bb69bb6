"""Keys a user issues for themselves (or an admin for them): a budget per period, an expiry, models."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from app.auth.keys import new_key
from app.auth.service import Authenticator
from app.errors import InvalidRequest, NotFound, StoreUnavailable
from app.store.base import ApiKey, BudgetPeriod, KeyPolicy, Store, StoreError, UserNotFound, money

PERIODS = ("day", "week", "month", "total")
MAX_AMOUNT = Decimal("1000000000")
MAX_MODELS = 100


def parse_amount(raw: object, param: str) -> Decimal:
    """A positive money amount from JSON (number or string), exact, at most 8 decimals."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise InvalidRequest(f"'{param}' must be a number.", param=param)
    try:
        # str() first: a JSON number parsed as float must not carry binary noise into money.
        value = Decimal(str(raw))
    except InvalidOperation as exc:
        raise InvalidRequest(f"'{param}' must be a number.", param=param) from exc
    if not value.is_finite() or value <= 0 or value > MAX_AMOUNT or value != money(value):
        raise InvalidRequest(
            f"'{param}' must be a positive amount of at most {MAX_AMOUNT} with at most 8 decimals.",
            param=param,
        )
    return value


def parse_time(raw: object, param: str) -> datetime:
    """An ISO-8601 instant; one without a zone is taken as UTC."""
    if not isinstance(raw, str):
        raise InvalidRequest(f"'{param}' must be an ISO-8601 date or time.", param=param)
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(f"'{param}' must be an ISO-8601 date or time.", param=param) from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_policy(body: dict[str, Any]) -> KeyPolicy:
    """`budget` {"amount", "period"}, `expires_at` and `models` from a request body (all optional)."""
    budget: Decimal | None = None
    period: BudgetPeriod | None = None
    raw_budget = body.get("budget")
    if raw_budget is not None:
        if not isinstance(raw_budget, dict):
            raise InvalidRequest('\'budget\' must be an object {"amount", "period"}.', param="budget")
        budget = parse_amount(raw_budget.get("amount"), "budget.amount")
        raw_period = raw_budget.get("period", "total")
        if raw_period not in PERIODS:
            raise InvalidRequest(
                "'budget.period' must be one of 'day', 'week', 'month' or 'total'.", param="budget.period"
            )
        period = cast(BudgetPeriod, raw_period)
    expires_at = None
    if body.get("expires_at") is not None:
        expires_at = parse_time(body["expires_at"], "expires_at")
    models: tuple[str, ...] | None = None
    raw_models = body.get("models")
    if raw_models is not None:
        if (
            not isinstance(raw_models, list)
            or not raw_models
            or len(raw_models) > MAX_MODELS
            or not all(isinstance(m, str) and 0 < len(m) <= 200 for m in raw_models)
        ):
            raise InvalidRequest(
                f"'models' must be a non-empty list of at most {MAX_MODELS} model names.", param="models"
            )
        models = tuple(dict.fromkeys(raw_models))
    return KeyPolicy(budget=budget, period=period, expires_at=expires_at, models=models)


def parse_name(body: dict[str, Any]) -> str | None:
    name = body.get("name")
    if name is None:
        return None
    if not isinstance(name, str) or not name or len(name) > 200:
        raise InvalidRequest("'name' must be a non-empty string of at most 200 characters.", param="name")
    return name


def key_json(key: ApiKey) -> dict[str, Any]:
    """A key as the account API shows it (never its secret or hash)."""
    return {
        "key_id": key.key_id,
        "name": key.name,
        "revoked": key.revoked,
        "created": key.created.isoformat() if key.created else None,
        "budget": None
        if key.budget is None
        else {"amount": key.budget, "period": key.budget_period, "spent": key.budget_spent},
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "models": list(key.models) if key.models is not None else None,
    }


class KeyService:
    """Issue, list, restrict and revoke a user's keys."""

    def __init__(self, *, store: Store, auth: Authenticator) -> None:
        self._store = store
        self._auth = auth

    async def issue(self, *, user_id: str, name: str | None, policy: KeyPolicy) -> tuple[str, str]:
        """A new key with its policy; returns (key, key_id). The key is shown only once."""
        key, key_id, key_hash = new_key()
        try:
            await self._store.create_api_key(user_id=user_id, key_id=key_id, key_hash=key_hash, name=name)
            if policy != KeyPolicy():
                await self._store.set_key_policy(user_id=user_id, key_id=key_id, policy=policy)
        except UserNotFound as exc:
            raise NotFound(f"User '{user_id}' does not exist.", code="user_not_found") from exc
        except StoreError as exc:
            raise StoreUnavailable("The account store is unavailable.") from exc
        self._auth.invalidate_key(key_hash)
        return key, key_id

    async def list(self, user_id: str) -> list[ApiKey]:
        try:
            return await self._store.list_api_keys(user_id)
        except StoreError as exc:
            raise StoreUnavailable("The account store is unavailable.") from exc

    async def restrict(self, *, user_id: str, key_id: str, policy: KeyPolicy) -> None:
        try:
            found = await self._store.set_key_policy(user_id=user_id, key_id=key_id, policy=policy)
        except StoreError as exc:
            raise StoreUnavailable("The account store is unavailable.") from exc
        if not found:
            raise NotFound(f"No key '{key_id}' for user '{user_id}'.", code="key_not_found")

    async def revoke(self, *, user_id: str, key_id: str) -> None:
        try:
            revoked = await self._store.revoke_api_key(user_id=user_id, key_id=key_id)
        except StoreError as exc:
            raise StoreUnavailable("The account store is unavailable.") from exc
        if not revoked:
            raise NotFound(f"No active key '{key_id}'.", code="key_not_found")
        self._auth.invalidate_user(user_id)
