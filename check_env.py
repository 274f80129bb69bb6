#!/usr/bin/env python3
"""Check the gateway's settings and reach every configured dependency.

    python check_env.py [--online]

Prints one row per check (OK / WARN / FAIL) and exits 1 if any check failed. `--online` also
calls each provider named by the model config (a cheap model listing per distinct key and
api_base). Secrets are never printed: at most their first 4 characters and their length.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import ValidationError

from app.config import ConfigError, Settings, load_model_config

Status = Literal["OK", "WARN", "FAIL"]
TIMEOUT = 5.0
GATEWAY_TABLES = ("users", "api_keys", "transactions", "reservations")
SECRET_MARKERS = ("KEY", "SECRET", "PASSWORD", "TOKEN", "DSN")
# Where LiteLLM finds a provider's key when litellm_params has no api_key.
PROVIDER_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "text-completion-openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "groq": "GROQ_API_KEY",
    "mistral": "MISTRAL_API_KEY",
}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


def mask(secret: str) -> str:
    """Show a secret as its first 4 characters and its length (only the length if short)."""
    if not secret:
        return "(empty)"
    if len(secret) < 12:
        return f"*** ({len(secret)} chars)"
    return f"{secret[:4]}*** ({len(secret)} chars)"


def url_for_display(url: str) -> str:
    """A URL without its password, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparseable URL)"
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def secrets_in(settings: Settings) -> list[str]:
    """Every secret value the output must not contain: secret-named settings and env vars,
    and passwords inside URLs."""
    values: set[str] = set()
    for name, value in [*settings.model_dump().items(), *os.environ.items()]:
        if isinstance(value, str) and value and any(m in name.upper() for m in SECRET_MARKERS):
            values.add(value)
    for url in (settings.DATABASE_URL, settings.REDIS_URL):
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            values.add(password)
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, mask(secret))
    return text


def error_text(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def check_settings() -> tuple[Settings | None, Check]:
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '(settings)'}: {err['msg']}" for err in exc.errors()
        ]
        return None, Check("settings", "FAIL", "invalid environment: " + "; ".join(problems))
    detail = f"ENVIRONMENT={settings.ENVIRONMENT}, listening on {settings.HOST}:{settings.PORT}"
    return settings, Check("settings", "OK", detail)


