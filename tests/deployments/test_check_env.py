"""check_env.py, run as an operator would: a subprocess with a given environment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import yaml

from tests.conftest import PG_SERVER, REDIS_URL
from tests.fake_provider import FakeProvider

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "check_env.py"
ADMIN_KEY = "adm-0123456789-very-secret-admin-key"
LOCAL_PG = PG_SERVER
DEMO_CONFIG = """
model_list:
  - model_name: demo
    litellm_params:
      model: openai/gpt-4o-mini
      mock_response: hi
"""


@pytest.fixture
def demo_config(tmp_path: Path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(DEMO_CONFIG)
    return path


def run(tmp_path: Path, config: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run check_env.py in an empty directory (no stray .env) with only the given settings."""
    workdir = tmp_path / "cwd"
    workdir.mkdir(exist_ok=True)
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "GATEWAY_CONFIG": str(config),
        "ADMIN_API_KEY": ADMIN_KEY,
        "DATA_DIR": str(tmp_path / "data"),
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=workdir,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def row(output: str, name: str) -> str:
    rows = [line for line in output.splitlines() if line.split("  ")[0].strip() == name]
    assert len(rows) == 1, f"no single {name!r} row in:\n{output}"
    return rows[0]


def test_defaults_pass_on_the_embedded_store(tmp_path: Path, demo_config: Path) -> None:
    result = run(tmp_path, demo_config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " OK " in row(result.stdout, "settings")
    assert "1 model(s): demo" in row(result.stdout, "model config")
    assert "embedded store" in row(result.stdout, "store")
    assert "FAIL" not in result.stdout


def test_unreachable_database_fails(tmp_path: Path, demo_config: Path) -> None:
    result = run(tmp_path, demo_config, DATABASE_URL="postgresql://nobody@127.0.0.1:1/x")
    assert result.returncode != 0
    line = row(result.stdout, "postgres")
    assert "FAIL" in line and "127.0.0.1:1" in line
    assert "postgres" in result.stderr  # the summary names the failed check


def test_bad_port_names_the_variable(tmp_path: Path, demo_config: Path) -> None:
    result = run(tmp_path, demo_config, PORT="notanumber")
    assert result.returncode != 0
    line = row(result.stdout, "settings")
    assert "FAIL" in line and "PORT" in line and "integer" in line
    assert "Traceback" not in result.stdout + result.stderr


def test_missing_model_config_fails(tmp_path: Path) -> None:
    result = run(tmp_path, tmp_path / "nope.yaml")
    assert result.returncode != 0
    assert "not found" in row(result.stdout, "model config")


def test_redis_reachable(tmp_path: Path, demo_config: Path) -> None:
    result = run(tmp_path, demo_config, REDIS_URL=REDIS_URL)
    assert result.returncode == 0, result.stdout
    assert " OK " in row(result.stdout, "redis")


def test_redis_unreachable_fails(tmp_path: Path, demo_config: Path) -> None:
    result = run(tmp_path, demo_config, REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode != 0
    assert "FAIL" in row(result.stdout, "redis")


def test_production_refuses_unsafe_defaults(tmp_path: Path, demo_config: Path) -> None:
    result = run(tmp_path, demo_config, ENVIRONMENT="production", ADMIN_API_KEY="admin", CORS_ORIGINS="*")
    assert result.returncode != 0
    line = row(result.stdout, "production safety")
    assert "FAIL" in line and "ADMIN_API_KEY" in line and "CORS_ORIGINS" in line
    assert "WARN" in row(result.stdout, "redis")  # no Redis in production: per-worker limits


def test_secrets_never_printed(tmp_path: Path, demo_config: Path) -> None:
    service_key = "eyJhbGciOiJIUzI1NiJ9.service-role-secret-value"
    result = run(
        tmp_path,
        demo_config,
        DATABASE_URL="postgresql://gateway:db-password-42@127.0.0.1:1/x",
        REDIS_URL="redis://:redis-password-43@127.0.0.1:1/0",
        SUPABASE_URL="http://127.0.0.1:1",
        SUPABASE_SERVICE_ROLE_KEY=service_key,
        JWT_SECRET_KEY="j" * 40,
    )
    output = result.stdout + result.stderr
    for secret in (ADMIN_KEY, "db-password-42", "redis-password-43", service_key, "j" * 40):
        assert secret not in output
    assert "FAIL" in row(result.stdout, "supabase")


@pytest.fixture
def migrated_schema() -> Iterator[str]:
    """A fresh schema in the local Postgres holding the gateway's four tables."""

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(LOCAL_PG, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    schema = f"check_env_{uuid.uuid4().hex[:8]}"
    asyncio.run(execute(f"create schema {schema}"))
    try:
        tables = ("users", "api_keys", "transactions", "reservations")
        asyncio.run(execute("".join(f"create table {schema}.{t} (id int);" for t in tables)))
        yield schema
    finally:
        asyncio.run(execute(f"drop schema {schema} cascade"))


def test_database_with_tables_ok_and_without_warns(
    tmp_path: Path, demo_config: Path, migrated_schema: str
) -> None:
    # asyncpg passes unknown URL parameters to the server: search_path selects the schema.
    result = run(tmp_path, demo_config, DATABASE_URL=f"{LOCAL_PG}?search_path={migrated_schema}")
    assert result.returncode == 0, result.stdout
    assert "gateway tables present" in row(result.stdout, "postgres")

    empty = f"{migrated_schema}_none"
    result = run(tmp_path, demo_config, DATABASE_URL=f"{LOCAL_PG}?search_path={empty}")
    line = row(result.stdout, "postgres")
    assert "WARN" in line and "missing tables" in line and "app.store.migrations" in line


def test_online_calls_each_provider_once_with_its_key(tmp_path: Path) -> None:
    key = "sk-fake-provider-key-0123456789"
    with FakeProvider() as provider:
        config = tmp_path / "models.yaml"
        fake = {"api_base": provider.base_url, "api_key": "os.environ/FAKE_KEY"}
        models = [
            {"model_name": "a", "litellm_params": {"model": "openai/fake", **fake}},
            {"model_name": "b", "litellm_params": {"model": "openai/fake+chunks-2", **fake}},
            {"model_name": "demo", "litellm_params": {"model": "openai/x", "mock_response": "hi"}},
        ]
        config.write_text(yaml.safe_dump({"model_list": models}))
        result = run(tmp_path, config, "--online", FAKE_KEY=key)
        calls = provider.requests()
    assert result.returncode == 0, result.stdout + result.stderr
    line = row(result.stdout, "provider openai")
    assert "OK" in line and "HTTP 200" in line and "used by a, b" in line
    assert key not in result.stdout and key[:4] in line
    assert [(c["path"], c["authorization"]) for c in calls] == [("/v1/models", f"Bearer {key}")]


def test_online_fails_for_a_missing_provider_key(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(
        "model_list:\n  - model_name: claude\n    litellm_params:\n"
        "      model: anthropic/claude-3-5-haiku-20241022\n      api_key: os.environ/ANTHROPIC_API_KEY\n"
    )
    result = run(tmp_path, config, "--online")
    assert result.returncode != 0
    assert "ANTHROPIC_API_KEY" in row(result.stdout, "model config env")
    line = row(result.stdout, "provider anthropic")
    assert "FAIL" in line and "no API key" in line
