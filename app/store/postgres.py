"""Postgres backend (asyncpg): every money operation is one call of a SQL function."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg
import orjson

from app.store.base import (
    ApiKey,
    AuditRow,
    BalanceConflict,
    KeyPolicy,
    RequestRecord,
    Reservation,
    Reversal,
    Settlement,
    StoreError,
    Transaction,
    UsageGroup,
    UsageRow,
    User,
    UserNotFound,
    key_from_row,
    request_from_row,
    token_count,
    user_from_row,
)
from app.store.migrations import apply_migrations
from app.store.topups_postgres import PostgresTopups

T = TypeVar("T")

_USER_COLUMNS = "id, balance, reserved, rpm_limit, rph_limit, tpm_limit, debt"


def uses_transaction_pooler(url: str) -> bool:
    """Supabase's transaction pooler (port 6543) and PgBouncer can't keep prepared statements."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    return parts.port == 6543 or query.get("pgbouncer", [""])[0] == "true"


def _clean_url(url: str) -> str:
    # asyncpg rejects query parameters it does not know, such as Prisma's pgbouncer=true.
    parts = urlsplit(url)
    if "pgbouncer" not in parts.query:
        return url
    kept = "&".join(p for p in parts.query.split("&") if not p.startswith("pgbouncer="))
    return parts._replace(query=kept).geturl()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip the pool's reset query on release: one round trip less per operation.

    Safe because nothing here leaves session state behind: every operation is one statement
    (a function call) outside an explicit transaction, with no SET, LISTEN or temp tables.
    """


def _key(row: asyncpg.Record) -> ApiKey:
    models = row["models"]
    return key_from_row(
        row, revoked=row["revoked_at"] is not None, models=None if models is None else tuple(models)
    )


class PostgresStore(PostgresTopups):
    """Direct Postgres via an asyncpg pool; works through Supabase's pooler."""

    kind = "postgres"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        statement_cache: bool | None = None,
        migrate: bool = True,
    ) -> None:
        self._url = _clean_url(url)
        self._pool_size = pool_size
        cache = not uses_transaction_pooler(url) if statement_cache is None else statement_cache
        self._statement_cache_size = 256 if cache else 0
        self._migrate = migrate
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            if self._migrate:
                conn = await asyncpg.connect(self._url, statement_cache_size=0, timeout=10)
                try:
                    await apply_migrations(conn)
                finally:
                    await conn.close()
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                statement_cache_size=self._statement_cache_size,
                timeout=10,
                command_timeout=10,
                reset=_keep_session,
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise StoreError(f"cannot open Postgres: {type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        if self._pool is None:
            raise StoreError("store is not open")
        try:
            async with self._pool.acquire() as conn:
                return await op(conn)
        except (UserNotFound, BalanceConflict):
            raise
        except asyncpg.NoDataFoundError as exc:
            raise UserNotFound(str(exc)) from exc
        except asyncpg.CheckViolationError as exc:
            raise BalanceConflict(str(exc)) from exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StoreError(f"Postgres failed: {type(exc).__name__}") from exc

    async def _row(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self._run(lambda c: c.fetchrow(sql, *args))

    async def ping(self) -> None:
        await self._run(lambda c: c.fetchval("select 1"))

    async def ensure_user(self, user_id: str, balance: Decimal) -> tuple[User, bool]:
        row = await self._row("select * from billing_ensure_user($1, $2)", user_id, balance)
        assert row is not None
        user = await self.get_user(user_id)
        assert user is not None
        return user, bool(row["created"])

    async def get_user(self, user_id: str) -> User | None:
        row = await self._row(f"select {_USER_COLUMNS} from users where id = $1", user_id)
        return user_from_row(row) if row else None

    async def set_user_limits(
        self, user_id: str, *, rpm: int | None, rph: int | None, tpm: int | None
    ) -> User:
        row = await self._row(
            f"update users set rpm_limit = $2, rph_limit = $3, tpm_limit = $4 where id = $1"
            f" returning {_USER_COLUMNS}",
            user_id,
            rpm,
            rph,
            tpm,
        )
        if row is None:
            raise UserNotFound(user_id)
        return user_from_row(row)

    async def create_api_key(self, *, user_id: str, key_id: str, key_hash: str, name: str | None) -> None:
        try:
            await self._run(
                lambda c: c.execute(
                    "insert into api_keys (id, user_id, key_hash, name) values ($1, $2, $3, $4)",
                    key_id,
                    user_id,
                    key_hash,
                    name,
                )
            )
        except StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.ForeignKeyViolationError):
                raise UserNotFound(user_id) from exc
            raise

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        row = await self._row("select * from billing_api_keys(null, $1)", key_hash)
        return None if row is None else _key(row)

    async def list_api_keys(self, user_id: str) -> list[ApiKey]:
        rows = await self._run(lambda c: c.fetch("select * from billing_api_keys($1, null)", user_id))
        return [_key(r) for r in rows]

    async def set_key_policy(self, *, user_id: str, key_id: str, policy: KeyPolicy) -> bool:
        done: bool = await self._run(
            lambda c: c.fetchval(
                "select billing_set_key_policy($1, $2, $3, $4, $5, $6)",
                user_id,
                key_id,
                policy.budget,
                policy.period if policy.budget is not None else None,
                policy.expires_at,
                None if policy.models is None else list(policy.models),
            )
        )
        return done

    async def usage(self, user_id: str, *, start: date, end: date, group_by: UsageGroup) -> list[UsageRow]:
        rows = await self._run(
            lambda c: c.fetch("select * from billing_usage($1, $2, $3, $4)", user_id, start, end, group_by)
        )
        return [
            UsageRow(r["grp"], r["requests"], r["prompt_tokens"], r["completion_tokens"], r["cost"])
            for r in rows
        ]

    async def usage_all(self, *, start: date, end: date, group_by: UsageGroup) -> list[UsageRow]:
        rows = await self._run(
            lambda c: c.fetch("select * from billing_usage_all($1, $2, $3)", start, end, group_by)
        )
        return [
            UsageRow(r["grp"], r["requests"], r["prompt_tokens"], r["completion_tokens"], r["cost"])
            for r in rows
        ]

    async def list_users(self, *, limit: int, offset: int) -> list[User]:
        rows = await self._run(
            lambda c: c.fetch(
                f"select {_USER_COLUMNS} from users order by id limit $1 offset $2", limit, offset
            )
        )
        return [user_from_row(r) for r in rows]

    async def revoke_api_key(self, *, user_id: str, key_id: str) -> bool:
        status: str = await self._run(
            lambda c: c.execute(
                "update api_keys set revoked_at = now()"
                " where id = $1 and user_id = $2 and revoked_at is null",
                key_id,
                user_id,
            )
        )
        return status.endswith(" 1")

    async def credit(
        self, *, user_id: str, amount: Decimal, description: str, idempotency_key: str | None
    ) -> tuple[Decimal, bool]:
        row = await self._row(
            "select * from billing_credit($1, $2, $3, $4)",
            user_id,
            amount,
            description,
            idempotency_key,
        )
        assert row is not None
        return row["balance"], bool(row["applied"])

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
        row = await self._row(
            "select * from billing_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            user_id,
            request_id,
            prompt_cost,
            output_price,
            token_count(max_tokens),
            token_count(model_max_output),
            ttl_seconds,
            model,
            key_id,
        )
        assert row is not None
        return Reservation(
            status=row["status"],
            max_tokens=row["max_tokens"],
            hold=row["hold"],
            available=row["available"],
        )

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
        row = await self._row(
            "select * from billing_settle($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)",
            user_id,
            request_id,
            cost,
            model,
            prompt_tokens,
            completion_tokens,
            description,
            deployment,
            None if usage is None else orjson.dumps(usage).decode(),
        )
        assert row is not None
        return Settlement(status=row["status"], charged=row["charged"], balance=row["balance"])

    async def release(self, *, user_id: str, request_id: str) -> bool:
        released: bool = await self._run(
            lambda c: c.fetchval("select billing_release($1, $2)", user_id, request_id)
        )
        return released

    async def sweep_expired(self) -> int:
        count: int = await self._run(lambda c: c.fetchval("select billing_sweep_expired()"))
        return count

    async def transactions(self, user_id: str, *, limit: int, offset: int) -> list[Transaction]:
        rows = await self._run(
            lambda c: c.fetch(
                "select id, amount, kind, description, created_at, model, request_id,"
                " prompt_tokens, completion_tokens from transactions where user_id = $1"
                " order by id desc limit $2 offset $3",
                user_id,
                limit,
                offset,
            )
        )
        return [
            Transaction(
                id=str(r["id"]),
                amount=r["amount"],
                kind=r["kind"],
                description=r["description"],
                timestamp=r["created_at"],
                model=r["model"],
                request_id=r["request_id"],
                prompt_tokens=r["prompt_tokens"],
                completion_tokens=r["completion_tokens"],
            )
            for r in rows
        ]

    async def get_request(self, user_id: str, request_id: str) -> RequestRecord | None:
        row = await self._row("select * from billing_request($1, $2)", user_id, request_id)
        if row is None:
            return None
        return request_from_row(row, None if row["usage"] is None else orjson.loads(row["usage"]))

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
        row = await self._row(
            "select * from billing_payment_credit($1, $2, $3, $4, $5, $6)",
            user_id,
            session_id,
            payment_intent,
            amount,
            event_id,
            event_type,
        )
        assert row is not None
        return bool(row["applied"]), row["balance"]

    async def payment_reverse(
        self, *, payment_intent: str, amount: Decimal, cumulative: bool, event_id: str, event_type: str
    ) -> Reversal:
        row = await self._row(
            "select * from billing_payment_reverse($1, $2, $3, $4, $5)",
            payment_intent,
            amount,
            cumulative,
            event_id,
            event_type,
        )
        assert row is not None
        return Reversal(row["status"], row["user_id"], row["taken"], row["debt"], row["balance"])

    async def alert_crossings(self, user_id: str, thresholds: list[Decimal]) -> list[tuple[Decimal, Decimal]]:
        rows = await self._run(
            lambda c: c.fetch("select * from billing_alert_crossings($1, $2)", user_id, thresholds)
        )
        return sorted(((r["threshold"], r["balance"]) for r in rows), reverse=True)

    async def audit(self) -> list[AuditRow]:
        rows = await self._run(lambda c: c.fetch("select * from billing_audit()"))
        return [
            AuditRow(
                user_id=r["user_id"],
                balance=r["balance"],
                ledger_sum=r["ledger_sum"],
                reserved=r["reserved"],
                held_sum=r["held_sum"],
            )
            for r in rows
        ]
