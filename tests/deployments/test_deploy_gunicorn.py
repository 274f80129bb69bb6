"""deployments/gunicorn.conf.py: settings from the environment, and a real gunicorn run with
uvicorn workers (JSON access log, trusted proxies, Prometheus multiprocess hooks)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deployments" / "gunicorn.conf.py"

READ_CONF = """
import json, runpy, sys
ns = runpy.run_path(sys.argv[1])
print(json.dumps({
    "worker_class": ns["worker_class"].__name__,
    "worker_bases": [c.__module__ + "." + c.__name__ for c in ns["worker_class"].__mro__],
    "workers": ns["workers"], "bind": ns["bind"], "timeout": ns["timeout"],
    "graceful_timeout": ns["graceful_timeout"], "keepalive": ns["keepalive"],
    "max_requests": ns["max_requests"], "max_requests_jitter": ns["max_requests_jitter"],
    "forwarded_allow_ips": ns["forwarded_allow_ips"], "preload_app": ns["preload_app"],
    "accesslog": ns["accesslog"], "access_log_format": ns["access_log_format"],
    "hooks": [h for h in ("on_starting", "child_exit", "on_exit") if callable(ns.get(h))],
    "stream_deadline": ns["stream_deadline"],
    "uvicorn_graceful": ns["worker_class"].CONFIG_KWARGS["timeout_graceful_shutdown"],
}))
"""

# A stand-in ASGI app (the real one is tested elsewhere); it counts hits in a Prometheus
# counter so the multiprocess files and the master's hooks can be observed.
STUB_APP = """
import json, os
from prometheus_client import CollectorRegistry, Counter
from app.observability.multiproc import ensure_multiprocess_values

if os.environ.get("STUB_ADOPT_LOGGING"):
    from app.observability.logging import configure_logging
    configure_logging("INFO")
ensure_multiprocess_values()
HITS = Counter("stub_hits", "hits", registry=CollectorRegistry())

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = "startup" if message["type"] == "lifespan.startup" else "shutdown"
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    HITS.inc()
    headers = dict(scope["headers"])
    body = json.dumps({
        "pid": os.getpid(),
        "client": scope["client"][0],
        "multiproc_dir": os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
    }).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"),
        (b"x-request-id", headers.get(b"x-request-id", b"generated-id")),
    ]})
    await send({"type": "http.response.body", "body": body})
