"""Embedded backend: SQLite in DATA_DIR, the same contract as the Postgres functions.

All work runs on one dedicated thread per process (never on the event loop). Writes take
SQLite's write lock up front (BEGIN IMMEDIATE), so several gunicorn workers sharing the file
serialise their money operations exactly as Postgres row locks do.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any, TypeVar

import orjson

from app.store.base import (
    MONEY_PLACES,
    ApiKey,
    AuditRow,
    BalanceConflict,
    RequestRecord,
    Reservation,
    Settlement,
    StoreError,
    Transaction,
    User,
    UserNotFound,
    money,
    request_from_row,
    to_decimal,
    token_count,
    user_from_row,
)

T = TypeVar("T")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=UTC)


_SCHEMA_FILE = Path(__file__).with_name("sqlite_schema.sql")


class SqliteStore:
    """SQLite file in DATA_DIR; the default when no database is configured."""

    kind = "sqlite"

    def __init__(self, data_dir: str | Path) -> None:
        self._path = Path(data_dir) / "gateway.sqlite3"
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # -- plumbing -------------------------------------------------------------------------

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        await self._call(self._connect)

    def _connect(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("pragma journal_mode=wal")
        conn.execute("pragma synchronous=normal")
        conn.execute("pragma foreign_keys=on")
        conn.execute("pragma busy_timeout=30000")
        conn.executescript(_SCHEMA_FILE.read_text(encoding="utf-8"))
        self._conn = conn

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._conn is not None:
            await self._call(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)
        self._executor = None

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except sqlite3.IntegrityError as exc:
            if "CHECK" in str(exc) or "append-only" in str(exc):
                raise BalanceConflict(str(exc)) from exc
            if "FOREIGN KEY" in str(exc):
                raise UserNotFound(str(exc)) from exc
            raise StoreError(f"SQLite failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite failed: {type(exc).__name__}") from exc

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> Callable[[], T]:
        """Wrap fn in BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error)."""

        def run() -> T:
            conn = self._conn
            assert conn is not None
            conn.execute("begin immediate")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("rollback")
                raise
            conn.execute("commit")
            return result

        return run

    @staticmethod
    def _locked_user(conn: sqlite3.Connection, user_id: str) -> User:
        row = conn.execute(
            "select id, balance, reserved, rpm_limit, rph_limit, tpm_limit from users where id = ?",
            (user_id,),
        ).fetchone()
        if row is None:
            raise UserNotFound(user_id)
        return user_from_row(row)

    @staticmethod
    def _set_money(conn: sqlite3.Connection, user_id: str, balance: Decimal, reserved: Decimal) -> None:
        if balance < 0 or reserved < 0:
            raise BalanceConflict("balance and reserved must not go below zero")
        conn.execute(
            "update users set balance = ?, reserved = ? where id = ?",
            (str(money(balance)), str(money(reserved)), user_id),
        )

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
                "select id, balance, reserved, rpm_limit, rph_limit, tpm_limit from users where id = ?",
                (user_id,),
            ).fetchone()
            return user_from_row(row) if row else None

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
                "select id, user_id, name, revoked_at, rpm_limit, tpm_limit from api_keys where key_hash = ?",
                (key_hash,),
            ).fetchone()
            if row is None:
                return None
            return ApiKey(
                key_id=row["id"],
                user_id=row["user_id"],
                name=row["name"],
                revoked=row["revoked_at"] is not None,
                rpm_limit=row["rpm_limit"],
                tpm_limit=row["tpm_limit"],
            )

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

    # -- money ----------------------------------------------------------------------------

    async def credit(
        self, *, user_id: str, amount: Decimal, description: str, idempotency_key: str | None
    ) -> tuple[Decimal, bool]:
        def op(conn: sqlite3.Connection) -> tuple[Decimal, bool]:
            user = self._locked_user(conn, user_id)
            cur = conn.execute(
                "insert or ignore into transactions"
                " (user_id, amount, kind, description, idempotency_key)"
                " values (?, ?, 'credit', ?, ?)",
                (user_id, str(money(amount)), description, idempotency_key),
            )
            if cur.rowcount != 1:
                return user.balance, False
            balance = user.balance + money(amount)
            if balance < user.reserved:
                raise BalanceConflict("adjustment would take held funds")
            self._set_money(conn, user_id, balance, user.reserved)
            return money(balance), True

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
    ) -> Reservation:
        max_tokens, model_max_output = token_count(max_tokens), token_count(model_max_output)

        def op(conn: sqlite3.Connection) -> Reservation:
            row = conn.execute("select balance, reserved from users where id = ?", (user_id,)).fetchone()
            if row is None:
                return Reservation("no_account", None, Decimal(0), Decimal(0))
            available = to_decimal(row["balance"]) - to_decimal(row["reserved"])
            if available <= 0 or available < prompt_cost:
                return Reservation("insufficient", 0, Decimal(0), available)
            afford: int | None = None
            if output_price > 0:
                afford = math.floor((available - prompt_cost) / output_price)
            if max_tokens is not None:
                if afford is not None and max_tokens > afford:
                    return Reservation("insufficient", token_count(afford), Decimal(0), available)
                tokens: int | None = max_tokens
            else:
                caps = [c for c in (afford, model_max_output) if c is not None]
                tokens = min(caps) if caps else None
                if tokens is not None and tokens < 1:
                    return Reservation("insufficient", 0, Decimal(0), available)
            hold = (prompt_cost + (tokens or 0) * output_price).quantize(MONEY_PLACES, rounding=ROUND_CEILING)
            hold = min(hold, available)
            cur = conn.execute(
                "insert or ignore into reservations (request_id, user_id, amount, expires_at)"
                " values (?, ?, ?, julianday('now') + ? / 86400.0)",
                (request_id, user_id, str(hold), ttl_seconds),
            )
            if cur.rowcount != 1:
                return Reservation("duplicate", None, Decimal(0), available)
            conn.execute(
                "insert or ignore into requests (request_id, user_id, model, status, hold)"
                " values (?, ?, ?, 'held', ?)",
                (request_id, user_id, model, str(hold)),
            )
            self._set_money(conn, user_id, to_decimal(row["balance"]), to_decimal(row["reserved"]) + hold)
            return Reservation("ok", token_count(tokens), hold, available)

        return await self._call(self._tx(op))

    @staticmethod
    def _take_hold(conn: sqlite3.Connection, user_id: str, request_id: str) -> Decimal:
        row = conn.execute(
            "select amount from reservations where request_id = ? and user_id = ?",
            (request_id, user_id),
        ).fetchone()
        if row is None:
            return Decimal(0)
        conn.execute("delete from reservations where request_id = ?", (request_id,))
        return to_decimal(row["amount"])

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
            hold = self._take_hold(conn, user_id, request_id)
            user = self._locked_user(conn, user_id)
            full = money(cost)
            charge = max(min(full, user.balance - (user.reserved - hold)), Decimal(0))
            text = description if charge >= full else f"{description} (uncollected {full - charge})"
            cur = conn.execute(
                "insert or ignore into transactions (user_id, amount, kind, description, model,"
                " request_id, prompt_tokens, completion_tokens)"
                " values (?, ?, 'charge', ?, ?, ?, ?, ?)",
                (user_id, str(-charge), text, model, request_id, prompt_tokens, completion_tokens),
            )
            if cur.rowcount != 1:
                self._set_money(conn, user_id, user.balance, user.reserved - hold)
                prior = conn.execute(
                    "select amount from transactions where request_id = ? and kind = 'charge'",
                    (request_id,),
                ).fetchone()
                return Settlement("duplicate", -to_decimal(prior["amount"]), user.balance)
            balance = user.balance - charge
            self._set_money(conn, user_id, balance, user.reserved - hold)
            conn.execute(
                "insert into requests (request_id, user_id, model, deployment, status, hold, cost,"
                " uncollected, usage, settled_at) values (?, ?, ?, ?, 'charged', ?, ?, ?, ?, ?)"
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
            hold = self._take_hold(conn, user_id, request_id)
            user = self._locked_user(conn, user_id)
            self._set_money(conn, user_id, user.balance, user.reserved - hold)
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
                "select request_id, user_id, amount from reservations where expires_at < julianday('now')"
            ).fetchall()
            for row in rows:
                conn.execute("delete from reservations where request_id = ?", (row["request_id"],))
                self._mark_released(conn, row["request_id"])
                user = self._locked_user(conn, row["user_id"])
                self._set_money(conn, user.id, user.balance, user.reserved - to_decimal(row["amount"]))
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
