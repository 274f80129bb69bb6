"""Process helpers for the rate-limit tests: private redis-servers, gunicorn, worker-pinned clients."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import REDIS_URL, ROOT, Gateway, free_port, start_gateway, stop_gateway

# The demo-style model: LiteLLM answers it itself, no provider involved.
MOCK_MODEL: dict[str, Any] = {
    "model_name": "m",
    "litellm_params": {"model": "openai/m", "api_key": "x", "mock_response": "hi"},
    "model_info": {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002},
}
HELLO = [{"role": "user", "content": "hello there"}]


class RedisServer:
    """A redis-server of our own on a free port, which a test may kill and start again."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        cmd += ["--daemonize", "no", "--dir", str(self.tmp)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no goodbye to connected clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis (never the shared one: tests kill this one)."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def limit_env(redis_url: str = REDIS_URL, *, rpm: int = 5, **extra: str) -> dict[str, str]:
    """The gateway's environment with rate limiting on."""
    return {
        "RATE_LIMIT_ENABLED": "true",
        "REDIS_URL": redis_url,
        "RATE_LIMIT_REQUESTS_PER_MINUTE": str(rpm),
        "RATE_LIMIT_REQUESTS_PER_HOUR": "1000",
        **extra,
    }


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str]


def gunicorn_command(*, workers: int = 2) -> Command:
    """`gunicorn -c deployments/gunicorn.conf.py app.main:app` with uvicorn workers."""
    config = str(ROOT / "deployments" / "gunicorn.conf.py")
    return Command(
        argv=[sys.executable, "-m", "gunicorn", "-c", config, "app.main:app"],
        env={"WEB_CONCURRENCY": str(workers), "GUNICORN_ACCESSLOG": "off"},
    )


def start_gateways(*specs: tuple[Path, dict[str, Any]]) -> list[Gateway]:
    """Start several gateways at once (each takes seconds to import LiteLLM); all or none."""
    with ThreadPoolExecutor(len(specs)) as pool:
        futures = [pool.submit(start_gateway, tmp, **kwargs) for tmp, kwargs in specs]
        wait(futures)
    started = [f.result() for f in futures if f.exception() is None]
    if len(started) < len(specs):
        for gateway in started:
            stop_gateway(gateway)
        raise next(e for f in futures if (e := f.exception()) is not None)
    return started


@dataclass
class Pinned:
    """An HTTP connection held open to one worker (keep-alive), and that worker's pid."""

    gateway: Gateway
    http: httpx.Client
    pid: int

    def worker_pid(self) -> int:
        return int(self.http.get(self.gateway.url + "/health/system").json()["pid"])

    def chat(self, key: str, model: str = "m", **body: Any) -> httpx.Response:
        return self.http.post(
            self.gateway.v1 + "/chat/completions",
            json={"model": model, "messages": HELLO, **body},
            headers={"Authorization": f"Bearer {key}"},
        )


def pin_workers(gateway: Gateway, count: int, *, attempts: int = 200) -> list[Pinned]:
    """Open connections until `count` different workers hold one each (the kernel spreads them)."""
    found: dict[int, Pinned] = {}
    spare: list[httpx.Client] = []
    for _ in range(attempts):
        http = httpx.Client(timeout=30)
        pid = int(http.get(gateway.url + "/health/system").json()["pid"])
        if pid in found:
            spare.append(http)  # kept open so the next connection is more likely to go elsewhere
        else:
            found[pid] = Pinned(gateway, http, pid)
        if len(found) == count:
            break
    for http in spare:
        http.close()
    if len(found) < count:
        raise RuntimeError(f"only reached workers {sorted(found)} in {attempts} connections")
    return list(found.values())


def new_user(gateway: Gateway, **limits: int | None) -> tuple[str, str]:
    """A user with a key (and per-user limits if given); returns (user_id, key)."""
    user_id, key = gateway.new_user(balance=10)
    if limits:
        r = gateway.admin("PUT", f"/admin/users/{user_id}/limits", limits)
        assert r.status_code == 200, r.text
    return user_id, key


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def wait_for_log(gateway: Gateway, text: str, *, poke: Any = None, timeout: float = 20.0) -> None:
    """Wait until the gateway's log contains `text`, calling `poke()` meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in gateway.log_path.read_text(errors="replace"):
            return
        if poke is not None:
            poke()
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in the log:\n{gateway.log_tail()}")
