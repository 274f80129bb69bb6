"""Helpers shared by the observability tests (fixtures live in conftest.py)."""

from __future__ import annotations

import gzip
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Variables that would make a child's SDKs or prometheus_client behave differently from
# what the test sets up explicitly.
_SCRUBBED_ENV_PREFIXES = ("PROMETHEUS_", "prometheus_", "LANGFUSE_", "SENTRY_", "OTEL_")


@dataclass
class Recorded:
    """One request the server received; header names lower-cased, body un-gzipped."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingServer:
    """An HTTP endpoint on 127.0.0.1 that answers 200 {} and keeps every request."""

    url: str
    requests: list[Recorded] = field(default_factory=list)
    delay_s: float = 0.0
    stopped: threading.Event = field(default_factory=threading.Event)

    def wait_for(self, predicate: Callable[[Recorded], bool], timeout: float = 10.0) -> Recorded:
        """The first recorded request matching predicate, waiting for it if need be."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for request in list(self.requests):
                if predicate(request):
                    return request
            time.sleep(0.02)
        seen = [(r.method, r.path) for r in self.requests]
        raise AssertionError(f"no matching request within {timeout}s; saw {seen}")


def handler_for(server: RecordingServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            server.requests.append(
                Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            if server.delay_s and server.stopped.wait(server.delay_s):
                return  # the test is over; the client has gone
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
            except OSError:
                pass  # a client that gave up waiting

        do_POST = _record
        do_GET = _record

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child interpreter: repo importable, SDK variables cleared."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env
