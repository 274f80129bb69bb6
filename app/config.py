"""Settings from the environment, and the LiteLLM-proxy-format model config loader."""

from __future__ import annotations

import logging
import os
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger(__name__)

UNSAFE_ADMIN_KEYS = {"", "change-me", "admin", "sk-admin"}


class Settings(BaseSettings):
    """Every variable in env.example, UPPER_CASE as in the environment."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=True
    )

    HOST: str = "127.0.0.1"
    PORT: int = 8000
    LOG_LEVEL: str = "INFO"
    ENVIRONMENT: Literal["development", "test", "staging", "production"] = "development"

    GATEWAY_CONFIG: str = "config.yaml"
    ADMIN_API_KEY: str = ""

    DATABASE_URL: str = ""
    DATABASE_POOL_SIZE: int = 10
    SUPABASE_URL: str = ""
    SUPABASE_SERVICE_ROLE_KEY: str = ""
    SUPABASE_JWT_SECRET: str = ""
    SUPABASE_ANON_KEY: str = ""

    JWT_SECRET_KEY: str = ""
    JWT_ALGORITHM: str = "HS256"
    JWT_AUDIENCE: str = ""

    REDIS_URL: str = ""
    RATE_LIMIT_ENABLED: bool = True
    RATE_LIMIT_REQUESTS_PER_MINUTE: int = 60
    RATE_LIMIT_REQUESTS_PER_HOUR: int = 1000
    RATE_LIMIT_TOKENS_PER_MINUTE: int = 0

    BILLING_ENABLED: bool = True
    BILLING_CURRENCY: str = "USD"
    BILLING_DEFAULT_BALANCE: Decimal = Decimal("0")
    BILLING_MARKUP: Decimal = Decimal("1")
    BILLING_RESERVATION_TTL_SECONDS: int = 900
    BILLING_FREE_UNPRICED_MODELS: bool = False
    BILLING_DEFAULT_MAX_OUTPUT_TOKENS: int = 4096

    # Accounts and payments: Stripe Checkout top-ups and its webhook (both off while unset).
    STRIPE_SECRET_KEY: str = ""
    STRIPE_WEBHOOK_SECRET: str = ""
    STRIPE_SUCCESS_URL: str = ""
    STRIPE_CANCEL_URL: str = ""
    STRIPE_API_BASE: str = ""
    # Low-balance alerts: a signed POST to ALERT_WEBHOOK_URL per downward threshold crossing.
    ALERT_WEBHOOK_URL: str = ""
    ALERT_WEBHOOK_SECRET: str = ""
    BILLING_ALERT_THRESHOLDS: str = ""

    DATA_DIR: str = "./.data"
    # A demo account only when asked for (`make run` asks), only on the embedded store.
    DEMO_API_KEY: str = ""
    DEMO_USER_BALANCE: Decimal = Decimal("10")
    # On SIGTERM, streams still running this long after it end with an error event, charged
    # for what was generated. gunicorn.conf.py derives its graceful timeout from the same value.
    SHUTDOWN_STREAM_DEADLINE_SECONDS: float = 110.0

    PROMETHEUS_ENABLED: bool = True
    PROMETHEUS_MULTIPROC_DIR: str = ""

    LANGFUSE_ENABLED: bool = False
    LANGFUSE_PUBLIC_KEY: str = ""
    LANGFUSE_SECRET_KEY: str = ""
    LANGFUSE_HOST: str = "https://cloud.langfuse.com"

    SENTRY_DSN: str = ""
    SENTRY_TRACES_SAMPLE_RATE: float = 0.0
    SENTRY_SEND_PROMPTS: bool = False

    CORS_ORIGINS: Annotated[list[str], NoDecode] = Field(default_factory=list)
    ALLOWED_HOSTS: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    TRUSTED_PROXIES: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["127.0.0.1"])
    MAX_REQUEST_SIZE: int = 10 * 1024 * 1024

    @field_validator("CORS_ORIGINS", "ALLOWED_HOSTS", "TRUSTED_PROXIES", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def is_production(self) -> bool:
        return self.ENVIRONMENT == "production"

    @property
    def store_kind(self) -> Literal["postgres", "supabase", "sqlite"]:
        if self.DATABASE_URL:
            return "postgres"
        if self.SUPABASE_URL and self.SUPABASE_SERVICE_ROLE_KEY:
            return "supabase"
        return "sqlite"

    def demo_account_wanted(self, store_kind: str) -> bool:
        """The demo key exists only in development, on the embedded store, when asked for."""
        if not self.DEMO_API_KEY:
            return False
        if self.ENVIRONMENT != "development" or store_kind != "sqlite":
            log.warning("DEMO_API_KEY is ignored: only a development gateway on the embedded store has one")
            return False
        return True

    def unsafe_defaults(self) -> list[str]:
        """Settings that are acceptable in development but refused in production."""
        problems: list[str] = []
        if self.ADMIN_API_KEY in UNSAFE_ADMIN_KEYS or len(self.ADMIN_API_KEY) < 16:
            problems.append("ADMIN_API_KEY must be set to a secret of at least 16 characters")
        if self.JWT_SECRET_KEY and len(self.JWT_SECRET_KEY) < 32:
            problems.append("JWT_SECRET_KEY must be at least 32 characters")
        if self.BILLING_ENABLED is False:
            problems.append("BILLING_ENABLED=false serves every model for free")
        if "*" in self.CORS_ORIGINS:
            problems.append("CORS_ORIGINS must not be '*' in production")
        if self.DEMO_API_KEY:
            problems.append("DEMO_API_KEY must not be set in production")
        if self.STRIPE_SECRET_KEY and not self.STRIPE_WEBHOOK_SECRET:
            problems.append(
                "STRIPE_SECRET_KEY without STRIPE_WEBHOOK_SECRET: payments would never be credited"
            )
        if self.ALERT_WEBHOOK_URL and not self.ALERT_WEBHOOK_SECRET:
            problems.append("ALERT_WEBHOOK_URL without ALERT_WEBHOOK_SECRET: alerts would be unsigned")
        return problems


KNOWN_CONFIG_SECTIONS = {"model_list", "router_settings", "litellm_settings", "gateway_settings"}
_FALLBACK_KEYS = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")


def _walk_fallbacks(router_settings: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """For each group with fallbacks: itself and every group reachable through them.

    LiteLLM falls back recursively (A -> B -> C), so pricing holds at the most expensive
    group reachable and the fast path needs every reachable group to be direct.
    """
    edges: dict[str, list[str]] = {}
    for key in _FALLBACK_KEYS:
        for item in router_settings.get(key) or []:
            if isinstance(item, dict):
                for src, targets in item.items():
                    edges.setdefault(str(src), []).extend(str(t) for t in targets or [])
    closure: dict[str, tuple[str, ...]] = {}
    for start in edges:
        seen: dict[str, None] = {start: None}
        todo = list(edges[start])
        while todo:
            name = todo.pop(0)
            if name not in seen:
                seen[name] = None
                todo.extend(edges.get(name, []))
        closure[start] = tuple(seen)
    return closure


class ModelConfig:
    """The parsed model config: LiteLLM proxy's `model_list`, `router_settings`, `litellm_settings`."""

    def __init__(
        self,
        *,
        model_list: list[dict[str, Any]],
        router_settings: dict[str, Any],
        litellm_settings: dict[str, Any],
        path: str,
        gateway_settings: dict[str, Any] | None = None,
    ) -> None:
        self.model_list = model_list
        self.router_settings = router_settings
        self.litellm_settings = litellm_settings
        self.gateway_settings = gateway_settings or {}
        self.path = path
        self._reachable = _walk_fallbacks(router_settings)

    def reachable(self, name: str) -> tuple[str, ...]:
        """The group itself, then every group LiteLLM may fall back to from it, at any depth."""
        return self._reachable.get(name, (name,))

    def model_names(self) -> list[str]:
        """Public model names, in config order, without duplicates."""
        seen: dict[str, None] = {}
        for entry in self.model_list:
            seen.setdefault(str(entry["model_name"]), None)
        return list(seen)