"""


def read_conf(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "WEB_", "SHUTDOWN_"))}
    for name in ("HOST", "PORT", "TRUSTED_PROXIES"):
        clean.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", READ_CONF, str(CONF)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def test_defaults() -> None:
    conf = read_conf()
    assert conf["worker_class"] == "JsonAccessUvicornWorker"
    assert "uvicorn_worker._workers.UvicornWorker" in conf["worker_bases"]  # type: ignore[operator]
    assert conf["workers"] == (os.cpu_count() or 1)
    assert conf["bind"] == ["127.0.0.1:8000"]
    assert conf["timeout"] == 600 and conf["graceful_timeout"] == 120
    # The app ends streams, then uvicorn stops waiting, before gunicorn kills a worker.
    assert (conf["stream_deadline"], conf["uvicorn_graceful"]) == (110, 115)
    assert conf["max_requests"] == 10000 and conf["max_requests_jitter"] == 1000
    assert conf["forwarded_allow_ips"] == "127.0.0.1"
    assert conf["preload_app"] is False
    assert conf["accesslog"] == "-"
    assert conf["hooks"] == ["on_starting", "child_exit", "on_exit"]


def test_environment_overrides() -> None:
    conf = read_conf(
        HOST="0.0.0.0",
        PORT="9001",
        WEB_CONCURRENCY="3",
        GUNICORN_TIMEOUT="30",
        GUNICORN_MAX_REQUESTS="50",
        TRUSTED_PROXIES="10.0.0.5,172.16.0.0/12",
        GUNICORN_ACCESSLOG="off",
    )
    assert conf["bind"] == ["0.0.0.0:9001"]
    assert conf["workers"] == 3 and conf["timeout"] == 30 and conf["max_requests"] == 50
    assert conf["forwarded_allow_ips"] == "10.0.0.5,172.16.0.0/12"
    assert conf["accesslog"] is None
    assert read_conf(GUNICORN_BIND="127.0.0.1:7000", PORT="1")["bind"] == ["127.0.0.1:7000"]
    assert read_conf(GUNICORN_WORKERS="5")["workers"] == 5
    assert read_conf(GUNICORN_GRACEFUL_TIMEOUT="30")["stream_deadline"] == 20


def test_bad_number_names_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-c", READ_CONF, str(CONF)],
        env={**os.environ, "WEB_CONCURRENCY": "many"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "WEB_CONCURRENCY must be an integer" in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gunicorn:
    def __init__(self, proc: subprocess.Popen[str], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def get(self, path: str, headers: dict[str, str] | None = None) -> dict[str, object]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body: dict[str, object] = json.loads(resp.read())
            body["x-request-id"] = resp.headers["X-Request-ID"]
            return body

    def json_lines(self) -> list[dict[str, object]]:
        lines = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines


def start_gunicorn(tmp_path: Path, **env: str) -> Iterator[Gunicorn]:
    (tmp_path / "stub_app.py").write_text(STUB_APP)
    port = free_port()
    log = tmp_path / "gunicorn.log"
    base = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "DATA_DIR")}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(CONF), "stub_app:app"],
            cwd=tmp_path,
            env={
                **base,
                "PYTHONPATH": str(REPO),
                "GUNICORN_BIND": f"127.0.0.1:{port}",
                "WEB_CONCURRENCY": "2",
                "GUNICORN_GRACEFUL_TIMEOUT": "5",
                **env,
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    server = Gunicorn(proc, port, log)
    try:
        deadline = time.monotonic() + 30
        pids: set[object] = set()
        while len(pids) < 2:  # both workers are up
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                pids.add(server.get("/ping")["pid"])
            except OSError:
                time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Gunicorn]:
    yield from start_gunicorn(tmp_path, DATA_DIR=str(tmp_path / "data"))


def test_access_log_is_json_with_request_id(gunicorn: Gunicorn) -> None:
    gunicorn.get("/v1/models?limit=2", headers={"X-Request-ID": 'id-with-"quote"'})
    deadline = time.monotonic() + 5
    while True:
        access = [line for line in gunicorn.json_lines() if line.get("path") == "/v1/models"]
        if access or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(access) == 1, gunicorn.log.read_text()
    line = access[0]
    assert line["request_id"] == 'id-with-"quote"'
    assert line["method"] == "GET" and line["query"] == "limit=2" and line["status"] == 200
    assert isinstance(line["duration_ms"], int) and isinstance(line["bytes"], int)
    # uvicorn's own access line is off: exactly one line per request.
    assert '"GET /v1/models' not in gunicorn.log.read_text()


def test_access_fields_are_top_level_when_the_app_adopts_logging(tmp_path: Path) -> None:
    for server in start_gunicorn(tmp_path, STUB_ADOPT_LOGGING="1"):
        server.get("/adopted", headers={"X-Request-ID": "adopted-1"})
        deadline = time.monotonic() + 5
        while not (access := [r for r in server.json_lines() if r.get("path") == "/adopted"]):
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.05)
        assert access[0]["logger"] == "gunicorn.access"
        assert access[0]["request_id"] == "adopted-1"
        assert access[0]["status"] == 200
        assert len(access) == 1


def test_forwarded_for_trusted_only_from_trusted_proxies(tmp_path: Path) -> None:
    for server in start_gunicorn(tmp_path, TRUSTED_PROXIES="127.0.0.1"):
        assert server.get("/", headers={"X-Forwarded-For": "203.0.113.7"})["client"] == "203.0.113.7"
    for server in start_gunicorn(tmp_path, TRUSTED_PROXIES="10.1.2.3"):
        assert server.get("/", headers={"X-Forwarded-For": "203.0.113.7"})["client"] == "127.0.0.1"


def test_multiproc_dir_prepared_and_dead_workers_folded(gunicorn: Gunicorn, tmp_path: Path) -> None:
    expected = str(tmp_path / "data" / "prometheus-multiproc")
    first = gunicorn.get("/hit")
    assert first["multiproc_dir"] == expected
    pid = first["pid"]
    assert Path(expected, f"counter_{pid}.db").exists()

    os.kill(int(pid), signal.SIGKILL)  # type: ignore[call-overload]
    deadline = time.monotonic() + 10
    while Path(expected, f"counter_{pid}.db").exists():  # child_exit -> mark_process_dead
        assert time.monotonic() < deadline, gunicorn.log.read_text()
        time.sleep(0.1)
    assert Path(expected, "counter_archive.db").exists()


def test_metrics_dir_in_tmp_is_removed_on_exit(tmp_path: Path) -> None:
    for server in start_gunicorn(tmp_path):
        made = server.get("/")["multiproc_dir"]
        assert isinstance(made, str) and Path(made).is_dir()
        assert Path(made).name.startswith("llm-gateway-prometheus-")
    server.proc.wait(timeout=30)
    assert not Path(made).exists()
