"""What the billing tests read back from a gateway: ledgers, holds, expected charges, the audit."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

from app.store.base import AuditRow, Store
from tests.conftest import INPUT_PRICE, OUTPUT_PRICE, Gateway
from tests.fake_provider import FakeProvider, count_prompt_tokens


def decimal_json(r: httpx.Response) -> Any:
    """A response body with every JSON number read as an exact Decimal."""
    return json.loads(r.text, parse_float=Decimal, parse_int=Decimal)


def expected_cost(prompt_tokens: int, completion_tokens: int, *, markup: Decimal = Decimal(1)) -> Decimal:
    """The provider's usage priced at the test prices (exact, 8 places)."""
    raw = (prompt_tokens * INPUT_PRICE + completion_tokens * OUTPUT_PRICE) * markup
    return raw.quantize(Decimal("0.00000001"))


def provider_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """prompt_tokens as the fake provider reports them."""
    return count_prompt_tokens(messages)


def tag() -> str:
    """A word that marks one test's requests among everything the fake provider recorded."""
    return f"tag{uuid.uuid4().hex[:12]}"


def provider_saw(fake: FakeProvider, marker: str) -> list[dict[str, Any]]:
    """Bodies of the chat requests the provider received that carry `marker`."""
    out = []
    for r in fake.requests():
        body = r.get("body") or {}
        if r.get("path", "").endswith("/chat/completions") and marker in json.dumps(body.get("messages")):
            out.append(body)
    return out


@dataclass(frozen=True)
class Row:
    amount: Decimal
    kind: str
    description: str
    request_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


def ledger(gw: Gateway, key: str) -> list[Row]:
    """Every transaction of the key's user, newest first, through GET /billing/transactions."""
    rows: list[Row] = []
    offset = 0
    while True:
        r = httpx.get(
            gw.url + "/billing/transactions",
            params={"limit": 100, "offset": offset},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        page = decimal_json(r)["transactions"]
        for t in page:
            rows.append(
                Row(
                    amount=t["amount"],
                    kind="charge" if t["request_id"] else "credit",
                    description=t["description"],
                    request_id=t["request_id"],
                    prompt_tokens=None if t.get("prompt_tokens") is None else int(t["prompt_tokens"]),
                    completion_tokens=None
                    if t.get("completion_tokens") is None
                    else int(t["completion_tokens"]),
                )
            )
        if len(page) < 100:
            return rows
        offset += 100


def charges(gw: Gateway, key: str) -> dict[str, Row]:
    """Charge rows by request id; fails if any request id was charged twice."""
    rows = [row for row in ledger(gw, key) if row.request_id is not None]
    by_id = {row.request_id: row for row in rows if row.request_id is not None}
    assert len(by_id) == len(rows), "a request id was charged more than once"
    return by_id


def account(gw: Gateway, user_id: str) -> dict[str, Any]:
    r = gw.admin("GET", f"/admin/users/{user_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = decimal_json(r)
    return body


def wait_reserved_zero(gw: Gateway, user_id: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """Holds released or settled in background tasks are gone within a moment."""
    deadline = time.monotonic() + timeout
    while True:
        acct = account(gw, user_id)
        if acct["reserved"] == 0:
            return acct
        if time.monotonic() > deadline:
            raise AssertionError(f"still reserved after {timeout} s: {acct}")
        time.sleep(0.05)


async def audit(gw: Gateway) -> list[AuditRow]:
    """The store's own audit, run against the gateway's database (empty when the books balance)."""
    from app.store.postgres import PostgresStore
    from app.store.sqlite import SqliteStore
    from app.store.supabase import SupabaseStore

    database_url, rest_url = gw.env.get("DATABASE_URL"), gw.env.get("SUPABASE_URL")
    store: Store
    if database_url:
        store = PostgresStore(database_url, pool_size=1, migrate=False)
    elif rest_url:
        store = SupabaseStore(rest_url, gw.env["SUPABASE_SERVICE_ROLE_KEY"])
    else:
        store = SqliteStore(gw.data_dir)
    await store.open()
    try:
        return await store.audit()
    finally:
        await store.close()
