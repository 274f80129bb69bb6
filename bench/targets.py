"""The servers under test: the fake provider, the gateway (gunicorn as deployed), LiteLLM's proxy.

Each `start_*` returns a `Target` (base URL, key, model names, the pid whose process tree is
the server) and registers its processes with `Processes`, which stops them.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.procs import Child, Processes, http, wait_http

ROOT = Path(__file__).resolve().parents[1]
PROXY_VENV = ROOT / "bench" / ".venv-litellm-proxy"
PROXY_REQUIREMENT = "litellm[proxy]==1.106.2"
PG_SERVER = os.environ.get("BENCH_PG_SERVER", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
MASTER_KEY = "sk-bench-master-" + secrets.token_hex(8)
ADMIN_KEY = "bench-admin-" + secrets.token_hex(16)
PROVIDER_KEY = "sk-fake-provider"

# Public model name -> fake provider behaviour. The same entries go to the gateway and the proxy.
MODELS = {
    "bench-json": "fake+chunks-16",
    "bench-stream": "fake+chunks-200",
    "bench-stream1": "fake+chunks-1",
    # Memory per open stream (bench/streams_memory.py): 1 s before each chunk, cut by max_tokens.
    "bench-slow-stream": "fake+chunks-100+chunkdelay-1000",
}
# Served by `anthropic/` deployments: the Messages scenarios (Responses ones use the models above).
ANTHROPIC_MODELS = {
    "bench-msg-stream": "fake+chunks-200",
    "bench-msg-stream1": "fake+chunks-1",
}
STREAM_CHUNKS = 200
# max_output_tokens bounds what a call without max_tokens holds from the balance (without it the
# gateway holds the whole balance, so one user's calls could not overlap).
PRICES = {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002, "max_output_tokens": 4096}
ROUTER_SETTINGS = {"routing_strategy": "simple-shuffle", "num_retries": 2}

# Children get a clean environment: nothing from this shell that could send loopback traffic
# through an HTTP proxy or change how the servers behave.
_BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


def base_env(**extra: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in _BASE_ENV_KEYS if k in os.environ}
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@dataclass
class Target:
    """A server the load generator talks to."""

    name: str
    base: str  # .../v1
    key: str
    models: dict[str, str]  # scenario model alias -> model string to send
    child: Child | None = None
    notes: list[str] = field(default_factory=list)
    database: str | None = None  # the gateway's Postgres database, whose backends' CPU is counted
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request (Portkey's routing)
    protocol_headers: dict[str, dict[str, str]] = field(default_factory=dict)  # per protocol, over those

    @property
    def root_pid(self) -> int | None:
        return self.child.pid if self.child else None


def model_list(api_base: str, *, anthropic: bool = True) -> list[dict[str, Any]]:
    entries = [
        {
            "model_name": name,
            "litellm_params": {"model": f"openai/{behaviour}", "api_base": api_base, "api_key": PROVIDER_KEY},
            "model_info": dict(PRICES),
        }
        for name, behaviour in MODELS.items()
    ]
    if anthropic:
        root = api_base.removesuffix("/v1")
        entries += [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"anthropic/{behaviour}",
                    "api_base": root,
                    "api_key": PROVIDER_KEY,
                },
                "model_info": dict(PRICES),
            }
            for name, behaviour in ANTHROPIC_MODELS.items()
        ]
    return entries


# --- the fake provider ---------------------------------------------------------------------


def start_fake(procs: Processes, work: Path, *, cpus: set[int]) -> tuple[Target, Child]:
    """tests/fake_provider.py on a free port, pinned to `cpus`; requests are barely recorded."""
    ready = work / "fake-provider.ready"
    log = work / "fake-provider.log"
    # The READY line goes to the log; poll it (the child owns its stdout, not a pipe to us).
    child = procs.start(
        "fake provider",
        [
            sys.executable,
            str(ROOT / "tests" / "fake_provider.py"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--record-limit",
            "1",
        ],
        env=base_env(),
        cwd=work,
        log_path=log,
        cpus=cpus,
    )
    deadline = time.monotonic() + 20
    url = None
    while time.monotonic() < deadline and url is None:
        if not child.alive():
            raise RuntimeError("fake provider exited:\n" + child.log_tail())
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("READY "):
                url = line.split(None, 1)[1].strip()
        time.sleep(0.05)
    if url is None:
        raise RuntimeError("fake provider did not print READY:\n" + child.log_tail())
    ready.write_text(url)
    target = Target(
        name="direct",
        base=url + "/v1",
        key=PROVIDER_KEY,
        # Straight to the provider: the behaviour string is the model.
        models={**MODELS, **ANTHROPIC_MODELS},
        child=child,
    )
    return target, child


# --- the gateway -----------------------------------------------------------------------------


async def _pg(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_SERVER, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database(*, synchronous_commit: bool = True) -> str | None:
    """A fresh database for this run; None if Postgres is unreachable.

    `synchronous_commit=False` makes every session on it commit without waiting for the WAL
    flush (diagnostic only: it shows what the disk's fsync adds to each call).
    """
    name = f"bench_{secrets.token_hex(6)}"
    try:
        asyncio.run(_pg(f'create database "{name}"'))
        if not synchronous_commit:
            asyncio.run(_pg(f'alter database "{name}" set synchronous_commit = off'))
    except Exception as exc:
        print(f"  Postgres unreachable ({type(exc).__name__}: {exc}); using the embedded store")
        return None
    return name


def drop_database(name: str) -> None:
    try:
        asyncio.run(_pg(f'drop database if exists "{name}" with (force)'))
    except Exception as exc:
        print(f"  could not drop database {name}: {exc}")


async def pg_backends(database: str) -> list[int]:
    """Server processes of the connections to `database` (the gateway's pool)."""
    import asyncpg

    conn = await asyncpg.connect(PG_SERVER, timeout=5)
    try:
        rows = await conn.fetch(
            "select pid from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()", database
        )
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


def _dsn(dbname: str) -> str:
    return PG_SERVER.rpartition("/")[0] + "/" + dbname


def redis_reachable() -> bool:
    import socket

    host_port = REDIS_URL.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_gateway(
    procs: Processes,
    work: Path,
    *,
    api_base: str,
    port: int,
    database: str | None,
    cpus: set[int],
    name: str = "gateway",
    workers: int = 1,
) -> Target:
    """`gunicorn -c deployments/gunicorn.conf.py app.main:app`, `workers` workers (default one),
    billing, limits, metrics."""
    gw = work / name
    gw.mkdir(parents=True, exist_ok=True)
    config = gw / "config.yaml"
    config.write_text(
        yaml.safe_dump({"model_list": model_list(api_base), "router_settings": ROUTER_SETTINGS})
    )
    metrics_dir = gw / "prometheus-multiproc"
    notes = []
    env = base_env(
        PYTHONPATH=str(ROOT),
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        ENVIRONMENT="production",
        LOG_LEVEL="WARNING",
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY=str(workers),
        # Worker recycling (10000 requests as deployed) would restart the worker mid-scenario.
        GUNICORN_MAX_REQUESTS="0",
        GUNICORN_MAX_REQUESTS_JITTER="0",
        ADMIN_API_KEY=ADMIN_KEY,
        GATEWAY_CONFIG=str(config),
        DATA_DIR=str(gw / "data"),
        PROMETHEUS_ENABLED="true",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        RATE_LIMIT_ENABLED="true",
        RATE_LIMIT_REQUESTS_PER_MINUTE="100000000",
        RATE_LIMIT_REQUESTS_PER_HOUR="100000000",
        RATE_LIMIT_TOKENS_PER_MINUTE="100000000000",
        BILLING_ENABLED="true",
    )
    if database:
        env["DATABASE_URL"] = _dsn(database)
        notes.append(f"store: Postgres (fresh database `{database}` on 127.0.0.1:5432)")
    else:
        notes.append("store: **embedded SQLite** (Postgres on 127.0.0.1:5432 was unreachable)")
    if redis_reachable():
        env["REDIS_URL"] = REDIS_URL
        notes.append("rate limits: Redis on 127.0.0.1:6379 (requests/min, requests/hour, tokens/min)")
    else:
        notes.append("rate limits: **in memory** (Redis on 127.0.0.1:6379 was unreachable)")
    gunicorn = Path(sys.executable).with_name("gunicorn")
    cmd = [str(gunicorn)] if gunicorn.exists() else [sys.executable, "-m", "gunicorn"]
    cmd += ["-c", str(ROOT / "deployments" / "gunicorn.conf.py"), "app.main:app"]
    child = procs.start("gateway", cmd, env=env, cwd=gw, log_path=gw / "gateway.log", cpus=cpus)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/ready", child=child, timeout=90, ok=lambda s: s == 200)
    key = _gateway_key(url)
    return Target(
        name=name, base=url + "/v1", key=key, models={m: m for m in {**MODELS, **ANTHROPIC_MODELS}},
        child=child, notes=notes, database=database,
    )  # fmt: skip


def _gateway_key(url: str) -> str:
    """A user with a balance that no benchmark can spend, and an API key for them."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    user = f"bench-{secrets.token_hex(5)}"
    body = json.dumps({"user_id": user, "balance": "100000000"}).encode()
    status, data = http("POST", url + "/admin/users", body=body, headers=headers)
    if status != 201:
        raise RuntimeError(f"creating the bench user failed: {status} {data[:300]!r}")
    status, data = http("POST", f"{url}/admin/users/{user}/keys", body=b'{"name": "bench"}', headers=headers)
    if status != 201:
        raise RuntimeError(f"creating the bench key failed: {status} {data[:300]!r}")
    return str(json.loads(data)["key"])


def worker_pid(target: Target) -> int | None:
    """The gunicorn worker: the master's child that runs the app."""
    from bench.procs import process_tree

    if target.root_pid is None:
        return None
    tree = process_tree(target.root_pid)
    return tree[1] if len(tree) > 1 else tree[0]


# --- LiteLLM's proxy -----------------------------------------------------------------------


def ensure_proxy_venv() -> Path:
    """bench/.venv-litellm-proxy with litellm[proxy] pinned; created on first use."""
    python = PROXY_VENV / "bin" / "python"
    stamp = PROXY_VENV / f".installed-{PROXY_REQUIREMENT.replace('[', '_').replace(']', '_')}"
    if python.exists() and stamp.exists():
        return python
    print(f"  creating {PROXY_VENV.relative_to(ROOT)} ({PROXY_REQUIREMENT}; takes a few minutes once)")
    if not python.exists():
        base = shutil.which("python3.11") or shutil.which("python3") or sys.executable
        subprocess.run([base, "-m", "venv", str(PROXY_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", PROXY_REQUIREMENT],
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    subprocess.run(
        [str(python), "-c", "import litellm.proxy.proxy_cli"],
        check=True,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        stdout=subprocess.DEVNULL,
    )
    stamp.touch()
    return python


def start_proxy(procs: Processes, work: Path, *, api_base: str, port: int, cpus: set[int]) -> Target:
    """`litellm --config ... --num_workers 1`: master key, no database, spend logs off."""
    python = ensure_proxy_venv()
    px = work / "litellm-proxy"
    px.mkdir(parents=True, exist_ok=True)
    config = px / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_list": model_list(api_base, anthropic=False),
                "router_settings": ROUTER_SETTINGS,
                "general_settings": {
                    "master_key": MASTER_KEY,
                    "disable_spend_logs": True,
                    "disable_error_logs": True,
                },
                "litellm_settings": {"telemetry": False},
            }
        )
    )
    env = base_env(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="WARNING")
    cmd = [
        str(python),
        "-m",
        "litellm.proxy.proxy_cli",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    child = procs.start("litellm proxy", cmd, env=env, cwd=px, log_path=px / "proxy.log", cpus=cpus)
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", child=child, timeout=120, ok=lambda s: s == 200)
    return Target(
        name="litellm-proxy",
        base=f"http://127.0.0.1:{port}/v1",
        key=MASTER_KEY,
        models={m: m for m in MODELS},
        child=child,
        notes=["no database; master key auth; spend and error logs off; uvicorn (its default server)"],
    )


def proxy_versions() -> dict[str, str]:
    python = PROXY_VENV / "bin" / "python"
    if not python.exists():
        return {}
    code = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        "for p in ('litellm', 'fastapi', 'uvicorn', 'uvloop', 'aiohttp', 'httpx'):\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    try:
        return dict(json.loads(res.stdout))
    except ValueError:
        return {}
