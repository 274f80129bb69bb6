"""Supabase backend over its REST API (supabase-py): money by RPC, accounts and keys by table."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol

import httpx
from postgrest import APIError, APIResponse
from postgrest.types import ReturnMethod
from supabase import AsyncClient, AsyncClientOptions, AsyncSupabaseException, acreate_client

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
    to_decimal,
    token_count,
    user_from_row,
)
from app.store.topups_supabase import SupabaseTopups

# supabase-py decodes responses with json.loads, which turns a numeric into a float. Casting
# money columns to text in the select list makes PostgREST send every digit as a string.
_USER_COLUMNS = "id,balance::text,reserved::text,rpm_limit,rph_limit,tpm_limit,debt::text"
_KEY_COLUMNS = (
    "id,user_id,name,revoked_at,rpm_limit,tpm_limit,budget_amount::text,budget_period,"
    "budget_spent::text,expires_at,models,created_at"
)
_TX_COLUMNS = "id,amount::text,kind,description,created_at,model,request_id,prompt_tokens,completion_tokens"


class _Query(Protocol):
    async def execute(self) -> APIResponse: ...


def _num(value: Decimal) -> str:
    # Sent as a JSON string: a JSON number would pass through a float in json.dumps.
    if not value.is_finite():
        raise ValueError(f"not a finite amount: {value}")
    return format(value, "f")


def _rows(data: object) -> list[dict[str, Any]]:
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise StoreError("Supabase sent an unexpected response")
    return data


def _one(data: object) -> dict[str, Any]:
    rows = _rows(data)
    if len(rows) != 1:
        raise StoreError(f"Supabase returned {len(rows)} rows where one was expected")
    return rows[0]


class SupabaseStore(SupabaseTopups):
    """Supabase through PostgREST with the service-role key; no direct database connection."""

    kind = "supabase"

    def __init__(self, url: str, service_role_key: str, *, timeout: float = 10.0) -> None:
        self._url = url
        self._key = service_role_key
        self._timeout = timeout
        self._http: httpx.AsyncClient | None = None
        self._client: AsyncClient | None = None

    async def open(self) -> None:
        # supabase-py has no close(); owning the httpx client lets close() end its connections.
        # Retries are off: supabase-py would sleep 1+2+4 s on a dead server before failing.
        self._http = httpx.AsyncClient(timeout=self._timeout)
        options = AsyncClientOptions(
            httpx_client=self._http,
            postgrest_client_retry=False,
            auto_refresh_token=False,
            persist_session=False,
        )
        try:
            self._client = await acreate_client(self._url, self._key, options=options)
            await self.ping()
        except AsyncSupabaseException as exc:
            await self.close()
            raise StoreError(f"cannot open Supabase: {self._redact(exc.message)}") from None
        except StoreError:
            await self.close()
            raise

    async def close(self) -> None:
        self._client = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def _db(self) -> AsyncClient:
        if self._client is None:
            raise StoreError("store is not open")
        return self._client

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "[service key]") if self._key else text

    async def _run(self, query: _Query) -> object:
        try:
            response = await query.execute()
        except APIError as exc:
            code = exc.code or ""
            message = self._redact(exc.message or "")
            if code == "P0002":  # no_data_found, raised by the billing functions
                raise UserNotFound(message) from None
            if code == "23514":  # check_violation: a balance or a hold would go negative
                raise BalanceConflict(message) from None
            if code == "23503":  # every foreign key in the schema points at users(id)
                raise UserNotFound(message) from None
            # from None: the PostgREST error may echo request details into its own text.
            raise StoreError(f"Supabase failed: {code or 'no code'} {message}".rstrip()) from None
        except httpx.HTTPError as exc:
            raise StoreError(f"Supabase unreachable: {type(exc).__name__}") from exc
        return response.data

    async def _rpc(self, fn: str, params: dict[str, Any], columns: str | None = None) -> object:
        query = self._db.rpc(fn, params)
        return await self._run(query.select(columns) if columns else query)

    async def ping(self) -> None:
        _rows(await self._run(self._db.table("users").select("id").limit(1)))

    async def ensure_user(self, user_id: str, balance: Decimal) -> tuple[User, bool]:
        row = _one(
            await self._rpc("billing_ensure_user", {"p_user": user_id, "p_balance": _num(balance)}, "created")
        )
        user = await self.get_user(user_id)
        if user is None:
            raise StoreError(f"account {user_id} vanished after it was ensured")
        return user, bool(row["created"])

    async def get_user(self, user_id: str) -> User | None:
        query = self._db.table("users").select(_USER_COLUMNS).eq("id", user_id).limit(1)
        rows = _rows(await self._run(query))
        return user_from_row(rows[0]) if rows else None

    async def set_user_limits(
        self, user_id: str, *, rpm: int | None, rph: int | None, tpm: int | None
    ) -> User:
        query = (
            self._db.table("users")
            .update({"rpm_limit": rpm, "rph_limit": rph, "tpm_limit": tpm})
            .eq("id", user_id)
            .select(_USER_COLUMNS)
        )
        rows = _rows(await self._run(query))
        if not rows:
            raise UserNotFound(user_id)
        return user_from_row(rows[0])

    async def create_api_key(self, *, user_id: str, key_id: str, key_hash: str, name: str | None) -> None:
        row = {"id": key_id, "user_id": user_id, "key_hash": key_hash, "name": name}
        await self._run(self._db.table("api_keys").insert(row, returning=ReturnMethod.minimal))

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        rows = await self._keys({"p_user": None, "p_key_hash": key_hash})
        return rows[0] if rows else None

    async def list_api_keys(self, user_id: str) -> list[ApiKey]:
        return await self._keys({"p_user": user_id, "p_key_hash": None})

    async def _keys(self, params: dict[str, Any]) -> list[ApiKey]:
        out = []
        for row in _rows(await self._rpc("billing_api_keys", params, _KEY_COLUMNS)):
            data = dict(row)
            data["expires_at"] = data["expires_at"] and datetime.fromisoformat(data["expires_at"])
            data["created_at"] = datetime.fromisoformat(data["created_at"])
            models = data["models"]
            out.append(
                key_from_row(
                    data,
                    revoked=data["revoked_at"] is not None,
                    models=None if models is None else tuple(models),
                )
            )
        return out

    async def set_key_policy(self, *, user_id: str, key_id: str, policy: KeyPolicy) -> bool:
        params = {
            "p_user": user_id,
            "p_key_id": key_id,
            "p_budget": None if policy.budget is None else _num(policy.budget),
            "p_period": policy.period if policy.budget is not None else None,
            "p_expires_at": None if policy.expires_at is None else policy.expires_at.isoformat(),
            "p_models": None if policy.models is None else list(policy.models),
        }
        data = await self._rpc("billing_set_key_policy", params)
        if not isinstance(data, bool):
            raise StoreError("Supabase sent an unexpected response")
        return data

    async def usage(self, user_id: str, *, start: date, end: date, group_by: UsageGroup) -> list[UsageRow]:
        params = {
            "p_user": user_id,
            "p_start": start.isoformat(),
            "p_end": end.isoformat(),
            "p_group": group_by,
        }
        columns = "grp,requests,prompt_tokens,completion_tokens,cost::text"
        return [
            UsageRow(
                r["grp"], r["requests"], r["prompt_tokens"], r["completion_tokens"], to_decimal(r["cost"])
            )
            for r in _rows(await self._rpc("billing_usage", params, columns))
        ]

    async def usage_all(self, *, start: date, end: date, group_by: UsageGroup) -> list[UsageRow]:
        params = {"p_start": start.isoformat(), "p_end": end.isoformat(), "p_group": group_by}
        columns = "grp,requests,prompt_tokens,completion_tokens,cost::text"
        return [
            UsageRow(
                r["grp"], r["requests"], r["prompt_tokens"], r["completion_tokens"], to_decimal(r["cost"])
            )
            for r in _rows(await self._rpc("billing_usage_all", params, columns))
        ]

    async def list_users(self, *, limit: int, offset: int) -> list[User]:
        query = self._db.table("users").select(_USER_COLUMNS).order("id").limit(limit).offset(offset)
        return [user_from_row(r) for r in _rows(await self._run(query))]

    async def revoke_api_key(self, *, user_id: str, key_id: str) -> bool:
        # 'now' is Postgres's own input for the current time: the database clock, not ours.
        query = (
            self._db.table("api_keys")
            .update({"revoked_at": "now"})
            .eq("id", key_id)
            .eq("user_id", user_id)
            .is_("revoked_at", "null")
            .select("id")
        )
        return bool(_rows(await self._run(query)))

    async def credit(
        self, *, user_id: str, amount: Decimal, description: str, idempotency_key: str | None
    ) -> tuple[Decimal, bool]:
        params = {
            "p_user": user_id,
            "p_amount": _num(amount),
            "p_description": description,
            "p_idempotency_key": idempotency_key,
        }
        row = _one(await self._rpc("billing_credit", params, "balance::text,applied"))
        return to_decimal(row["balance"]), bool(row["applied"])

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
        params = {
            "p_user": user_id,
            "p_request_id": request_id,
            "p_prompt_cost": _num(prompt_cost),
            "p_output_price": _num(output_price),
            "p_max_tokens": token_count(max_tokens),
            "p_model_max_output": token_count(model_max_output),
            "p_ttl_seconds": ttl_seconds,
            "p_model": model,
            "p_key_id": key_id,
        }
        columns = "status,max_tokens,hold::text,available::text"
        row = _one(await self._rpc("billing_reserve", params, columns))
        return Reservation(
            status=row["status"],
            max_tokens=row["max_tokens"],
            hold=to_decimal(row["hold"]),
            available=to_decimal(row["available"]),
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
        params = {
            "p_user": user_id,
            "p_request_id": request_id,
            "p_cost": _num(cost),
            "p_model": model,
            "p_prompt_tokens": prompt_tokens,
            "p_completion_tokens": completion_tokens,
            "p_description": description,
            "p_deployment": deployment,
            "p_usage": usage,
        }
        row = _one(await self._rpc("billing_settle", params, "status,charged::text,balance::text"))
        return Settlement(
            status=row["status"], charged=to_decimal(row["charged"]), balance=to_decimal(row["balance"])
        )

    async def release(self, *, user_id: str, request_id: str) -> bool:
        data = await self._rpc("billing_release", {"p_user": user_id, "p_request_id": request_id})
        if not isinstance(data, bool):
            raise StoreError("Supabase sent an unexpected response")
        return data

    async def sweep_expired(self) -> int:
        data = await self._rpc("billing_sweep_expired", {})
        if not isinstance(data, int) or isinstance(data, bool):
            raise StoreError("Supabase sent an unexpected response")
        return data

    async def transactions(self, user_id: str, *, limit: int, offset: int) -> list[Transaction]:
        query = (
            self._db.table("transactions")
            .select(_TX_COLUMNS)
            .eq("user_id", user_id)
            .order("id", desc=True)
            .limit(limit)
            .offset(offset)
        )
        return [
            Transaction(
                id=str(r["id"]),
                amount=to_decimal(r["amount"]),
                kind=r["kind"],
                description=r["description"],
                timestamp=datetime.fromisoformat(r["created_at"]),
                model=r["model"],
                request_id=r["request_id"],
                prompt_tokens=r["prompt_tokens"],
                completion_tokens=r["completion_tokens"],
            )
            for r in _rows(await self._run(query))
        ]

    async def get_request(self, user_id: str, request_id: str) -> RequestRecord | None:
        columns = (
            "request_id,status,model,deployment,hold::text,cost::text,uncollected::text,usage,"
            "created_at,settled_at"
        )
        params = {"p_user": user_id, "p_request_id": request_id}
        rows = _rows(await self._rpc("billing_request", params, columns))
        if not rows:
            return None
        row = dict(rows[0])
        row["created_at"] = datetime.fromisoformat(row["created_at"])
        row["settled_at"] = row["settled_at"] and datetime.fromisoformat(row["settled_at"])
        usage = row["usage"]
        return request_from_row(row, usage if isinstance(usage, dict) else None)

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
        params = {
            "p_user": user_id,
            "p_session": session_id,
            "p_payment_intent": payment_intent,
            "p_amount": _num(amount),
            "p_event_id": event_id,
            "p_event_type": event_type,
        }
        row = _one(await self._rpc("billing_payment_credit", params, "applied,balance::text"))
        return bool(row["applied"]), to_decimal(row["balance"])

    async def payment_reverse(
        self, *, payment_intent: str, amount: Decimal, cumulative: bool, event_id: str, event_type: str
    ) -> Reversal:
        params = {
            "p_payment_intent": payment_intent,
            "p_amount": _num(amount),
            "p_cumulative": cumulative,
            "p_event_id": event_id,
            "p_event_type": event_type,
        }
        columns = "status,user_id,taken::text,debt::text,balance::text"
        r = _one(await self._rpc("billing_payment_reverse", params, columns))
        return Reversal(
            r["status"], r["user_id"], to_decimal(r["taken"]), to_decimal(r["debt"]), to_decimal(r["balance"])
        )

    async def alert_crossings(self, user_id: str, thresholds: list[Decimal]) -> list[tuple[Decimal, Decimal]]:
        params = {"p_user": user_id, "p_thresholds": [_num(t) for t in thresholds]}
        rows = _rows(await self._rpc("billing_alert_crossings", params, "threshold::text,balance::text"))
        return sorted(((to_decimal(r["threshold"]), to_decimal(r["balance"])) for r in rows), reverse=True)

    async def audit(self) -> list[AuditRow]:
        columns = "user_id,balance::text,ledger_sum::text,reserved::text,held_sum::text"
        return [
            AuditRow(
                user_id=r["user_id"],
                balance=to_decimal(r["balance"]),
                ledger_sum=to_decimal(r["ledger_sum"]),
                reserved=to_decimal(r["reserved"]),
                held_sum=to_decimal(r["held_sum"]),
            )
            for r in _rows(await self._rpc("billing_audit", {}, columns))
        ]