def _resolve_env(value: Any) -> Any:
    """Replace LiteLLM's `os.environ/NAME` references with the variable's value."""
    if isinstance(value, str) and value.startswith("os.environ/"):
        return os.environ.get(value.removeprefix("os.environ/"), "")
    if isinstance(value, dict):
        return {k: _resolve_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v) for v in value]
    return value


class ConfigError(ValueError):
    """The model config file is missing or malformed."""


def load_model_config(path: str | Path) -> ModelConfig:
    """Read a LiteLLM-proxy-style YAML; unknown sections are ignored with a warning."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"model config {p} not found (set GATEWAY_CONFIG)") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"model config {p} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"model config {p} must be a mapping")
    for key in sorted(set(raw) - KNOWN_CONFIG_SECTIONS):
        log.warning("model config: ignoring unsupported section %r", key)
    model_list = _resolve_env(raw.get("model_list") or [])
    if not isinstance(model_list, list):
        raise ConfigError("model_list must be a list")
    for i, entry in enumerate(model_list):
        if not isinstance(entry, dict) or "model_name" not in entry:
            raise ConfigError(f"model_list[{i}] needs a model_name")
        params = entry.get("litellm_params")
        if not isinstance(params, dict) or "model" not in params:
            raise ConfigError(f"model_list[{i}] ({entry['model_name']}) needs litellm_params.model")
        info = entry.setdefault("model_info", {}) or {}
        entry["model_info"] = info
        # A stable id per deployment lets billing price the deployment that actually answered.
        info.setdefault("id", f"{entry['model_name']}#{i}")
    router_settings = _resolve_env(raw.get("router_settings") or {})
    litellm_settings = _resolve_env(raw.get("litellm_settings") or {})
    gateway_settings = _resolve_env(raw.get("gateway_settings") or {})
    if not all(isinstance(x, dict) for x in (router_settings, litellm_settings, gateway_settings)):
        raise ConfigError("router_settings, litellm_settings and gateway_settings must be mappings")
    return ModelConfig(
        model_list=model_list,
        router_settings=router_settings,
        litellm_settings=litellm_settings,
        gateway_settings=gateway_settings,
        path=str(p),
    )
