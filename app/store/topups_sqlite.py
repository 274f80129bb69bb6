"""Automatic top-ups on the embedded store: the rules of the Postgres functions, in one transaction each."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeVar

from app.store.base import User, money
from app.store.topups import AutoTopup, SavedCard, TopupClaim, TopupResult

T = TypeVar("T")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _money(value: Decimal) -> str:
    return str(money(value))


class SqliteTopups:
    """Mixed into SqliteStore, whose plumbing (`_call`, `_tx`, `_credit`, ...) these use."""

    _conn: sqlite3.Connection | None

    async def _call(self, fn: Callable[[], T]) -> T:
        raise NotImplementedError  # SqliteStore's

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> Callable[[], T]:
        raise NotImplementedError

    def _credit(
        self, conn: sqlite3.Connection, user_id: str, amount: Decimal, description: str, key: str | None
    ) -> tuple[Decimal, bool]:
        raise NotImplementedError

    @staticmethod
    def _locked_user(conn: sqlite3.Connection, user_id: str) -> User:
        raise NotImplementedError

    def _read(self, sql: str, args: tuple[object, ...]) -> Callable[[], sqlite3.Row | None]:
        def q() -> sqlite3.Row | None:
            assert self._conn is not None
            row: sqlite3.Row | None = self._conn.execute(sql, args).fetchone()
            return row

        return q

    async def save_payment_method(self, *, user_id: str, customer: str, payment_method: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "insert into payment_methods (user_id, customer, payment_method) values (?, ?, ?)"
                " on conflict (user_id) do update set customer = excluded.customer,"
                " payment_method = excluded.payment_method, updated_at = ?",
                (user_id, customer, payment_method, _now()),
            )

        await self._call(self._tx(op))

    async def saved_card(self, user_id: str) -> SavedCard | None:
        row = await self._call(
            self._read("select customer, payment_method from payment_methods where user_id = ?", (user_id,))
        )
        return None if row is None else SavedCard(row["customer"], row["payment_method"])

    async def set_auto_topup(self, *, user_id: str, threshold: Decimal, amount: Decimal) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            if conn.execute("select 1 from payment_methods where user_id = ?", (user_id,)).fetchone() is None:
                return False
            conn.execute(
                "insert into auto_topups (user_id, threshold, amount) values (?, ?, ?)"
                " on conflict (user_id) do update set threshold = excluded.threshold,"
                " amount = excluded.amount, enabled = 1, failures = 0, last_error = null, updated_at = ?",
                (user_id, _money(threshold), _money(amount), _now()),
            )
            return True

        return await self._call(self._tx(op))

    async def delete_auto_topup(self, user_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("delete from auto_topups where user_id = ?", (user_id,)).rowcount == 1

        return await self._call(self._tx(op))

    async def get_auto_topup(self, user_id: str) -> AutoTopup | None:
        row = await self._call(
            self._read(
                "select threshold, amount, enabled, failures, last_error, attempt from auto_topups"
                " where user_id = ?",
                (user_id,),
            )
        )
        if row is None:
            return None
        return AutoTopup(
            Decimal(row["threshold"]),
            Decimal(row["amount"]),
            bool(row["enabled"]),
            row["failures"],
            row["last_error"],
            row["attempt"] is not None,
        )

    async def auto_topup_claim(self, *, user_id: str, attempt: str, stale_seconds: int) -> TopupClaim | None:
        def op(conn: sqlite3.Connection) -> TopupClaim | None:
            rule = conn.execute(
                "select threshold, amount, enabled, attempt, attempt_at from auto_topups where user_id = ?",
                (user_id,),
            ).fetchone()
            if rule is None or not rule["enabled"]:
                return None
            now = time.time()
            if rule["attempt"] is not None:
                if rule["attempt_at"] > now - stale_seconds:
                    return None
                conn.execute("update auto_topups set attempt_at = ? where user_id = ?", (now, user_id))
                t = conn.execute(
                    "select id, amount, customer, payment_method from auto_topup_attempts where id = ?",
                    (rule["attempt"],),
                ).fetchone()
                return TopupClaim(t["id"], Decimal(t["amount"]), t["customer"], t["payment_method"])
            user = conn.execute("select balance from users where id = ?", (user_id,)).fetchone()
            if user is None or Decimal(user["balance"]) >= Decimal(rule["threshold"]):
                return None
            card = conn.execute(
                "select customer, payment_method from payment_methods where user_id = ?", (user_id,)
            ).fetchone()
            if card is None:
                return None
            conn.execute(
                "insert into auto_topup_attempts (id, user_id, amount, customer, payment_method)"
                " values (?, ?, ?, ?, ?)",
                (attempt, user_id, rule["amount"], card["customer"], card["payment_method"]),
            )
            conn.execute(
                "update auto_topups set attempt = ?, attempt_at = ? where user_id = ?",
                (attempt, now, user_id),
            )
            return TopupClaim(attempt, Decimal(rule["amount"]), card["customer"], card["payment_method"])

        return await self._call(self._tx(op))

    @staticmethod
    def _new_event(
        conn: sqlite3.Connection, event_id: str | None, event_type: str, payment: str | None
    ) -> bool:
        if event_id is None:
            return True
        cur = conn.execute(
            "insert or ignore into payment_events (id, type, payment) values (?, ?, ?)",
            (event_id, event_type, payment),
        )
        return cur.rowcount == 1

    async def auto_topup_succeeded(
        self, *, attempt: str, payment_intent: str, amount: Decimal, event_id: str | None, event_type: str
    ) -> TopupResult:
        def op(conn: sqlite3.Connection) -> TopupResult:
            att = conn.execute("select user_id from auto_topup_attempts where id = ?", (attempt,)).fetchone()
            if att is None:
                return TopupResult("unknown", None, Decimal(0), 0, False)
            user = self._locked_user(conn, att["user_id"])
            if not self._new_event(conn, event_id, event_type, payment_intent):
                return TopupResult("duplicate", user.id, user.balance, 0, True)
            conn.execute(
                "update auto_topup_attempts set status = 'succeeded', payment_intent = ?, error = null,"
                " finished_at = coalesce(finished_at, ?) where id = ? and status <> 'succeeded'",
                (payment_intent, _now(), attempt),
            )
            conn.execute(
                "update auto_topups set attempt = null, attempt_at = null, failures = 0, last_error = null"
                " where user_id = ? and attempt = ?",
                (user.id, attempt),
            )
            cur = conn.execute(
                "insert or ignore into payments (id, user_id, payment_intent, amount) values (?, ?, ?, ?)",
                (payment_intent, user.id, payment_intent, _money(amount)),
            )
            if cur.rowcount != 1:
                return TopupResult("duplicate", user.id, user.balance, 0, True)
            balance, _ = self._credit(
                conn, user.id, amount, f"Stripe auto top-up {payment_intent}", f"stripe:{payment_intent}"
            )
            return TopupResult("credited", user.id, balance, 0, True)

        return await self._call(self._tx(op))

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
        def op(conn: sqlite3.Connection) -> TopupResult:
            att = conn.execute(
                "select user_id, status from auto_topup_attempts where id = ?", (attempt,)
            ).fetchone()
            if att is None:
                return TopupResult("unknown", None, Decimal(0), 0, False)
            if not self._new_event(conn, event_id, event_type, payment_intent) or att["status"] != "pending":
                return TopupResult("duplicate", att["user_id"], Decimal(0), 0, True)
            conn.execute(
                "update auto_topup_attempts set status = 'failed', error = ?,"
                " payment_intent = coalesce(?, payment_intent), finished_at = ? where id = ?",
                (error[:500], payment_intent, _now(), attempt),
            )
            cur = conn.execute(
                "update auto_topups set attempt = null, attempt_at = null, failures = failures + 1,"
                " last_error = ?, enabled = failures + 1 < ? where user_id = ? and attempt = ?"
                " returning failures, enabled",
                (error[:500], max_failures, att["user_id"], attempt),
            )
            rule = cur.fetchone()
            if rule is None:
                return TopupResult("counted", att["user_id"], Decimal(0), 0, False)
            return TopupResult("counted", att["user_id"], Decimal(0), rule["failures"], bool(rule["enabled"]))

        return await self._call(self._tx(op))
