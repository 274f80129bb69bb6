"""How fast /billing/usage answers over a big ledger (it reads the rollups, never the ledger).

    python bench/usage.py [--rows 1000000] [--requests 300]

Fills a fresh Postgres database with one user whose ledger holds `--rows` charges spread over
365 days, 6 models and 10 keys, and the usage rollups those charges make (the same rows the
settle writes, built here in one statement rather than a million calls); checks the rollups
against the ledger; then makes a few real calls of billing_settle, which must move both alike;
then starts a gateway on the database and times sequential GET /billing/usage calls (keep-alive,
after a warm-up) for each grouping over 30 and 365 days. Prints a table; asserts the sums.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.store.migrations import apply_migrations  # noqa: E402
from tests.conftest import PG_SERVER, model_entry, start_gateway, stop_gateway  # noqa: E402
from tests.fake_provider import FakeProvider  # noqa: E402

USER = "bench-user"


async def fill(url: str, rows: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
        t0 = time.perf_counter()
        async with conn.transaction():
            await conn.execute("insert into users (id) values ($1)", USER)
            await conn.execute(
                "insert into api_keys (id, user_id, key_hash, name)"
                " select 'key_' || i, $1, md5('bench' || i), 'k' || i from generate_series(0, 9) i",
                USER,
            )
            await conn.execute(
                "insert into transactions (user_id, amount, kind, description)"
                " values ($1, 1000000, 'credit', 'opening balance')",
                USER,
            )
            await conn.execute(
                "insert into transactions (user_id, amount, kind, description, model, request_id,"
                " prompt_tokens, completion_tokens, created_at)"
                " select $1, -0.00012345, 'charge', 'bench call', 'model-' || (i % 6), 'req-' || i,"
                " 100 + i % 7, 50 + i % 11, now() - (i % 365) * interval '1 day'"
                " from generate_series(1, $2::integer - 1) i",
                USER,
                rows,
            )
            # What the settle of each of those calls would have added to the rollups.
            await conn.execute(
                "insert into usage_rollups (user_id, day, model, key_id, requests, prompt_tokens,"
                " completion_tokens, cost)"
                " select user_id, (created_at at time zone 'UTC')::date, model, 'key_' || (id % 10),"
                " count(*), sum(prompt_tokens), sum(completion_tokens), -sum(amount)"
                " from transactions where kind = 'charge' group by 1, 2, 3, 4"
            )
            await conn.execute(
                "update users set balance = (select sum(amount) from transactions where user_id = $1)"
                " where id = $1",
                USER,
            )
        await conn.execute("analyze")
        print(f"filled {rows:,} ledger rows in {time.perf_counter() - t0:.1f} s", flush=True)
        # A few real calls: reserve + settle must add to the rollups exactly what they charge.
        for i in range(100):
            rid = f"live-{i}"
            await conn.execute(
                "select * from billing_reserve($1, $2, 0.001, 0.00001, 10, null, 60, 'model-live', 'key_1')",
                USER,
                rid,
            )
            await conn.execute(
                "select * from billing_settle($1, $2, 0.00123, 'model-live', 10, 10, 'live')", USER, rid
            )
        counts = await conn.fetchrow(
            "select (select count(*) from transactions) as ledger,"
            " (select count(*) from usage_rollups) as rollups,"
            " (select -sum(amount) from transactions where kind = 'charge') as charged,"
            " (select sum(cost) from usage_rollups) as rolled,"
            " (select count(*) from billing_audit()) as audit"
        )
        assert counts["charged"] == counts["rolled"], counts
        assert counts["audit"] == 0, counts
        print(
            f"ledger rows: {counts['ledger']:,}; rollup rows: {counts['rollups']:,};"
            f" charged == rolled up == {counts['charged']}; billing_audit() clean",
            flush=True,
        )
    finally:
        await conn.close()


def time_usage(base: str, key: str, requests: int) -> list[str]:
    lines = [f"{'group_by':<8} {'days':>5} {'rows':>5} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}"]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        for days in (30, 365):
            for group in ("day", "model", "key"):
                end = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(time.time() + 86400))
                start = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(time.time() - (days - 1) * 86400))
                params = {"group_by": group, "start": start, "end": end}
                for _ in range(20):  # warm-up: connections, plans, caches
                    http.get("/billing/usage", params=params)
                samples = []
                for _ in range(requests):
                    t0 = time.perf_counter()
                    r = http.get("/billing/usage", params=params)
                    samples.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200, r.text
                n_rows = len(r.json()["rows"])
                samples.sort()
                p95 = samples[int(len(samples) * 0.95) - 1]
                lines.append(
                    f"{group:<8} {days:>5} {n_rows:>5} {statistics.median(samples):>7.2f} {p95:>7.2f}"
                    f" {samples[-1]:>7.2f}"
                )
                if days == 365 and group == "day":
                    total = sum(Decimal(str(row["requests"])) for row in r.json()["rows"])
                    lines.append(f"         (requests summed over 365 days: {total:,})")
    return lines


async def _sql(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    dbname = f"gwbench_usage_{uuid.uuid4().hex[:10]}"
    db_url = PG_SERVER.rsplit("/", 1)[0] + f"/{dbname}"
    asyncio.run(_sql(PG_SERVER, f'create database "{dbname}"'))
    try:
        asyncio.run(fill(db_url, args.rows))
        with FakeProvider() as fake, tempfile.TemporaryDirectory() as tmp:
            gw = start_gateway(
                Path(tmp),
                models=[model_entry("m", "fake", fake.base_url)],
                env={"DATABASE_URL": db_url, "DATABASE_POOL_SIZE": "5"},
            )
            try:
                r = gw.admin("POST", f"/admin/users/{USER}/keys", {"name": "bench"})
                assert r.status_code == 201, r.text
                print("\n".join(time_usage(gw.url, r.json()["key"], args.requests)), flush=True)
            finally:
                stop_gateway(gw)
    finally:
        asyncio.run(_sql(PG_SERVER, f'drop database if exists "{dbname}" with (force)'))


if __name__ == "__main__":
    main()