def env_refs(node: Any) -> set[str]:
    """Names of the `os.environ/NAME` references in a raw YAML tree."""
    if isinstance(node, str) and node.startswith("os.environ/"):
        return {node.removeprefix("os.environ/")}
    if isinstance(node, dict):
        return set().union(*(env_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(env_refs(v) for v in node))
    return set()


def check_model_config(settings: Settings) -> tuple[list[dict[str, Any]], list[Check]]:
    try:
        config = load_model_config(settings.GATEWAY_CONFIG)
    except ConfigError as exc:
        return [], [Check("model config", "FAIL", str(exc))]
    names = config.model_names()
    if not names:
        return [], [Check("model config", "FAIL", f"{config.path}: model_list is empty")]
    checks = [Check("model config", "OK", f"{config.path}: {len(names)} model(s): {', '.join(names)}")]
    with open(config.path, encoding="utf-8") as f:
        missing = sorted(name for name in env_refs(yaml.safe_load(f)) if not os.environ.get(name))
    if missing:
        checks.append(Check("model config env", "WARN", "referenced but unset: " + ", ".join(missing)))
    return config.model_list, checks


def check_production(settings: Settings) -> Check:
    problems = settings.unsafe_defaults()
    if settings.is_production:
        if problems:
            return Check("production safety", "FAIL", "; ".join(problems))
        return Check("production safety", "OK", "no unsafe defaults")
    if problems:
        return Check("production safety", "WARN", "refused if ENVIRONMENT=production: " + "; ".join(problems))
    return Check("production safety", "OK", "no unsafe defaults")


async def check_postgres(url: str) -> Check:
    import asyncpg

    where = url_for_display(url)
    try:
        conn = await asyncpg.connect(url, timeout=TIMEOUT, statement_cache_size=0)
    except Exception as exc:  # any failure to connect is the finding
        return Check("postgres", "FAIL", f"cannot connect to {where}: {error_text(exc)}")
    try:
        await asyncio.wait_for(conn.fetchval("select 1"), TIMEOUT)
        rows = await asyncio.wait_for(
            conn.fetch(
                "select table_name from information_schema.tables"
                " where table_schema = any(current_schemas(false))"
                " and table_name = any($1::text[])",
                list(GATEWAY_TABLES),
            ),
            TIMEOUT,
        )
    except Exception as exc:
        return Check("postgres", "FAIL", f"{where}: query failed: {error_text(exc)}")
    finally:
        await conn.close()
    missing = sorted(set(GATEWAY_TABLES) - {r["table_name"] for r in rows})
    if missing:
        hint = "run: python -m app.store.migrations"
        return Check("postgres", "WARN", f"{where}: connected; missing tables {', '.join(missing)} ({hint})")
    return Check("postgres", "OK", f"{where}: connected; gateway tables present")


async def check_supabase(url: str, key: str) -> Check:
    import httpx

    if not key:
        return Check("supabase", "FAIL", "SUPABASE_URL is set but SUPABASE_SERVICE_ROLE_KEY is not")
    endpoint = url.rstrip("/") + "/rest/v1/"
    headers = {"apikey": key, "Authorization": f"Bearer {key}"}
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.get(endpoint, headers=headers)
    except httpx.HTTPError as exc:
        return Check("supabase", "FAIL", f"cannot reach {url_for_display(endpoint)}: {error_text(exc)}")
    if response.status_code in (401, 403):
        return Check("supabase", "FAIL", f"key {mask(key)} rejected (HTTP {response.status_code})")
    if response.status_code >= 400:
        return Check("supabase", "FAIL", f"{url_for_display(endpoint)} answered HTTP {response.status_code}")
    return Check("supabase", "OK", f"{url_for_display(endpoint)} answered HTTP {response.status_code}")


async def check_redis(url: str) -> Check:
    import redis.asyncio as redis

    client = redis.from_url(url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT)
    try:
        await client.ping()
    except Exception as exc:
        fallback = "the gateway would fall back to in-memory limits"
        detail = f"cannot reach {url_for_display(url)}: {error_text(exc)} ({fallback})"
        return Check("redis", "FAIL", detail)
    finally:
        await client.aclose()
    return Check("redis", "OK", f"{url_for_display(url)}: PING answered")


def provider_of(params: dict[str, Any]) -> str:
    """LiteLLM's provider for a deployment: explicit, the model's prefix, or a bare name's family."""
    model = str(params["model"])
    if params.get("custom_llm_provider"):
        return str(params["custom_llm_provider"])
    if "/" in model:
        return model.split("/", 1)[0]
    for prefix, provider in (("claude", "anthropic"), ("gemini", "gemini"), ("mistral", "mistral")):
        if model.startswith(prefix):
            return provider
    return "openai"


def provider_targets(model_list: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[str]]:
    """Distinct (provider, api_base, key) to probe, with the model names that use each."""
    targets: dict[tuple[str, str, str], list[str]] = {}
    for entry in model_list:
        params = entry["litellm_params"]
        if "mock_response" in params:
            continue
        provider = provider_of(params)
        key = params.get("api_key") or os.environ.get(PROVIDER_KEY_ENV.get(provider, ""), "")
        target = (provider, str(params.get("api_base") or ""), str(key))
        targets.setdefault(target, []).append(str(entry["model_name"]))
    return targets


async def check_provider(provider: str, api_base: str, key: str, models: list[str]) -> Check:
    import httpx

    name = f"provider {provider}"
    used_by = f"used by {', '.join(sorted(set(models)))}"
    headers: dict[str, str] = {}
    params: dict[str, str] = {}
    if provider == "anthropic":
        endpoint = (api_base or "https://api.anthropic.com").rstrip("/") + "/v1/models"
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    elif provider == "gemini":
        base = api_base or "https://generativelanguage.googleapis.com/v1beta"
        endpoint = base.rstrip("/") + "/models"
        params = {"key": key}
    elif provider in ("openai", "text-completion-openai", "openai_compatible") or api_base:
        endpoint = (api_base or "https://api.openai.com/v1").rstrip("/") + "/models"
        headers = {"Authorization": f"Bearer {key}"}
    else:
        return Check(name, "WARN", f"no online check for this provider ({used_by})")
    if not key and provider in PROVIDER_KEY_ENV:
        missing = f"litellm_params.api_key empty and {PROVIDER_KEY_ENV[provider]} unset"
        return Check(name, "FAIL", f"no API key: {missing} ({used_by})")
    where = url_for_display(endpoint)
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.get(endpoint, headers=headers, params=params)
    except httpx.HTTPError as exc:
        return Check(name, "FAIL", f"cannot reach {where}: {error_text(exc)} ({used_by})")
    status: Status = "OK" if response.status_code < 400 else "FAIL"
    detail = f"{where} with key {mask(key)}: HTTP {response.status_code} ({used_by})"
    return Check(name, status, detail)


async def _known(check: Check) -> Check:
    return check


async def check_dependencies(
    settings: Settings, model_list: list[dict[str, Any]], online: bool
) -> list[Check]:
    """Reach every configured dependency at once; rows come back in a fixed order."""
    pending: list[Awaitable[Check]] = []
    if settings.DATABASE_URL:
        pending.append(check_postgres(settings.DATABASE_URL))
    if settings.SUPABASE_URL:
        pending.append(check_supabase(settings.SUPABASE_URL, settings.SUPABASE_SERVICE_ROLE_KEY))
    if not settings.DATABASE_URL and not settings.SUPABASE_URL:
        detail = f"embedded store in DATA_DIR={settings.DATA_DIR} (no database configured)"
        pending.append(_known(Check("store", "OK", detail)))
    if settings.REDIS_URL:
        pending.append(check_redis(settings.REDIS_URL))
    else:
        status: Status = "WARN" if settings.is_production else "OK"
        detail = "REDIS_URL unset: rate limits are in-memory, per worker"
        pending.append(_known(Check("redis", status, detail)))
    if online and model_list:
        for target, models in provider_targets(model_list).items():
            pending.append(check_provider(*target, models))
    elif model_list:
        pending.append(_known(Check("providers", "OK", "not contacted (use --online)")))
    return list(await asyncio.gather(*pending))


def render(checks: list[Check], secrets: list[str]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'CHECK':<{width}}  STATUS  DETAIL"]
    lines += [f"{c.name:<{width}}  {c.status:<6}  {redact(c.detail, secrets)}" for c in checks]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--online", action="store_true", help="also call each configured provider")
    args = parser.parse_args(argv)

    settings, first = check_settings()
    if settings is None:
        print(render([first], []))
        return 1
    secrets = secrets_in(settings)
    model_list, checks = check_model_config(settings)
    checks = [first, *checks, check_production(settings)]
    checks += asyncio.run(check_dependencies(settings, model_list, args.online))
    print(render(checks, secrets))
    failed = [c.name for c in checks if c.status == "FAIL"]
    if failed:
        print(f"\n{len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
