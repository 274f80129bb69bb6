"""deployments/nginx.conf: valid, runs unprivileged in a temp prefix, streams SSE unbuffered."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tools import tool

REPO = Path(__file__).resolve().parents[2]
NGINX_CONF = REPO / "deployments" / "nginx.conf"
UPSTREAM = "127.0.0.1:8000"
LISTEN = "listen 8080"


# A tiny ASGI upstream: /sse streams three events 0.4s apart; anything else echoes what nginx
# forwarded (client address as seen by the app, X-Request-ID, X-Forwarded-*).
UPSTREAM_APP = """
import asyncio, json

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = "startup" if message["type"] == "lifespan.startup" else "shutdown"
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    if scope["path"] == "/sse":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"data: %d\\n\\n" % i,
                        "more_body": True})
            await asyncio.sleep(0.4)
        await send({"type": "http.response.body", "body": b""})
        return
    body = json.dumps({"path": scope["path"], "headers": headers, "pad": "x" * 4000}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on 127.0.0.1:{port}")


def make_prefix(tmp: Path, *, listen_port: int, upstream_port: int, text: str | None = None) -> Path:
    """Copy nginx.conf into a fresh prefix, substituting the two documented values."""
    (tmp / "logs").mkdir(parents=True, exist_ok=True)
    conf = text if text is not None else NGINX_CONF.read_text()
    conf = conf.replace(UPSTREAM, f"127.0.0.1:{upstream_port}")
    conf = conf.replace(LISTEN, f"listen 127.0.0.1:{listen_port}")
    path = tmp / "nginx.conf"
    path.write_text(conf)
    return path


def nginx_test(prefix: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    nginx = tool("nginx", package="Debian's nginx-light")
    return subprocess.run([nginx, "-t", "-p", str(prefix), "-c", str(conf)], capture_output=True, text=True)


def test_substitution_points_appear_exactly_once() -> None:
    text = NGINX_CONF.read_text()
    assert text.count(UPSTREAM) == 1
    assert text.count(LISTEN) == 1


def test_config_is_valid_in_a_temp_prefix(tmp_path: Path) -> None:
    conf = make_prefix(tmp_path, listen_port=free_port(), upstream_port=free_port())
    result = nginx_test(tmp_path, conf)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_commented_tls_block_is_valid_once_enabled(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    text = NGINX_CONF.read_text()
    enabled = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("# listen 443", "# ssl_", "# add_header Strict")):
            line = line.replace("# ", "", 1)
        enabled.append(line)
    text = "\n".join(enabled)
    text = text.replace("/etc/llm-gateway/tls/fullchain.pem", str(cert))
    text = text.replace("/etc/llm-gateway/tls/privkey.pem", str(key))
    text = text.replace("listen 443 ssl", f"listen 127.0.0.1:{free_port()} ssl")
    assert "ssl_certificate " in text and str(cert) in text
    conf = make_prefix(tmp_path, listen_port=free_port(), upstream_port=free_port(), text=text)
    result = nginx_test(tmp_path, conf)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[int, int, Path, subprocess.Popen[bytes]]]:
    """nginx in a temp prefix in front of a uvicorn upstream; yields (nginx port, upstream
    port, prefix, upstream process)."""
    nginx = tool("nginx", package="Debian's nginx-light")
    (tmp_path / "upstream_app.py").write_text(UPSTREAM_APP)
    upstream_port, nginx_port = free_port(), free_port()
    upstream = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "upstream_app:app",
            "--port",
            str(upstream_port),
            "--log-level",
            "warning",
        ],
        cwd=tmp_path,
    )
    prefix = tmp_path / "nginx"
    conf = make_prefix(prefix, listen_port=nginx_port, upstream_port=upstream_port)
    proxy = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"])
    try:
        wait_for_port(upstream_port)
        wait_for_port(nginx_port)
        yield nginx_port, upstream_port, prefix, upstream
    finally:
        for proc in (proxy, upstream):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_sse_events_arrive_as_they_are_sent(proxied: tuple[int, int, Path, object]) -> None:
    port = proxied[0]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/sse", headers={"Accept-Encoding": "gzip"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Encoding") is None  # never gzipped
    assert resp.getheader("X-Accel-Buffering") == "no"
    arrivals = []
    while len(arrivals) < 3:
        line = resp.readline()
        assert line, "stream ended early"
        if line.startswith(b"data:"):
            arrivals.append((time.monotonic(), line))
    conn.close()
    assert [line.strip() for _, line in arrivals] == [b"data: 0", b"data: 1", b"data: 2"]
    # Sent 0.4s apart by the upstream: a buffering proxy would deliver them together.
    assert arrivals[1][0] - arrivals[0][0] > 0.25
    assert arrivals[2][0] - arrivals[1][0] > 0.25


def test_forwards_request_id_and_client_headers(proxied: tuple[int, int, Path, object]) -> None:
    port, _, prefix, _ = proxied
    status, _, body = request(port, "GET", "/echo", headers={"X-Request-ID": "req-abc-123"})
    assert status == 200
    seen = json.loads(body)["headers"]
    assert seen["x-request-id"] == "req-abc-123"
    assert seen["x-real-ip"] == "127.0.0.1"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert "connection" not in seen  # HTTP/1.1 keepalive to the upstream, not "close"

    status, _, body = request(port, "GET", "/echo")
    generated = json.loads(body)["headers"]["x-request-id"]
    assert len(generated) == 32  # nginx's $request_id when the caller sent none
    log = prefix / "logs" / "access.log"
    deadline = time.monotonic() + 5
    while generated not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # nginx logs a request after its response has gone out
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["request_id"] for line in lines] == ["req-abc-123", generated]


def test_json_is_gzipped_for_clients_that_accept_it(proxied: tuple[int, int, Path, object]) -> None:
    status, headers, _ = request(proxied[0], "GET", "/echo", headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers.get("content-encoding") == "gzip"


def test_body_over_10_mib_gets_openai_413(proxied: tuple[int, int, Path, object]) -> None:
    status, headers, body = request(
        proxied[0],
        "POST",
        "/v1/chat/completions",
        body=b"x" * (10 * 1024 * 1024 + 1),
        headers={"Content-Type": "application/json"},
    )
    assert status == 413
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large"
    assert error["type"] == "invalid_request_error"


def test_upstream_down_gives_openai_503(
    proxied: tuple[int, int, Path, subprocess.Popen[bytes]],
) -> None:
    port, _, _, upstream = proxied
    upstream.terminate()
    upstream.wait(timeout=10)
    status, headers, body = request(port, "POST", "/v1/chat/completions", body=b"{}")
    assert status == 503
    assert headers["retry-after"] == "5"
    assert json.loads(body)["error"]["code"] == "upstream_unavailable"


def test_metrics_allowed_from_loopback(proxied: tuple[int, int, Path, object]) -> None:
    status, _, _ = request(proxied[0], "GET", "/metrics")
    assert status == 200
    text = NGINX_CONF.read_text()
    block = text[text.index("location = /metrics") :]
    block = block[: block.index("}")]
    assert "deny all;" in block
    for network in ("127.0.0.1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"):
        assert f"allow {network};" in block


def test_streaming_directives_are_set() -> None:
    """The behaviour above depends on timing; these are what keep it under real load."""
    directives = {line.strip() for line in NGINX_CONF.read_text().splitlines()}
    for directive in (
        "proxy_buffering off;",
        "proxy_cache off;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_read_timeout 600s;",
        "client_max_body_size 10m;",
        "gzip_types application/json;",
    ):
        assert directive in directives
