"""The production stack for end-to-end proofs: real gunicorn (deployments/gunicorn.conf.py)
running the real app, real nginx from deployments/nginx.conf, and local recorders standing in
for Sentry's and Langfuse's ingest servers. Only the LLM provider is fake."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import ROOT, Gateway, free_port, start_gateway
from tests.observability.support import RecordingServer, handler_for

GUNICORN_CONF = ROOT / "deployments" / "gunicorn.conf.py"
NGINX_CONF = ROOT / "deployments" / "nginx.conf"
# The two values deployments/nginx.conf documents as substitution points.
NGINX_UPSTREAM = "127.0.0.1:8000"
NGINX_LISTEN = "listen 8080"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

GUNICORN_COMMAND = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "app.main:app"]


# --- gunicorn running the real app ----------------------------------------------------------


@dataclass
class Production:
    """The gateway under gunicorn; `workers` are the worker pids seen answering."""

    gateway: Gateway
    workers: set[int]

    def access_lines(self) -> list[dict[str, Any]]:
        """gunicorn's JSON access lines (the app adopts gunicorn.access into its JSON log)."""
        lines = []
        for raw in self.gateway.log_path.read_text(errors="replace").splitlines():
            if not raw.startswith("{"):
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if record.get("logger") == "gunicorn.access":
                lines.append(record)
        return lines

    def wait_access(self, request_ids: set[str], *, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
        """The access line of each request id, waiting for gunicorn to write them."""
        deadline = time.monotonic() + timeout
        while True:
            found = {
                line["request_id"]: line
                for line in self.access_lines()
                if line.get("request_id") in request_ids
            }
            if set(found) == request_ids:
                return found
            if time.monotonic() > deadline:
                missing = sorted(request_ids - set(found))[:5]
                raise AssertionError(f"no access line for {missing}:\n{self.gateway.log_tail()}")
            time.sleep(0.05)


def worker_pid(url: str) -> int:
    """The pid of the worker answering a fresh connection to `url`."""
    with httpx.Client(timeout=10) as client:
        r = client.get(url + "/health/system")
    assert r.status_code == 200, r.text
    return int(r.json()["pid"])


def start_production(
    tmp: Path, *, models: list[dict[str, Any]], workers: int = 2, env: dict[str, str] | None = None
) -> Production:
    """gunicorn -c deployments/gunicorn.conf.py app.main:app, with every worker answering."""
    # start_gateway picks the port and exports HOST/PORT; gunicorn.conf.py binds HOST:PORT
    # when GUNICORN_BIND is unset, so the port it polls is the one gunicorn listens on.
    gw = start_gateway(
        tmp,
        models=models,
        command=GUNICORN_COMMAND,
        env={
            "WEB_CONCURRENCY": str(workers),
            "GUNICORN_GRACEFUL_TIMEOUT": "10",
            # Production's level: gunicorn's access lines (INFO) are what the tests read.
            "LOG_LEVEL": "INFO",
            **(env or {}),
        },
    )
    production = Production(gw, set())
    try:
        deadline = time.monotonic() + 60
        while len(production.workers) < workers:
            if gw.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{workers} workers did not come up:\n{gw.log_tail()}")
            production.workers.add(worker_pid(gw.url))
    except BaseException:
        stop_production(production)
        raise
    return production


def stop_production(production: Production, *, timeout: float = 30.0) -> None:
    """SIGTERM the master (graceful: workers run the lifespan shutdown), then make sure."""
    proc = production.gateway.proc
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for child in children:  # workers the master did not take down with it
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


# --- nginx from deployments/nginx.conf -------------------------------------------------------


@dataclass
class Nginx:
    url: str
    prefix: Path
    conf: Path
    proc: subprocess.Popen[bytes]

    def test_config(self) -> subprocess.CompletedProcess[str]:
        assert NGINX is not None
        return subprocess.run(
            [NGINX, "-t", "-p", str(self.prefix), "-c", str(self.conf)],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def access_lines(self) -> list[dict[str, Any]]:
        path = self.prefix / "logs" / "access.log"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def nginx_prefix(tmp: Path, *, upstream: str) -> tuple[Path, Path, int]:
    """A prefix with deployments/nginx.conf copied in, its two documented values substituted."""
    prefix = tmp / "nginx"
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    text = NGINX_CONF.read_text()
    assert text.count(NGINX_UPSTREAM) == 1 and text.count(NGINX_LISTEN) == 1
    port = free_port()
    text = text.replace(NGINX_UPSTREAM, upstream).replace(NGINX_LISTEN, f"listen 127.0.0.1:{port}")
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return prefix, conf, port


@contextmanager
def running_nginx(tmp: Path, *, upstream: str) -> Iterator[Nginx]:
    if NGINX is None:
        pytest.fail("nginx is not installed: `make test` installs it (Debian's nginx-light)", pytrace=False)
    prefix, conf, port = nginx_prefix(tmp, upstream=upstream)
    with (prefix / "logs" / "stderr.log").open("wb") as err:
        proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its own process group: master and workers go together
        )
    nginx = Nginx(f"http://127.0.0.1:{port}", prefix, conf, proc)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError("nginx exited:\n" + (prefix / "logs" / "error.log").read_text())
            try:
                httpx.get(nginx.url + "/health", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield nginx
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:  # nginx workers left behind if the master died first
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- stand-ins for Sentry's and Langfuse's servers --------------------------------------------


@contextmanager
def recorder() -> Iterator[RecordingServer]:
    """An HTTP endpoint on 127.0.0.1 that answers 200 {} and keeps every request."""
    server = RecordingServer(url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(server))
    httpd.daemon_threads = True
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopped.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
