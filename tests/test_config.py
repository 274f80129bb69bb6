"""Model config in LiteLLM proxy's format: existing configs start, and the shipped one works."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT, Gateway, free_port, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider
from tests.support import bearer

PROVIDER_KEY = "sk-from-the-environment-0123"


def _log_lines(gw: Gateway) -> list[dict[str, Any]]:
    lines = []
    for line in gw.log_path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


@pytest.fixture(scope="module")
def proxy_style(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    """A config written for LiteLLM's proxy, with sections and keys this gateway does not use."""
    tmp = tmp_path_factory.mktemp("proxy-config")
    entry = model_entry("env-model", "cfg+chunks-2", "unused")
    entry["litellm_params"]["api_base"] = "os.environ/FAKE_PROVIDER_BASE"
    entry["litellm_params"]["api_key"] = "os.environ/FAKE_PROVIDER_KEY"
    entry["litellm_params"]["rpm"] = 1000
    entry["model_info"]["mode"] = "chat"
    config = {
        "model_list": [entry],
        "router_settings": {
            "routing_strategy": "simple-shuffle",
            "num_retries": 0,
            "not_a_router_setting": True,
        },
        "litellm_settings": {
            "drop_params": True,
            "not_a_litellm_setting": 1,
            "success_callback": ["langfuse"],
        },
        "general_settings": {"master_key": "sk-1234", "database_url": "postgresql://nowhere/db"},
        "environment_variables": {"SOME_VAR": "x"},
    }
    path = tmp / "litellm-proxy-config.yaml"
    path.write_text(yaml.safe_dump(config))
    gateway = start_gateway(
        tmp,
        models=[],
        env={
            "GATEWAY_CONFIG": str(path),
            "FAKE_PROVIDER_BASE": fake_provider.base_url,
            "FAKE_PROVIDER_KEY": PROVIDER_KEY,
        },
    )
    yield gateway
    stop_gateway(gateway)


def test_unknown_sections_and_keys_are_ignored_with_a_warning(proxy_style: Gateway) -> None:
    assert httpx.get(proxy_style.url + "/ready", timeout=30).status_code == 200
    warnings = [line["message"] for line in _log_lines(proxy_style) if line.get("level") == "WARNING"]
    for name in (
        "general_settings",
        "environment_variables",
        "not_a_router_setting",
        "not_a_litellm_setting",
        "success_callback",
    ):
        assert any(name in w for w in warnings), (name, warnings)


def test_environment_references_resolve(proxy_style: Gateway, fake_provider: FakeProvider) -> None:
    _, key = proxy_style.new_user(balance=1)
    fake_provider.clear()
    resp = proxy_style.client(key).chat.completions.create(
        model="env-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert resp.choices[0].message.content == "tok0 tok1 "
    sent = fake_provider.requests()
    assert len(sent) == 1
    # os.environ/FAKE_PROVIDER_BASE reached the fake provider, with os.environ/FAKE_PROVIDER_KEY.
    assert sent[0]["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert PROVIDER_KEY not in proxy_style.log_path.read_text(errors="replace")


def test_a_missing_config_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ENVIRONMENT": "test",
        "GATEWAY_CONFIG": str(tmp_path / "no-such-config.yaml"),
        "DATA_DIR": str(tmp_path / "data"),
        "RATE_LIMIT_ENABLED": "false",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "app"], cwd=tmp_path, env=env, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    assert "no-such-config.yaml" in output and "not found" in output


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The repository's own config.yaml, started as the README's quick start (`make run`) does."""
    gateway = start_gateway(
        tmp_path_factory.mktemp("shipped"),
        models=[],
        env={
            "GATEWAY_CONFIG": str(ROOT / "config.yaml"),
            "ENVIRONMENT": "development",
            "DEMO_API_KEY": "sk-gw-demo",
        },
    )
    yield gateway
    stop_gateway(gateway)


def test_shipped_config_demo_model_answers_for_the_demo_key(shipped: Gateway) -> None:
    demo_key = "sk-gw-demo"
    before = shipped.balance(demo_key)
    assert before > 0
    client = shipped.client(demo_key)
    assert "demo" in [m.id for m in client.models.list()]
    resp = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hello"}])
    assert resp.choices[0].message.content == "Hello from the gateway's demo model!"
    assert resp.usage is not None and resp.usage.total_tokens > 0
    # The demo call is billed like any other.
    assert shipped.balance(demo_key) < before
    rows = httpx.get(shipped.url + "/billing/transactions", headers=bearer(demo_key), timeout=30).json()
    assert rows["transactions"][0]["model"] == "demo" and Decimal(str(rows["transactions"][0]["amount"])) < 0


def test_shipped_config_demo_model_streams(shipped: Gateway) -> None:
    chunks = list(
        shipped.client("sk-gw-demo").chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hello"}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the gateway's demo model!"


@pytest.mark.parametrize("store", ["sqlite-not-asked", "postgres-asked"])
def test_the_demo_key_exists_only_when_asked_for_on_the_embedded_store(
    tmp_path: Path, store: str, pg_database: str
) -> None:
    env = {"GATEWAY_CONFIG": str(ROOT / "config.yaml"), "ENVIRONMENT": "development"}
    if store == "postgres-asked":
        env |= {"DATABASE_URL": pg_database, "DEMO_API_KEY": "sk-gw-demo"}
    gateway = start_gateway(tmp_path, models=[], env=env)
    try:
        r = httpx.get(gateway.url + "/billing/balance", headers=bearer("sk-gw-demo"), timeout=30)
        assert r.status_code == 401, r.text
    finally:
        stop_gateway(gateway)
    if store == "postgres-asked":
        assert "DEMO_API_KEY is ignored" in gateway.log_path.read_text()
