"""Gunicorn settings for production: `gunicorn -c deployments/gunicorn.conf.py app.main:app`.

Every value can be overridden from the environment (see the names below). Uvicorn workers run
the ASGI app; each worker builds its own app and opens its resources in the lifespan
(`preload_app = False`), so no connection pool is shared across a fork.

Uvicorn's worker ignores gunicorn's `access_log_format` (uvicorn logs access lines itself), so
the worker class here turns uvicorn's access log off and feeds every finished request to
gunicorn's logger instead: one JSON object per line, with the request id the app put in the
`X-Request-ID` response header. When the app's logging setup adopts `gunicorn.access` (routes it
to its root JSON formatter), the same fields become keys of the app's JSON line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import timedelta
from typing import Any

from gunicorn.glogging import Logger as GunicornLogger
from gunicorn.glogging import SafeAtoms

try:  # the maintained home of the worker (pin: uvicorn-worker==0.4.0)
    from uvicorn_worker import UvicornWorker
except ImportError:  # deprecated copy still shipped inside uvicorn
    from uvicorn.workers import UvicornWorker


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"gunicorn.conf.py: {name} must be an integer, got {raw!r}") from exc


# --- server socket and workers -------------------------------------------------------------
bind = [_env("GUNICORN_BIND", f"{_env('HOST', '127.0.0.1')}:{_env('PORT', '8000')}")]
workers = _env_int("WEB_CONCURRENCY", _env_int("GUNICORN_WORKERS", os.cpu_count() or 1))
backlog = _env_int("GUNICORN_BACKLOG", 2048)
preload_app = False

# Uvicorn workers heartbeat the arbiter from their event loop, so `timeout` only fires for a
# worker whose loop is stuck; it is still long so a slow stream is never mistaken for one.
timeout = _env_int("GUNICORN_TIMEOUT", 600)
# On reload or TERM, streams in flight get this long to finish before the worker is killed.
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 120)
# The app ends the streams still running 10 s before that (an error event, charged for what was
# generated), and uvicorn waits 5 s past its deadline: the charges land before any kill.
stream_deadline = min(_env_int("SHUTDOWN_STREAM_DEADLINE_SECONDS", 110), max(graceful_timeout - 10, 1))
os.environ["SHUTDOWN_STREAM_DEADLINE_SECONDS"] = str(stream_deadline)  # the workers' Settings read it
# Longer than nginx's upstream keepalive_timeout (60s) so nginx, not gunicorn, closes idle
# upstream connections; otherwise nginx may reuse a socket gunicorn is closing (spurious 502).
keepalive = _env_int("GUNICORN_KEEPALIVE", 75)
# Recycle workers now and then (memory growth in SDKs); jitter keeps them from restarting together.
max_requests = _env_int("GUNICORN_MAX_REQUESTS", 10000)
max_requests_jitter = _env_int("GUNICORN_MAX_REQUESTS_JITTER", 1000)

# The master writes its pid here when asked (deployments/scripts/start.sh and stop.sh use it).
pidfile = os.environ.get("GUNICORN_PIDFILE", "").strip() or None
# Heartbeat files; /dev/shm avoids stalls when /tmp is on a slow or read-only disk (containers).
worker_tmp_dir = os.environ.get("GUNICORN_WORKER_TMP_DIR", "").strip() or None
# gunicorn >= 25.1 opens a control socket at one fixed path per user by default, which two
# gateways on one host would fight over; it is opt-in here.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "").strip()
control_socket_disable = not control_socket

# Trust X-Forwarded-For / X-Forwarded-Proto only from the reverse proxy (IPs or CIDRs).
forwarded_allow_ips = _env("TRUSTED_PROXIES", "127.0.0.1")

# --- logging -------------------------------------------------------------------------------
loglevel = _env("LOG_LEVEL", "info").lower()
errorlog = _env("GUNICORN_ERRORLOG", "-")
# One JSON line per request at LOG_LEVEL=INFO or DEBUG (the default); at WARNING and above the
# access log is off like every other informational line, unless GUNICORN_ACCESSLOG asks for it.
_quiet = _env("LOG_LEVEL", "INFO").upper() in {"WARNING", "ERROR", "CRITICAL"}
_accesslog = _env("GUNICORN_ACCESSLOG", "off" if _quiet else "-")
accesslog = None if _accesslog.lower() in {"off", "none", "false", "0"} else _accesslog

# Numbers are unquoted; every string atom is JSON-escaped by _JsonAtoms below.
access_log_format = (
    '{"time": "%(t)s", "remote_addr": "%(h)s", "method": "%(m)s", "path": "%(U)s", '
    '"query": "%(q)s", "protocol": "%(H)s", "status": %(s)s, "bytes": %(B)s, '
    '"duration_ms": %(M)s, "request_id": "%({x-request-id}o)s", '
    '"user_agent": "%(a)s", "referer": "%(f)s", "pid": %(p)s}'
)


class _JsonAtoms(SafeAtoms):  # type: ignore[misc]
    """Gunicorn's atoms with every string JSON-escaped (gunicorn itself only escapes quotes)."""

    def __init__(self, atoms: dict[str, Any]) -> None:
        dict.__init__(self)
        for key, value in atoms.items():
            self[key] = json.dumps(value)[1:-1] if isinstance(value, str) else value


