"""Automatic top-ups on Supabase: every operation is one RPC of the migration's functions."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from app.store.base import StoreError, to_decimal
from app.store.topups import AutoTopup, SavedCard, TopupClaim, TopupResult

_RESULT = "status,user_id,balance::text,failures,enabled"


def _num(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"not a finite amount: {value}")
    return format(value, "f")


def _rows(data: object) -> list[dict[str, Any]]:
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise StoreError("Supabase sent an unexpected response")
    return data


def _result(data: object) -> TopupResult:
    rows = _rows(data)
    if len(rows) != 1:
        raise StoreError(f"Supabase returned {len(rows)} rows where one was expected")
    r = rows[0]
    return TopupResult(
        r["status"], r["user_id"], to_decimal(r["balance"]), int(r["failures"]), bool(r["enabled"])
    )


class SupabaseTopups:
    """Mixed into SupabaseStore, whose `_rpc` these use."""

    async def _rpc(self, fn: str, params: dict[str, Any], columns: str | None = None) -> object:
        raise NotImplementedError  # SupabaseStore's

    async def save_payment_method(self, *, user_id: str, customer: str, payment_method: str) -> None:
        params = {"p_user": user_id, "p_customer": customer, "p_payment_method": payment_method}
        await self._rpc("billing_save_payment_method", params)

    async def saved_card(self, user_id: str) -> SavedCard | None:
        rows = _rows(
            await self._rpc("billing_saved_customer", {"p_user": user_id}, "customer,payment_method")
        )
        return SavedCard(rows[0]["customer"], rows[0]["payment_method"]) if rows else None

    async def set_auto_topup(self, *, user_id: str, threshold: Decimal, amount: Decimal) -> bool:
        params = {"p_user": user_id, "p_threshold": _num(threshold), "p_amount": _num(amount)}
        return await self._rpc("billing_set_auto_topup", params) == "ok"

    async def delete_auto_topup(self, user_id: str) -> bool:
        return await self._rpc("billing_delete_auto_topup", {"p_user": user_id}) is True

    async def get_auto_topup(self, user_id: str) -> AutoTopup | None:
        columns = "threshold::text,amount::text,enabled,failures,last_error,in_flight"
        rows = _rows(await self._rpc("billing_get_auto_topup", {"p_user": user_id}, columns))
        if not rows:
            return None
        r = rows[0]
        return AutoTopup(
            to_decimal(r["threshold"]),
            to_decimal(r["amount"]),
            bool(r["enabled"]),
            int(r["failures"]),
            r["last_error"],
            bool(r["in_flight"]),
        )

    async def auto_topup_claim(self, *, user_id: str, attempt: str, stale_seconds: int) -> TopupClaim | None:
        params = {"p_user": user_id, "p_attempt": attempt, "p_stale_seconds": stale_seconds}
        columns = "attempt,amount::text,customer,payment_method"
        rows = _rows(await self._rpc("billing_auto_topup_claim", params, columns))
        if not rows:
            return None
        r = rows[0]
        return TopupClaim(r["attempt"], to_decimal(r["amount"]), r["customer"], r["payment_method"])

    async def auto_topup_succeeded(
        self, *, attempt: str, payment_intent: str, amount: Decimal, event_id: str | None, event_type: str
    ) -> TopupResult:
        params = {
            "p_attempt": attempt,
            "p_payment_intent": payment_intent,
            "p_amount": _num(amount),
            "p_event_id": event_id,
            "p_event_type": event_type,
        }
        return _result(await self._rpc("billing_auto_topup_succeeded", params, _RESULT))

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
        params = {
            "p_attempt": attempt,
            "p_payment_intent": payment_intent,
            "p_error": error,
            "p_event_id": event_id,
            "p_event_type": event_type,
            "p_max_failures": max_failures,
        }
        return _result(await self._rpc("billing_auto_topup_failed", params, _RESULT))
