"""deployments/scripts: syntax, and each script run for real against local services."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PG_SERVER
from tests.tools import tool

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "deployments" / "scripts"
ALL_SCRIPTS = sorted(SCRIPTS.glob("*.sh"))


def test_the_four_scripts_exist() -> None:
    assert [p.name for p in ALL_SCRIPTS] == ["backup.sh", "health-monitor.sh", "start.sh", "stop.sh"]


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax_and_executable(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    shellcheck = tool("shellcheck", package="Debian's shellcheck")
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# --- health-monitor.sh -----------------------------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    statuses: dict[str, int] = {}

    def do_GET(self) -> None:
        self.send_response(self.statuses.get(self.path, 404))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[str, dict[str, int]]]:
    statuses: dict[str, int] = {"/health": 200, "/ready": 200}
    handler = type("Handler", (_Health,), {"statuses": statuses})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", statuses
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_monitor(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / "health-monitor.sh")],
        env={**os.environ, "GATEWAY_URL": url, "HEALTH_TIMEOUT": "2", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_health_monitor_quiet_when_healthy(health_server: tuple[str, dict[str, int]]) -> None:
    url, _ = health_server
    result = run_monitor(url)
    assert result.returncode == 0
    assert result.stdout == "" and result.stderr == ""
    assert "OK /ready" in run_monitor(url, VERBOSE="1").stdout


def test_health_monitor_fails_when_not_ready(health_server: tuple[str, dict[str, int]]) -> None:
    url, statuses = health_server
    statuses["/ready"] = 503
    result = run_monitor(url)
    assert result.returncode == 1
    assert "FAIL /ready: 503" in result.stderr
    assert "/health" not in result.stderr


def test_health_monitor_fails_when_nothing_answers() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_monitor(f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    assert "FAIL /health: no answer" in result.stderr
    assert "FAIL /ready: no answer" in result.stderr


# --- backup.sh ---------------------------------------------------------------------------------

LOCAL_PG = PG_SERVER


def run_backup(url: str, backup_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / "backup.sh")],
        env={**os.environ, "DATABASE_URL": url, "BACKUP_DIR": str(backup_dir), "BACKUP_RETENTION_DAYS": "7"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_backup_dumps_gzip_and_prunes_old_ones(tmp_path: Path) -> None:
    old = tmp_path / "llm-gateway-20000101T000000Z.sql.gz"
    old.write_bytes(b"")
    os.utime(old, (946684800, 946684800))
    keep = tmp_path / "unrelated.sql.gz"
    keep.write_bytes(b"")
    os.utime(keep, (946684800, 946684800))
    # A password in the URL (ignored by trust auth) must not break the dump.
    result = run_backup(LOCAL_PG.replace("postgres@", "postgres:s%40cret@"), tmp_path)
    assert result.returncode == 0, result.stderr
    dumps = sorted(tmp_path.glob("llm-gateway-*.sql.gz"))
    assert len(dumps) == 1 and dumps[0] != old
    text = subprocess.run(["gzip", "-dc", str(dumps[0])], capture_output=True, text=True, check=True).stdout
    assert "PostgreSQL database dump" in text
    assert keep.exists()
    assert oct(dumps[0].stat().st_mode & 0o777) == "0o600"


def test_backup_fails_cleanly_when_the_database_is_down(tmp_path: Path) -> None:
    tool("pg_dump", package="Debian's postgresql-client")
    result = run_backup("postgresql://nobody@127.0.0.1:1/x", tmp_path)
    assert result.returncode != 0
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_backup_requires_database_url(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [str(SCRIPTS / "backup.sh")], env={**env, "BACKUP_DIR": str(tmp_path)}, capture_output=True, text=True
    )
    assert result.returncode != 0 and "DATABASE_URL is not set" in result.stderr


# --- start.sh / stop.sh ------------------------------------------------------------------------

STUB_MAIN = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = "startup" if message["type"] == "lifespan.startup" else "shutdown"
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""

STUB_METRICS = """
import os
def prepare_multiproc_dir(path):
    os.makedirs(path, exist_ok=True)
def mark_process_dead(pid):
    pass
"""


@pytest.fixture
def install(tmp_path: Path) -> Path:
    """A copy of the deployment layout with a stand-in app, as start.sh expects it."""
    root = tmp_path / "llm-gateway"
    (root / "deployments" / "scripts").mkdir(parents=True)
    for script in ("start.sh", "stop.sh"):
        shutil.copy2(SCRIPTS / script, root / "deployments" / "scripts" / script)
    shutil.copy2(REPO / "deployments" / "gunicorn.conf.py", root / "deployments" / "gunicorn.conf.py")
    (root / "app" / "observability").mkdir(parents=True)
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "main.py").write_text(STUB_MAIN)
    (root / "app" / "observability" / "__init__.py").write_text("")
    (root / "app" / "observability" / "metrics.py").write_text(STUB_METRICS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / ".env").write_text(f"PORT={port}\nWEB_CONCURRENCY=1\nDATA_DIR={root / 'data'}\n")
    return root


def run_script(root: Path, name: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "WEB_", "PROMETHEUS_"))}
    env.pop("PORT", None)
    env["VENV"] = str(Path(sys.executable).parent.parent)
    return subprocess.run(
        [str(root / "deployments" / "scripts" / name)], env=env, capture_output=True, text=True, timeout=120
    )


def test_start_and_stop_with_pidfile(install: Path) -> None:
    pidfile = install / ".run" / "gunicorn.pid"
    try:
        started = run_script(install, "start.sh")
        assert started.returncode == 0, started.stderr + (install / "logs" / "gateway.log").read_text()
        assert "is healthy" in started.stdout
        pid = int(pidfile.read_text())
        os.kill(pid, 0)  # running

        again = run_script(install, "start.sh")
        assert again.returncode == 0 and "already running" in again.stdout

        stopped = run_script(install, "stop.sh")
        assert stopped.returncode == 0, stopped.stderr
        assert not pidfile.exists()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert "Starting gunicorn" in (install / "logs" / "gateway.log").read_text()
        assert "not running" in run_script(install, "stop.sh").stdout
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), 15)


def test_start_reports_a_failed_boot(install: Path) -> None:
    (install / "app" / "main.py").write_text("raise RuntimeError('broken app')\n")
    result = run_script(install, "start.sh")
    assert result.returncode == 1
    assert "exited during start-up" in result.stderr
    assert "broken app" in result.stderr
