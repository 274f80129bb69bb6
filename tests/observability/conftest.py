"""Fixtures for the observability tests: a recording HTTP endpoint and isolated subprocesses.

Sentry's and Langfuse's SDKs and prometheus_client's multiprocess mode keep process-global
state, so anything that switches them on runs in a child interpreter; the pytest process
only hosts the fake ingest endpoints on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from .support import RecordingServer, child_env, handler_for


@pytest.fixture
def recording_server() -> Iterator[RecordingServer]:
    """A fake Sentry / Langfuse ingest endpoint."""
    recorder = RecordingServer(url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(recorder))
    httpd.daemon_threads = True
    recorder.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        recorder.stopped.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def run_python(tmp_path: Path) -> Callable[..., str]:
    """Run code in a fresh interpreter (warnings are errors there too); return its stdout."""

    def run(code: str, *, timeout: float = 60.0, **env: str) -> str:
        result = subprocess.run(
            [sys.executable, "-W", "error", "-c", code],
            cwd=tmp_path,
            env=child_env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, f"child failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    return run
