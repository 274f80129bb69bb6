"""Embedded backend: SQLite in DATA_DIR, the same contract as the Postgres functions.

All work runs on one dedicated thread per process (never on the event loop). Writes take
SQLite's write lock up front (BEGIN IMMEDIATE), so several gunicorn workers sharing the file
serialise their money operations exactly as Postgres row locks do.
"""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any, TypeVar

import orjson

from app.store.base import (
    MONEY_PLACES,
    AuditRow,
    BalanceConflict,
    RequestRecord,
    Reservation,
    Reversal,
    Settlement,
    Transaction,
    money,
    request_from_row,
    to_decimal,
    token_count,
)
from app.store.sqlite_accounts import _KEY_COLUMNS, SqliteAccounts, budget_window
from app.store.sqlite_file import _now, _parse_time
from app.store.topups_sqlite import SqliteTopups

T = TypeVar("T")


class SqliteStore(SqliteAccounts, SqliteTopups):
    """SQLite file in DATA_DIR; the default when no database is configured."""

    kind = "sqlite"

    # -- money ----------------------------------------------------------------------------

    async def credit(
        self, *, user_id: str, amount: Decimal, description: str, idempotency_key: str | None
    ) -> tuple[Decimal, bool]:
        return await self._call(
            self._tx(lambda conn: self._credit(conn, user_id, amount, description, idempotency_key))
        )

    def _credit(
        self, conn: sqlite3.Connection, user_id: str, amount: Decimal, description: str, key: str | None
    ) -> tuple[Decimal, bool]:
        """As billing_credit: once per idempotency key; a positive credit pays the debt first."""
        user = self._locked_user(conn, user_id)
        cur = conn.execute(
            "insert or ignore into transactions"
            " (user_id, amount, kind, description, idempotency_key)"
            " values (?, ?, 'credit', ?, ?)",
            (user_id, str(money(amount)), description, key),
        )
        if cur.rowcount != 1:
            return user.balance, False
        paid = min(user.debt, money(amount)) if amount > 0 else Decimal(0)
        if paid > 0:
            conn.execute(
                "insert into transactions (user_id, amount, kind, description)"
                " values (?, ?, 'debt_payment', ?)",
                (user_id, str(-paid), f"paid towards debt from {description}"),
            )
            conn.execute("update users set debt = ? where id = ?", (str(money(user.debt - paid)), user_id))
        balance = user.balance + money(amount) - paid
        if balance < user.reserved:
            raise BalanceConflict("adjustment would take held funds")
        self._set_money(conn, user_id, balance, user.reserved)
        return money(balance), True

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
        def op(conn: sqlite3.Connection) -> tuple[bool, Decimal]:
            user = self._locked_user(conn, user_id)
            cur = conn.execute(
                "insert or ignore into payment_events (id, type, payment) values (?, ?, ?)",
                (event_id, event_type, session_id),
            )
            if cur.rowcount != 1:
                return False, user.balance
            cur = conn.execute(
                "insert or ignore into payments (id, user_id, payment_intent, amount) values (?, ?, ?, ?)",
                (session_id, user_id, payment_intent, str(money(amount))),
            )
            if cur.rowcount != 1:
                return False, user.balance
            balance, applied = self._credit(
                conn, user_id, amount, f"Stripe payment {session_id}", f"stripe:{session_id}"
            )
            return applied, balance

        return await self._call(self._tx(op))

    async def payment_reverse(
        self, *, payment_intent: str, amount: Decimal, cumulative: bool, event_id: str, event_type: str
    ) -> Reversal:
        def op(conn: sqlite3.Connection) -> Reversal:
            pay = conn.execute(
                "select id, user_id, amount, reversed from payments where payment_intent = ?",
                (payment_intent,),
            ).fetchone()
            if pay is None:
                return Reversal("unknown_payment", None, Decimal(0), Decimal(0), Decimal(0))
            user = self._locked_user(conn, pay["user_id"])
            cur = conn.execute(
                "insert or ignore into payment_events (id, type, payment) values (?, ?, ?)",
                (event_id, event_type, pay["id"]),
            )
            if cur.rowcount != 1:
                return Reversal("duplicate", user.id, Decimal(0), user.debt, user.balance)
            paid, reversed_ = to_decimal(pay["amount"]), to_decimal(pay["reversed"])
            if cumulative:
                delta = min(money(amount), paid) - reversed_
            else:
                delta = min(money(amount), paid - reversed_)
            delta = max(delta, Decimal(0))
            take = min(delta, max(user.available, Decimal(0)))
            if take > 0:
                conn.execute(
                    "insert into transactions (user_id, amount, kind, description)"
                    " values (?, ?, 'refund', ?)",
                    (user.id, str(-take), f"{event_type.replace('.', ' ')} of Stripe payment {pay['id']}"),
                )
            conn.execute(
                "update payments set reversed = ? where id = ?", (str(money(reversed_ + delta)), pay["id"])
            )
            debt = money(user.debt + delta - take)
            conn.execute("update users set debt = ? where id = ?", (str(debt), user.id))
            self._set_money(conn, user.id, user.balance - take, user.reserved)
            return Reversal("applied", user.id, take, debt, money(user.balance - take))

        return await self._call(self._tx(op))

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
        max_tokens, model_max_output = token_count(max_tokens), token_count(model_max_output)

        def op(conn: sqlite3.Connection) -> Reservation:
            row = conn.execute(
                "select balance, reserved, debt from users where id = ?", (user_id,)
            ).fetchone()
            if row is None:
                return Reservation("no_account", None, Decimal(0), Decimal(0))
            available = to_decimal(row["balance"]) - to_decimal(row["reserved"])
            now = datetime.now(UTC)
            window: str | None = None
            spent: Decimal | None = None
            key_available: Decimal | None = None
            if key_id is not None:
                key = conn.execute(
                    f"select {_KEY_COLUMNS} from api_keys where id = ? and user_id = ?", (key_id, user_id)
                ).fetchone()
                if key is None or key["revoked_at"] is not None:
                    return Reservation("key_revoked", None, Decimal(0), Decimal(0))
                if key["expires_at"] is not None and _parse_time(key["expires_at"]) <= now:
                    return Reservation("key_expired", None, Decimal(0), Decimal(0))
                if key["models"] is not None and model not in orjson.loads(key["models"]):
                    return Reservation("model_not_allowed", None, Decimal(0), Decimal(0))
                if key["budget_amount"] is not None:
                    window = budget_window(key["budget_period"], now)
                    spent = to_decimal(key["budget_spent"]) if key["budget_window"] == window else Decimal(0)
                    left = to_decimal(key["budget_amount"]) - spent - to_decimal(key["budget_held"])
                    key_available = max(left, Decimal(0))
            if to_decimal(row["debt"]) > 0:
                return Reservation("debt", 0, Decimal(0), available)
            limit, short = available, "insufficient"
            if key_available is not None and key_available < available:
                limit, short = key_available, "key_budget"
            if limit <= 0 or limit < prompt_cost:
                return Reservation(short, 0, Decimal(0), limit)  # type: ignore[arg-type]
            afford: int | None = None
            if output_price > 0:
                afford = math.floor((limit - prompt_cost) / output_price)
            if max_tokens is not None:
                if afford is not None and max_tokens > afford:
                    return Reservation(short, token_count(afford), Decimal(0), limit)  # type: ignore[arg-type]
                tokens: int | None = max_tokens
            else:
                caps = [c for c in (afford, model_max_output) if c is not None]
                tokens = min(caps) if caps else None
                if tokens is not None and tokens < 1:
                    return Reservation(short, 0, Decimal(0), limit)  # type: ignore[arg-type]
            hold = (prompt_cost + (tokens or 0) * output_price).quantize(MONEY_PLACES, rounding=ROUND_CEILING)
            hold = min(hold, limit)
            cur = conn.execute(
                "insert or ignore into reservations (request_id, user_id, amount, expires_at, key_id)"
                " values (?, ?, ?, julianday('now') + ? / 86400.0, ?)",
                (request_id, user_id, str(hold), ttl_seconds, key_id),
            )
            if cur.rowcount != 1:
                return Reservation("duplicate", None, Decimal(0), limit)
            conn.execute(
                "insert or ignore into requests (request_id, user_id, model, status, hold, key_id)"
                " values (?, ?, ?, 'held', ?, ?)",
                (request_id, user_id, model, str(hold), key_id),
            )
            self._set_money(conn, user_id, to_decimal(row["balance"]), to_decimal(row["reserved"]) + hold)
            if key_id is not None:
                conn.execute(
                    "update api_keys set budget_held = ?, budget_spent = coalesce(?, budget_spent),"
                    " budget_window = coalesce(?, budget_window) where id = ?",
                    (
                        str(money(to_decimal(key["budget_held"]) + hold)),
                        None if spent is None else str(spent),
                        window,
                        key_id,
                    ),
                )
            return Reservation("ok", token_count(tokens), hold, limit)

        return await self._call(self._tx(op))

    @staticmethod
    def _take_hold(conn: sqlite3.Connection, user_id: str, request_id: str) -> tuple[Decimal, str | None]:
        row = conn.execute(
            "select amount, key_id from reservations where request_id = ? and user_id = ?",
            (request_id, user_id),
        ).fetchone()
        if row is None:
            return Decimal(0), None
        conn.execute("delete from reservations where request_id = ?", (request_id,))
        return to_decimal(row["amount"]), row["key_id"]

    @staticmethod
    def _unhold_key(conn: sqlite3.Connection, key_id: str | None, hold: Decimal) -> None:
        if key_id is None or hold == 0:
            return
        row = conn.execute("select budget_held from api_keys where id = ?", (key_id,)).fetchone()
        if row is not None:
            held = max(to_decimal(row["budget_held"]) - hold, Decimal(0))
            conn.execute("update api_keys set budget_held = ? where id = ?", (str(money(held)), key_id))

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
    ) -> Settlement:
        usage_text = None if usage is None else orjson.dumps(usage).decode()

        def op(conn: sqlite3.Connection) -> Settlement:
            hold, key_id = self._take_hold(conn, user_id, request_id)
            user = self._locked_user(conn, user_id)
            if key_id is None:
                # The hold expired and was swept: the call record still knows the key.
                rec = conn.execute(
                    "select key_id from requests where request_id = ? and user_id = ?", (request_id, user_id)
                ).fetchone()
                key_id = rec and rec["key_id"]
            full = money(cost)
            charge = max(min(full, user.balance - (user.reserved - hold)), Decimal(0))
            now = datetime.now(UTC)
            window: str | None = None
            spent = Decimal(0)
            key = None
            if key_id is not None:
                key = conn.execute(
                    "select budget_amount, budget_period, budget_window, budget_spent, budget_held"
                    " from api_keys where id = ?",
                    (key_id,),
                ).fetchone()
            if key is not None and key["budget_amount"] is not None:
                window = budget_window(key["budget_period"], now)
                spent = to_decimal(key["budget_spent"]) if key["budget_window"] == window else Decimal(0)
                left = to_decimal(key["budget_amount"]) - spent - (to_decimal(key["budget_held"]) - hold)
                charge = max(min(charge, left), Decimal(0))
            text = description if charge >= full else f"{description} (uncollected {full - charge})"
            cur = conn.execute(
                "insert or ignore into transactions (user_id, amount, kind, description, model,"
                " request_id, prompt_tokens, completion_tokens)"
                " values (?, ?, 'charge', ?, ?, ?, ?, ?)",
                (user_id, str(-charge), text, model, request_id, prompt_tokens, completion_tokens),
            )
            if cur.rowcount != 1:
                self._set_money(conn, user_id, user.balance, user.reserved - hold)
                self._unhold_key(conn, key_id, hold)
                prior = conn.execute(
                    "select amount from transactions where request_id = ? and kind = 'charge'",
                    (request_id,),
                ).fetchone()
                return Settlement("duplicate", -to_decimal(prior["amount"]), user.balance)
            balance = user.balance - charge
            self._set_money(conn, user_id, balance, user.reserved - hold)
            if key is not None:
                held = max(to_decimal(key["budget_held"]) - hold, Decimal(0))
                conn.execute(
                    "update api_keys set budget_held = ?, budget_spent = ?, budget_window = ? where id = ?",
                    (str(money(held)), str(money(spent + charge)), window, key_id),
                )
            conn.execute(
                "insert into usage_rollups (user_id, day, model, key_id, requests, prompt_tokens,"
                " completion_tokens, cost) values (?, ?, ?, ?, 0, 0, 0, '0') on conflict do nothing",
                (user_id, now.date().isoformat(), model or "", key_id or ""),
            )
            roll = conn.execute(
                "select cost from usage_rollups where user_id = ? and day = ? and model = ? and key_id = ?",
                (user_id, now.date().isoformat(), model or "", key_id or ""),
            ).fetchone()
            conn.execute(
                "update usage_rollups set requests = requests + 1, prompt_tokens = prompt_tokens + ?,"
                " completion_tokens = completion_tokens + ?, cost = ?"
                " where user_id = ? and day = ? and model = ? and key_id = ?",
                (
                    prompt_tokens,
                    completion_tokens,
                    str(money(to_decimal(roll["cost"]) + charge)),
                    user_id,
                    now.date().isoformat(),
                    model or "",
                    key_id or "",
                ),
            )
            conn.execute(
                "insert into requests (request_id, user_id, model, deployment, status, hold, cost,"
                " uncollected, usage, settled_at, key_id) values (?, ?, ?, ?, 'charged', ?, ?, ?, ?, ?, ?)"
                " on conflict (request_id) do update set status = 'charged',"
                " deployment = excluded.deployment, cost = excluded.cost,"
                " uncollected = excluded.uncollected, usage = excluded.usage,"
                " settled_at = excluded.settled_at, model = coalesce(requests.model, excluded.model)",
                (
                    request_id,
                    user_id,
                    model,
                    deployment,
                    str(hold),
                    str(charge),
                    str(full - charge),
                    usage_text,
                    _now(),
                    key_id,
                ),
            )
            return Settlement("charged", charge, money(balance))

        return await self._call(self._tx(op))

    async def release(self, *, user_id: str, request_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            exists = conn.execute(
                "select 1 from reservations where request_id = ? and user_id = ?",
                (request_id, user_id),
            ).fetchone()
            if exists is None:
                return False
            hold, key_id = self._take_hold(conn, user_id, request_id)
            user = self._locked_user(conn, user_id)
            self._set_money(conn, user_id, user.balance, user.reserved - hold)
            self._unhold_key(conn, key_id, hold)
            self._mark_released(conn, request_id)
            return True

        return await self._call(self._tx(op))

    @staticmethod
    def _mark_released(conn: sqlite3.Connection, request_id: str) -> None:
        conn.execute(
            "update requests set status = 'released', settled_at = ?"
            " where request_id = ? and status = 'held'",
            (_now(), request_id),
        )

    async def sweep_expired(self) -> int:
        def op(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "select request_id, user_id, amount, key_id from reservations"
                " where expires_at < julianday('now')"
            ).fetchall()
            for row in rows:
                conn.execute("delete from reservations where request_id = ?", (row["request_id"],))
                self._mark_released(conn, row["request_id"])
                user = self._locked_user(conn, row["user_id"])
                self._set_money(conn, user.id, user.balance, user.reserved - to_decimal(row["amount"]))
                self._unhold_key(conn, row["key_id"], to_decimal(row["amount"]))
            return len(rows)

        return await self._call(self._tx(op))

    async def transactions(self, user_id: str, *, limit: int, offset: int) -> list[Transaction]:
        def q() -> list[Transaction]:
            assert self._conn is not None
            rows = self._conn.execute(
                "select id, amount, kind, description, created_at, model, request_id,"
                " prompt_tokens, completion_tokens from transactions where user_id = ?"
                " order by id desc limit ? offset ?",
                (user_id, limit, offset),
            ).fetchall()
            return [
                Transaction(
                    id=str(r["id"]),
                    amount=to_decimal(r["amount"]),
                    kind=r["kind"],
                    description=r["description"],
                    timestamp=datetime.fromisoformat(r["created_at"]).replace(tzinfo=UTC),
                    model=r["model"],
                    request_id=r["request_id"],
                    prompt_tokens=r["prompt_tokens"],
                    completion_tokens=r["completion_tokens"],
                )
                for r in rows
            ]

        return await self._call(q)

    async def get_request(self, user_id: str, request_id: str) -> RequestRecord | None:
        def q() -> RequestRecord | None:
            assert self._conn is not None
            r = self._conn.execute(
                "select * from requests where request_id = ? and user_id = ?", (request_id, user_id)
            ).fetchone()
            if r is None:
                return None
            row = dict(r)
            row["created_at"] = _parse_time(row["created_at"])
            row["settled_at"] = row["settled_at"] and _parse_time(row["settled_at"])
            return request_from_row(row, None if row["usage"] is None else orjson.loads(row["usage"]))

        return await self._call(q)

    async def alert_crossings(self, user_id: str, thresholds: list[Decimal]) -> list[tuple[Decimal, Decimal]]:
        def op(conn: sqlite3.Connection) -> list[tuple[Decimal, Decimal]]:
            row = conn.execute("select balance from users where id = ?", (user_id,)).fetchone()
            if row is None:
                return []
            balance = to_decimal(row["balance"])
            fired = []
            for threshold in sorted(set(map(money, thresholds)), reverse=True):
                if threshold <= balance:
                    conn.execute(
                        "delete from balance_alerts where user_id = ? and threshold = ?",
                        (user_id, str(threshold)),
                    )
                    continue
                cur = conn.execute(
                    "insert or ignore into balance_alerts (user_id, threshold) values (?, ?)",
                    (user_id, str(threshold)),
                )
                if cur.rowcount == 1:
                    fired.append((threshold, balance))
            return fired

        return await self._call(self._tx(op))

    async def audit(self) -> list[AuditRow]:
        def q() -> list[AuditRow]:
            assert self._conn is not None
            out: list[AuditRow] = []
            for u in self._conn.execute("select id, balance, reserved from users").fetchall():
                ledger = sum(
                    (
                        to_decimal(r[0])
                        for r in self._conn.execute(
                            "select amount from transactions where user_id = ?", (u["id"],)
                        )
                    ),
                    Decimal(0),
                )
                held = sum(
                    (
                        to_decimal(r[0])
                        for r in self._conn.execute(
                            "select amount from reservations where user_id = ?", (u["id"],)
                        )
                    ),
                    Decimal(0),
                )
                balance, reserved = to_decimal(u["balance"]), to_decimal(u["reserved"])
                if balance != ledger or reserved != held:
                    out.append(AuditRow(u["id"], balance, ledger, reserved, held))
            return out

        return await self._call(q)
