"""Apply the SQL migrations in deployments/supabase/migrations to a Postgres database."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "deployments" / "supabase" / "migrations"
# Any constant works; it only has to be the same in every process that migrates.
_LOCK_KEY = 7_242_001


async def apply_migrations(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migration files in name order, once, under an advisory lock."""
    applied: list[str] = []
    await conn.execute("select pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "create table if not exists schema_migrations ("
            " version text primary key, applied_at timestamptz not null default now())"
        )
        done = {r["version"] for r in await conn.fetch("select version from schema_migrations")}
        for path in sorted(directory.glob("*.sql")):  # noqa: ASYNC240 - a handful of files at start-up
            if path.name in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text(encoding="utf-8"))
                await conn.execute("insert into schema_migrations (version) values ($1)", path.name)
            applied.append(path.name)
            log.info("applied migration %s", path.name)
    finally:
        await conn.execute("select pg_advisory_unlock($1)", _LOCK_KEY)
    return applied


async def _main(url: str) -> None:
    conn = await asyncpg.connect(url, statement_cache_size=0)
    try:
        names = await apply_migrations(conn)
    finally:
        await conn.close()
    print("applied:", ", ".join(names) if names else "nothing (up to date)")  # noqa: T201 - CLI output


if __name__ == "__main__":
    from app.config import Settings

    database_url = sys.argv[1] if len(sys.argv) > 1 else Settings().DATABASE_URL
    if not database_url:
        sys.exit("DATABASE_URL is not set")
    asyncio.run(_main(database_url))
