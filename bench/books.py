"""One account's books after a run: its balance, ledger and holds, through the admin API and in Postgres."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from decimal import Decimal
from typing import Any

from bench import procs, targets

START_BALANCE = Decimal("1000000")  # more than any run spends


def create_user(gw: targets.Target, balance: Decimal = START_BALANCE) -> tuple[str, str]:
    """A new account with `balance` and an API key for it: (user id, key)."""
    root = gw.base.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {targets.ADMIN_KEY}", "Content-Type": "application/json"}
    user = f"scale-{secrets.token_hex(5)}"
    body = json.dumps({"user_id": user, "balance": str(balance)}).encode()
    status, data = procs.http("POST", root + "/admin/users", body=body, headers=headers)
    if status != 201:
        raise RuntimeError(f"creating {user} failed: {status} {data[:300]!r}")
    status, data = procs.http("POST", f"{root}/admin/users/{user}/keys", body=b"{}", headers=headers)
    if status != 201:
        raise RuntimeError(f"creating a key for {user} failed: {status} {data[:300]!r}")
    return user, str(json.loads(data)["key"])


async def books(gw: targets.Target, user: str, *, calls: int) -> dict[str, Any]:
    """One account after its calls: API and Postgres balance, ledger, holds, audit."""
    import asyncpg

    assert gw.database is not None
    conn = await asyncpg.connect(targets._dsn(gw.database), timeout=5)
    try:
        deadline = time.monotonic() + 15  # a settle may still be landing
        while await conn.fetchval("select count(*) from reservations where user_id = $1", user):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        holds = int(await conn.fetchval("select count(*) from reservations where user_id = $1", user))
        row = await conn.fetchrow("select balance, reserved from users where id = $1", user)
        ledger = await conn.fetchrow(
            "select count(*) filter (where kind = 'charge') as charges,"
            " coalesce(sum(amount) filter (where kind = 'charge'), 0) as charged,"
            " coalesce(sum(amount) filter (where kind = 'credit'), 0) as credited,"
            " count(*) filter (where kind = 'charge' and -amount <> round(prompt_tokens * $2::numeric"
            "   + completion_tokens * $3::numeric, 8)) as mispriced"
            " from transactions where user_id = $1",
            user,
            str(targets.PRICES["input_cost_per_token"]),
            str(targets.PRICES["output_cost_per_token"]),
        )
        statuses = dict(
            await conn.fetch("select status, count(*) from requests where user_id = $1 group by 1", user)
        )
        audit = [dict(r) for r in await conn.fetch("select * from billing_audit()")]
    finally:
        await conn.close()
    root = gw.base.removesuffix("/v1")
    status, body = procs.http(
        "GET", f"{root}/admin/users/{user}", headers={"Authorization": f"Bearer {targets.ADMIN_KEY}"}
    )
    api = json.loads(body) if status == 200 else {}
    balance, charged = row["balance"], ledger["charged"]
    checks = {
        "charges == calls": ledger["charges"] == calls,
        "credited == start": ledger["credited"] == START_BALANCE,
        "balance == start - sum(charges)": balance == START_BALANCE + charged,
        "API balance == Postgres balance": status == 200 and Decimal(str(api.get("balance"))) == balance,
        "no hold left": holds == 0 and row["reserved"] == 0,
        "every charge = its tokens x price": ledger["mispriced"] == 0,
        "billing_audit() empty": not audit,
    }
    return {
        "user": user,
        "calls": calls,
        "charges": ledger["charges"],
        "charged": str(-charged),
        "start": str(START_BALANCE),
        "balance": str(balance),
        "api_balance": str(api.get("balance")),
        "holds": holds,
        "requests": {str(k): int(v) for k, v in statuses.items()},
        "audit_rows": len(audit),
        "checks": checks,
        "exact": all(checks.values()),
    }