class JsonAccessLogger(GunicornLogger):  # type: ignore[misc]
    """Gunicorn's logger, producing access lines that are valid JSON."""

    atoms_wrapper_class = _JsonAtoms

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: timedelta) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        atoms["p"] = os.getpid()
        return atoms

    def access(self, resp: Any, req: Any, environ: Any, request_time: timedelta) -> None:
        if not getattr(self, "access_log_enabled", True):
            return
        line = self.cfg.access_log_format % self.atoms_wrapper_class(
            self.atoms(resp, req, environ, request_time)
        )
        if self.access_log.handlers:  # gunicorn's own handler writes the line as it is
            self.access_log.info("%s", line)
            return
        # The app's logging setup adopted this logger (its handlers cleared, records sent to
        # the root JSON formatter): hand over the fields so they become top-level keys of that
        # one JSON object instead of a JSON string nested inside it.
        try:
            fields = json.loads(line)
        except ValueError:  # a custom, non-JSON access_log_format
            self.access_log.info("%s", line)
            return
        summary = f"{fields.get('method')} {fields.get('path')} {fields.get('status')}"
        self.access_log.info("%s", summary, extra=fields)


logger_class = JsonAccessLogger

# --- the worker ------------------------------------------------------------------------------
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Response:
    def __init__(self) -> None:
        self.status = 500  # what uvicorn sends if the app fails before starting a response
        self.headers: list[tuple[str, str]] = []
        self.sent = 0


class _Request:
    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers


def _decode(headers: Any) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]


class _AccessLog:
    """Pure ASGI wrapper: hand each finished HTTP request to gunicorn's access logger."""

    def __init__(self, app: ASGIApp, log: GunicornLogger) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        resp = _Response()

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                resp.status = int(message["status"])
                resp.headers = _decode(message.get("headers", []))
            elif message["type"] == "http.response.body":
                resp.sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self._log(scope, resp, time.monotonic() - started)

    def _log(self, scope: Scope, resp: _Response, seconds: float) -> None:
        # Credentials never reach the log, whatever access_log_format asks for.
        req_headers = [(k, v) for k, v in _decode(scope.get("headers", [])) if k.lower() != "authorization"]
        headers = dict((k.lower(), v) for k, v in req_headers)
        query = scope.get("query_string", b"").decode("latin-1")
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        client = scope.get("client")
        environ = {
            "REMOTE_ADDR": client[0] if client else "-",
            "REQUEST_METHOD": scope["method"],
            "RAW_URI": f"{raw_path}?{query}" if query else raw_path,
            "PATH_INFO": scope["path"],
            "QUERY_STRING": query,
            "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
            "HTTP_REFERER": headers.get("referer", "-"),
            "HTTP_USER_AGENT": headers.get("user-agent", "-"),
        }
        self.log.access(resp, _Request(req_headers), environ, timedelta(seconds=seconds))


class JsonAccessUvicornWorker(UvicornWorker):  # type: ignore[misc]
    """Uvicorn worker whose access lines come from gunicorn's `access_log_format`."""

    CONFIG_KWARGS = {
        **UvicornWorker.CONFIG_KWARGS,
        "access_log": False,
        "timeout_graceful_shutdown": stream_deadline + 5,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Uvicorn decides per connection from `hasHandlers()`, which turns true again once the
        # app routes its loggers to root; disabling the logger keeps its lines out for good.
        logging.getLogger("uvicorn.access").disabled = True

    def load_wsgi(self) -> None:
        super().load_wsgi()
        if self.cfg.accesslog:  # with the access log off, the wrapper would be pure cost
            self.wsgi: ASGIApp = _AccessLog(self.wsgi, self.log)


worker_class = JsonAccessUvicornWorker

# --- Prometheus multiprocess mode ----------------------------------------------------------
_created_metrics_dir: str | None = None


def on_starting(server: Any) -> None:
    """Create (or empty) the shared metrics dir in the master, before any worker forks."""
    global _created_metrics_dir
    from app.observability.metrics import prepare_multiproc_dir

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if not path:
        data_dir = os.environ.get("DATA_DIR", "").strip()
        if data_dir:
            path = os.path.join(data_dir, "prometheus-multiproc")
        else:
            path = tempfile.mkdtemp(prefix="llm-gateway-prometheus-")
            _created_metrics_dir = path
    path = os.path.abspath(path)
    prepare_multiproc_dir(path)
    # prometheus_client and the app's Settings read this name; workers inherit it on fork.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    server.log.info("prometheus multiprocess dir: %s", path)


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges so /metrics stops reporting them."""
    from app.observability.metrics import mark_process_dead

    mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics dir if this master made it up in /tmp."""
    if _created_metrics_dir:
        shutil.rmtree(_created_metrics_dir, ignore_errors=True)
