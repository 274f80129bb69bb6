"""Automatic top-ups on Postgres: each operation is one call of a function of the migration."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg

from app.store.topups import AutoTopup, SavedCard, TopupClaim, TopupResult


def _result(row: asyncpg.Record | None) -> TopupResult:
    assert row is not None
    return TopupResult(row["status"], row["user_id"], row["balance"], row["failures"], row["enabled"])


class PostgresTopups:
    """Mixed into PostgresStore, whose `_row` these use."""

    async def _row(self, sql: str, *args: Any) -> asyncpg.Record | None:
        raise NotImplementedError  # PostgresStore's

    async def save_payment_method(self, *, user_id: str, customer: str, payment_method: str) -> None:
        await self._row("select billing_save_payment_method($1, $2, $3)", user_id, customer, payment_method)

    async def saved_card(self, user_id: str) -> SavedCard | None:
        row = await self._row("select * from billing_saved_customer($1)", user_id)
        return None if row is None else SavedCard(row["customer"], row["payment_method"])

    async def set_auto_topup(self, *, user_id: str, threshold: Decimal, amount: Decimal) -> bool:
        row = await self._row(
            "select billing_set_auto_topup($1, $2, $3) as status", user_id, threshold, amount
        )
        return row is not None and row["status"] == "ok"

    async def delete_auto_topup(self, user_id: str) -> bool:
        row = await self._row("select billing_delete_auto_topup($1) as deleted", user_id)
        return row is not None and bool(row["deleted"])

    async def get_auto_topup(self, user_id: str) -> AutoTopup | None:
        row = await self._row("select * from billing_get_auto_topup($1)", user_id)
        if row is None:
            return None
        return AutoTopup(
            row["threshold"],
            row["amount"],
            row["enabled"],
            row["failures"],
            row["last_error"],
            row["in_flight"],
        )

    async def auto_topup_claim(self, *, user_id: str, attempt: str, stale_seconds: int) -> TopupClaim | None:
        row = await self._row(
            "select * from billing_auto_topup_claim($1, $2, $3)", user_id, attempt, stale_seconds
        )
        if row is None:
            return None
        return TopupClaim(row["attempt"], row["amount"], row["customer"], row["payment_method"])

    async def auto_topup_succeeded(
        self, *, attempt: str, payment_intent: str, amount: Decimal, event_id: str | None, event_type: str
    ) -> TopupResult:
        return _result(
            await self._row(
                "select * from billing_auto_topup_succeeded($1, $2, $3, $4, $5)",
                attempt,
                payment_intent,
                amount,
                event_id,
                event_type,
            )
        )

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
        return _result(
            await self._row(
                "select * from billing_auto_topup_failed($1, $2, $3, $4, $5, $6)",
                attempt,
                payment_intent,
                error,
                event_id,
                event_type,
                max_failures,
            )
        )
