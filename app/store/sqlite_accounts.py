"""Accounts and API keys on the embedded store: users, limits, keys with budgets, usage rollups."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import orjson

from app.store.base import (
    ApiKey,
    KeyPolicy,
    UsageGroup,
    UsageRow,
    User,
    UserNotFound,
    key_from_row,
    money,
    to_decimal,
    user_from_row,
)
from app.store.sqlite_file import SqliteFile, _parse_time

T = TypeVar("T")


_KEY_COLUMNS = (
    "id, user_id, name, revoked_at, rpm_limit, tpm_limit, budget_amount, budget_period,"
    " budget_window, budget_spent, budget_held, expires_at, models, created_at"
)


def _text_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def budget_window(period: str | None, at: datetime) -> str | None:
    """Start of the budget period containing `at` (UTC calendar; weeks start Monday), as stored."""
    if period is None:
        return None
    if period == "total":
        return "-infinity"
    day = at.astimezone(UTC).date()
    if period == "week":
        day -= timedelta(days=day.weekday())
    elif period == "month":
        day = day.replace(day=1)
    return day.isoformat()


def _sqlite_key(row: sqlite3.Row, now: datetime) -> ApiKey:
    data = dict(row)
    if data["budget_window"] != budget_window(data["budget_period"], now):
        data["budget_spent"] = "0"
    data["expires_at"] = data["expires_at"] and _parse_time(data["expires_at"])
    data["created_at"] = _parse_time(data["created_at"])
    models = None if data["models"] is None else tuple(orjson.loads(data["models"]))
    return key_from_row(data, revoked=data["revoked_at"] is not None, models=models)


class SqliteAccounts(SqliteFile):
    """Mixed into SqliteStore: accounts, keys and usage, each one transaction on the file."""

    # -- accounts and keys ----------------------------------------------------------------

    async def ping(self) -> None:
        def q() -> None:
            assert self._conn is not None
            self._conn.execute("select 1").fetchone()

        await self._call(q)

    async def ensure_user(self, user_id: str, balance: Decimal) -> tuple[User, bool]:
        def op(conn: sqlite3.Connection) -> tuple[User, bool]:
            cur = conn.execute("insert or ignore into users (id) values (?)", (user_id,))
            created = cur.rowcount == 1
            if created and balance > 0:
                conn.execute(
                    "insert into transactions (user_id, amount, kind, description)"
                    " values (?, ?, 'credit', 'opening balance')",
                    (user_id, str(money(balance))),
                )
                self._set_money(conn, user_id, balance, Decimal(0))
            return self._locked_user(conn, user_id), created

        return await self._call(self._tx(op))

    async def get_user(self, user_id: str) -> User | None:
        def q() -> User | None:
            assert self._conn is not None
            row = self._conn.execute(
                "select id, balance, reserved, rpm_limit, rph_limit, tpm_limit, debt from users where id = ?",
                (user_id,),
            ).fetchone()
            return user_from_row(row) if row else None

        return await self._call(q)

    async def list_users(self, *, limit: int, offset: int) -> list[User]:
        def q() -> list[User]:
            assert self._conn is not None
            rows = self._conn.execute(
                "select id, balance, reserved, rpm_limit, rph_limit, tpm_limit, debt from users"
                " order by id limit ? offset ?",
                (limit, offset),
            ).fetchall()
            return [user_from_row(r) for r in rows]

        return await self._call(q)

    async def set_user_limits(
        self, user_id: str, *, rpm: int | None, rph: int | None, tpm: int | None
    ) -> User:
        def op(conn: sqlite3.Connection) -> User:
            cur = conn.execute(
                "update users set rpm_limit = ?, rph_limit = ?, tpm_limit = ? where id = ?",
                (rpm, rph, tpm, user_id),
            )
            if cur.rowcount != 1:
                raise UserNotFound(user_id)
            return self._locked_user(conn, user_id)

        return await self._call(self._tx(op))

    async def create_api_key(self, *, user_id: str, key_id: str, key_hash: str, name: str | None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            self._locked_user(conn, user_id)
            conn.execute(
                "insert into api_keys (id, user_id, key_hash, name) values (?, ?, ?, ?)",
                (key_id, user_id, key_hash, name),
            )

        await self._call(self._tx(op))

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        def q() -> ApiKey | None:
            assert self._conn is not None
            row = self._conn.execute(
                f"select {_KEY_COLUMNS} from api_keys where key_hash = ?", (key_hash,)
            ).fetchone()
            return None if row is None else _sqlite_key(row, datetime.now(UTC))

        return await self._call(q)

    async def list_api_keys(self, user_id: str) -> list[ApiKey]:
        def q() -> list[ApiKey]:
            assert self._conn is not None
            rows = self._conn.execute(
                f"select {_KEY_COLUMNS} from api_keys where user_id = ? order by created_at, rowid",
                (user_id,),
            ).fetchall()
            now = datetime.now(UTC)
            return [_sqlite_key(r, now) for r in rows]

        return await self._call(q)

    async def set_key_policy(self, *, user_id: str, key_id: str, policy: KeyPolicy) -> bool:
        period = policy.period if policy.budget is not None else None

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "update api_keys set budget_amount = ?, budget_period = ?, budget_spent = '0',"
                " budget_window = ?, expires_at = ?, models = ? where id = ? and user_id = ?",
                (
                    None if policy.budget is None else str(money(policy.budget)),
                    period,
                    budget_window(period, datetime.now(UTC)),
                    None if policy.expires_at is None else _text_time(policy.expires_at),
                    None if policy.models is None else orjson.dumps(list(policy.models)).decode(),
                    key_id,
                    user_id,
                ),
            )
            return cur.rowcount == 1

        return await self._call(self._tx(op))

    async def usage(self, user_id: str, *, start: date, end: date, group_by: UsageGroup) -> list[UsageRow]:
        return await self._usage(user_id, start=start, end=end, group_by=group_by)

    async def usage_all(self, *, start: date, end: date, group_by: UsageGroup) -> list[UsageRow]:
        return await self._usage(None, start=start, end=end, group_by=group_by)

    async def _usage(
        self, user_id: str | None, *, start: date, end: date, group_by: UsageGroup
    ) -> list[UsageRow]:
        column = {"day": "day", "model": "model", "key": "key_id"}[group_by]
        where = "day >= ? and day < ?" + ("" if user_id is None else " and user_id = ?")
        args = (start.isoformat(), end.isoformat()) + (() if user_id is None else (user_id,))

        def q() -> list[UsageRow]:
            assert self._conn is not None
            totals: dict[str, list[Any]] = {}
            for r in self._conn.execute(
                f"select {column} as grp, requests, prompt_tokens, completion_tokens, cost"
                f" from usage_rollups where {where}",
                args,
            ):
                t = totals.setdefault(r["grp"], [0, 0, 0, Decimal(0)])
                t[0] += r["requests"]
                t[1] += r["prompt_tokens"]
                t[2] += r["completion_tokens"]
                t[3] += to_decimal(r["cost"])
            return [UsageRow(g, *t) for g, t in sorted(totals.items())]

        return await self._call(q)

    async def revoke_api_key(self, *, user_id: str, key_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "update api_keys set revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
                " where id = ? and user_id = ? and revoked_at is null",
                (key_id, user_id),
            )
            return cur.rowcount == 1

        return await self._call(self._tx(op))
