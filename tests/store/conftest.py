"""Store fixtures: fresh Postgres databases with the migrations, and the PostgREST shim on one."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import asyncpg
import pytest

from app.store.migrations import apply_migrations
from tests.conftest import PG_SERVER, drop_abandoned_databases, tag_database
from tests.store.postgrest_shim import PostgrestShim

ADMIN_DSN = PG_SERVER
SERVICE_KEY = "test-service-role-" + secrets.token_hex(16)


def database_url(name: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"


async def create_database(name: str, *, migrate: bool = True) -> str:
    """Create database `name` (with the gateway's migrations applied) and return its URL."""
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await drop_abandoned_databases(admin)
        await admin.execute(f'create database "{name}"')
        await tag_database(admin, name)
    finally:
        await admin.close()
    if migrate:
        conn = await asyncpg.connect(database_url(name))
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
    return database_url(name)


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def shim_db_url() -> Iterator[str]:
    """A fresh, migrated database behind the PostgREST shim."""
    name = f"gw_supa_{secrets.token_hex(6)}"
    url = asyncio.run(create_database(name))
    try:
        yield url
    finally:
        asyncio.run(drop_database(name))


@pytest.fixture(scope="session")
def shim(shim_db_url: str) -> Iterator[PostgrestShim]:
    """A PostgREST stand-in on real Postgres, as Supabase's REST API."""
    server = PostgrestShim(shim_db_url, SERVICE_KEY).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def store_pg_url() -> Iterator[str]:
    """A fresh, empty database for PostgresStore (which applies the migrations itself)."""
    name = f"gw_store_{secrets.token_hex(6)}"
    url = asyncio.run(create_database(name, migrate=False))
    try:
        yield url
    finally:
        asyncio.run(drop_database(name))
