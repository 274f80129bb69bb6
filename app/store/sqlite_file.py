"""The embedded store's file: opening it (schema and upgrades), its one thread, its transactions.

All work runs on one dedicated thread per process (never on the event loop). Writes take
SQLite's write lock up front (BEGIN IMMEDIATE), so several gunicorn workers sharing the file
serialise their money operations exactly as Postgres row locks do.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

from app.store.base import BalanceConflict, StoreError, User, UserNotFound, money, user_from_row

T = TypeVar("T")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=UTC)


_SCHEMA_FILE = Path(__file__).with_name("sqlite_schema.sql")
# Columns added since the first schema: a data directory made by an older gateway gets them.
_ADDED_COLUMNS = [
    ("users", "debt", "text not null default '0'"),
    ("api_keys", "budget_amount", "text"),
    ("api_keys", "budget_period", "text"),
    ("api_keys", "budget_window", "text"),
    ("api_keys", "budget_spent", "text not null default '0'"),
    ("api_keys", "budget_held", "text not null default '0'"),
    ("api_keys", "expires_at", "text"),
    ("api_keys", "models", "text"),
    ("reservations", "key_id", "text"),
    ("requests", "key_id", "text"),
]


class SqliteFile:
    """The connection every SqliteStore operation runs on."""

    def __init__(self, data_dir: str | Path) -> None:
        self._path = Path(data_dir) / "gateway.sqlite3"
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # -- plumbing -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the file and bring its schema up to date; on failure the store stays closed."""
        if self._conn is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._executor = executor
        try:
            await self._call(self._connect)
        except BaseException:
            self._executor = None
            executor.shutdown(wait=False)
            raise

    def _connect(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # Workers starting together open one file at once; switching it to WAL needs a moment
        # alone with it, and SQLite answers "locked" at once rather than waiting: try again.
        deadline = time.monotonic() + 15
        while True:
            conn = sqlite3.connect(self._path, timeout=30, isolation_level=None, check_same_thread=False)
            try:
                self._prepare(conn)
            except sqlite3.OperationalError as exc:
                conn.close()
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
                continue
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            return

    @staticmethod
    def _prepare(conn: sqlite3.Connection) -> None:
        """Settings and schema; safe when several workers open one file at the same moment."""
        conn.row_factory = sqlite3.Row
        conn.execute("pragma journal_mode=wal")
        conn.execute("pragma synchronous=normal")
        conn.execute("pragma foreign_keys=on")
        conn.execute("pragma busy_timeout=30000")
        conn.executescript(_SCHEMA_FILE.read_text(encoding="utf-8"))
        for table, column, decl in _ADDED_COLUMNS:
            have = {r["name"] for r in conn.execute(f"pragma table_info({table})")}
            if column not in have:
                try:
                    conn.execute(f"alter table {table} add column {column} {decl}")
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):  # another worker added it just now
                        raise
        (table_sql,) = conn.execute("select sql from sqlite_master where name = 'transactions'").fetchone()
        if "'refund'" not in table_sql:
            # SQLite cannot alter a CHECK: rebuild the ledger with the kinds payments added.
            conn.executescript(
                "begin immediate; alter table transactions rename to transactions_old;"
                " drop trigger if exists transactions_no_update;"
                " drop trigger if exists transactions_no_delete;"
                " drop index if exists transactions_user_idx; drop index if exists transactions_charge_once;"
                " drop index if exists transactions_credit_once;"
                + _SCHEMA_FILE.read_text(encoding="utf-8")
                + "; insert into transactions select * from transactions_old;"
                " drop table transactions_old; commit;"
            )

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
            "select id, balance, reserved, rpm_limit, rph_limit, tpm_limit, debt from users where id = ?",
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
