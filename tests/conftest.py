"""Shared fixtures: the fake provider, a private Postgres database, and real gateway processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest
import yaml

from tests.fake_provider import FakeProvider

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "test-admin-key-0123456789"
# The servers the suite talks to: the private ones `make test` starts, or ones the user named.
# Never a default: a server on 127.0.0.1:5432 may be someone else's.
PG_SERVER = os.environ.get("TEST_DATABASE_URL", "")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "")

# Prices used by test configs: exact, so expected charges can be computed by hand.
INPUT_PRICE = Decimal("0.000001")
OUTPUT_PRICE = Decimal("0.000002")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, *, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


def pytest_configure(config: pytest.Config) -> None:
    given = {"TEST_DATABASE_URL": PG_SERVER, "TEST_REDIS_URL": REDIS_URL}
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise pytest.UsageError(
            f"{' and '.join(missing)} not set. Run the tests with `make test` (add ARGS=... for pytest's"
            " arguments): it starts a private PostgreSQL and Redis for the run. To use servers of your"
            " own, set TEST_DATABASE_URL=postgresql://... and TEST_REDIS_URL=redis://..."
        )


@pytest.fixture(scope="session")
def fake_provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fp:
        yield fp


def _admin_dsn(dbname: str) -> str:
    base, _, _ = PG_SERVER.rpartition("/")
    return f"{base}/{dbname}"


# Databases a run creates carry this comment, so a later run on the same host can drop the ones
# whose run died before its teardown (SIGKILL, a machine reset) even on a server it shares.
RUN_TAG = f"llm-gateway test run {socket.gethostname()} pid "


async def tag_database(conn: asyncpg.Connection, name: str) -> None:
    """Mark database `name` as this run's, for drop_abandoned_databases."""
    await conn.execute(f"comment on database \"{name}\" is '{RUN_TAG}{os.getpid()}'")


async def drop_abandoned_databases(conn: asyncpg.Connection) -> None:
    """Drop the databases of earlier runs on this host whose process is gone."""
    rows = await conn.fetch(
        "select datname, shobj_description(oid, 'pg_database') as note from pg_database"
        " where shobj_description(oid, 'pg_database') like $1",
        RUN_TAG + "%",
    )
    for row in rows:
        pid = int(row["note"].removeprefix(RUN_TAG))
        try:
            os.kill(pid, 0)
            continue  # that run is still going
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's live process
        await conn.execute(f'drop database if exists "{row["datname"]}" with (force)')


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh database on the test server for this run, dropped afterwards."""
    import asyncio

    name = f"gwtest_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(PG_SERVER)
        try:
            await drop_abandoned_databases(conn)
            await conn.execute(f'create database "{name}"')
            await tag_database(conn, name)
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(PG_SERVER)
        try:
            await conn.execute(f'drop database if exists "{name}" with (force)')
        finally:
            await conn.close()

    asyncio.run(create())
    try:
        yield _admin_dsn(name)
    finally:
        asyncio.run(drop())


def model_entry(name: str, behaviour: str, api_base: str, **info: Any) -> dict[str, Any]:
    """A model_list entry served by the fake provider with a behaviour string."""
    model_info: dict[str, Any] = {
        "input_cost_per_token": str(INPUT_PRICE),
        "output_cost_per_token": str(OUTPUT_PRICE),
    }
    model_info.update(info)
    return {
        "model_name": name,
        "litellm_params": {
            "model": f"openai/{behaviour}",
            "api_base": api_base,
            "api_key": "sk-provider-secret",
        },
        "model_info": model_info,
    }


@dataclass
class Gateway:
    """A gateway running as a real process, and helpers to talk to it."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]
    data_dir: Path
    users: list[str] = field(default_factory=list)

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        return httpx.request(
            method, self.url + path, json=json, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        )

    def new_user(self, balance: Decimal | str | int = 10) -> tuple[str, str]:
        """Create a user with a balance and a key; returns (user_id, key)."""
        user_id = f"user-{uuid.uuid4().hex[:10]}"
        r = self.admin("POST", "/admin/users", {"user_id": user_id, "balance": str(balance)})
        assert r.status_code == 201, r.text
        r = self.admin("POST", f"/admin/users/{user_id}/keys", {"name": "test"})
        assert r.status_code == 201, r.text
        self.users.append(user_id)
        return user_id, r.json()["key"]

    def client(self, key: str, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.v1, api_key=key, max_retries=0, timeout=60, **kwargs)

    def async_client(self, key: str, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.v1, api_key=key, max_retries=0, timeout=60, **kwargs)

    def balance(self, key: str) -> Decimal:
        r = httpx.get(self.url + "/billing/balance", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200, r.text
        return Decimal(str(json.loads(r.text, parse_float=Decimal)["balance"]))

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_gateway(
    tmp: Path,
    *,
    models: list[dict[str, Any]],
    router_settings: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
) -> Gateway:
    """Start `python -m app` (or `command`) on a free port with a config of our own."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = {"model_list": models, "router_settings": router_settings or {"num_retries": 0}}
    config_path = tmp / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    data_dir = tmp / "data"
    full_env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ENVIRONMENT": "test",
        "LOG_LEVEL": "WARNING",
        "ADMIN_API_KEY": ADMIN_KEY,
        "GATEWAY_CONFIG": str(config_path),
        "DATA_DIR": str(data_dir),
        "RATE_LIMIT_ENABLED": "false",
    }
    full_env.update(env or {})
    log_path = tmp / f"gateway-{port}.log"
    cmd = command or [sys.executable, "-m", "app"]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=tmp, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc=proc, timeout=60)
    except Exception:
        proc.kill()
        raise RuntimeError(
            "gateway did not start:\n" + log_path.read_text(errors="replace")[-4000:]
        ) from None
    return Gateway(url=url, proc=proc, log_path=log_path, env=full_env, data_dir=data_dir)


def stop_gateway(gw: Gateway) -> None:
    gw.proc.terminate()
    try:
        gw.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        gw.proc.kill()
        gw.proc.wait()
