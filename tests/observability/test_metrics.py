from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from app.observability.metrics import Metrics

from .support import child_env

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(body: bytes) -> Samples:
    """Every sample in a Prometheus text body, keyed by name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(parsed: Samples, name: str, **labels: str) -> float:
    return parsed[(name, frozenset(labels.items()))]


def record_two_calls(metrics: Metrics) -> None:
    for ttft in (0.2, None):
        metrics.llm_request(
            model="gpt-4o",
            provider="openai",
            status="success",
            duration_s=1.5,
            ttft_s=ttft,
            prompt_tokens=10,
            completion_tokens=20,
            cost=Decimal("0.000150"),
            currency="USD",
        )


def test_every_metric_renders_in_prometheus_text() -> None:
    metrics = Metrics(enabled=True)
    record_two_calls(metrics)
    metrics.llm_error(error_type="timeout")
    metrics.rate_limit(outcome="allowed")
    metrics.rate_limit(outcome="limited")
    metrics.billing(operation="settle", outcome="ok")
    metrics.http_request(method="POST", route="/v1/chat/completions", status=200, duration_s=1.6)

    body, content_type = metrics.render()

    assert content_type.startswith("text/plain")
    parsed = samples(body)
    model = {"model": "gpt-4o", "provider": "openai"}
    assert value(parsed, "llm_requests_total", status="success", **model) == 2
    assert value(parsed, "llm_requests_duration_seconds_count", **model) == 2
    assert value(parsed, "llm_requests_duration_seconds_sum", **model) == 3.0
    assert value(parsed, "llm_time_to_first_token_seconds_count", **model) == 1
    assert value(parsed, "llm_tokens_total", model="gpt-4o", kind="prompt") == 20
    assert value(parsed, "llm_tokens_total", model="gpt-4o", kind="completion") == 40
    assert value(parsed, "llm_cost_total", model="gpt-4o", currency="USD") == 0.0003
    assert value(parsed, "llm_requests_errors_total", type="timeout") == 1
    assert value(parsed, "rate_limit_requests_total", outcome="allowed") == 1
    assert value(parsed, "rate_limit_requests_total", outcome="limited") == 1
    assert value(parsed, "billing_operations_total", operation="settle", outcome="ok") == 1
    http = {"method": "POST", "route": "/v1/chat/completions"}
    assert value(parsed, "http_requests_total", status="200", **http) == 1
    assert value(parsed, "http_request_duration_seconds_bucket", le="2.5", **http) == 1


def test_each_instance_has_its_own_registry() -> None:
    first, second = Metrics(enabled=True), Metrics(enabled=True)
    record_two_calls(first)
    parsed = samples(second.render()[0])
    assert not any(name == "llm_requests_total" for name, _ in parsed)
    assert any(name == "llm_requests_total" for name, _ in samples(first.render()[0]))


def test_disabled_metrics_do_nothing() -> None:
    metrics = Metrics(enabled=False)
    record_two_calls(metrics)
    metrics.http_request(method="GET", route="/health", status=200, duration_s=0.001)
    metrics.llm_error(error_type="timeout")
    metrics.rate_limit(outcome="allowed")
    metrics.billing(operation="reserve", outcome="ok")
    body, _ = metrics.render()
    assert body == b""


WORKER = """
import os, sys
from decimal import Decimal
from app.observability.metrics import Metrics
metrics = Metrics(enabled=True, multiproc_dir=os.environ["PROMETHEUS_MULTIPROC_DIR"])
for _ in range(int(sys.argv[1])):
    metrics.llm_request(model="gpt-4o", provider="openai", status="success", duration_s=0.5,
                        ttft_s=0.1, prompt_tokens=3, completion_tokens=4,
                        cost=Decimal("0.25"), currency="USD")
"""

RENDER = """
import os, sys
from app.observability.metrics import Metrics
sys.stdout.write(Metrics(enabled=True).render()[0].decode())
"""


def test_multiprocess_mode_sums_every_worker(tmp_path: Path, run_python: Callable[..., str]) -> None:
    metrics_dir = str(tmp_path / "prom")
    os.mkdir(metrics_dir)
    env = child_env(PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    for count in (3, 4):
        subprocess.run(
            [sys.executable, "-W", "error", "-c", WORKER, str(count)],
            env=env,
            cwd=tmp_path,
            check=True,
            timeout=60,
        )

    parsed = samples(run_python(RENDER, PROMETHEUS_MULTIPROC_DIR=metrics_dir).encode())

    model = {"model": "gpt-4o", "provider": "openai"}
    assert value(parsed, "llm_requests_total", status="success", **model) == 7
    assert value(parsed, "llm_requests_duration_seconds_count", **model) == 7
    assert value(parsed, "llm_tokens_total", model="gpt-4o", kind="completion") == 28
    assert value(parsed, "llm_cost_total", model="gpt-4o", currency="USD") == 1.75


GUNICORN_APP = """
import os
from decimal import Decimal
from app.observability.metrics import Metrics

metrics = None

async def app(scope, receive, send):
    global metrics
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                metrics = Metrics(enabled=True,
                                  multiproc_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/hit":
        metrics.llm_request(model="m", provider="p", status="success", duration_s=0.01,
                            ttft_s=None, prompt_tokens=1, completion_tokens=1,
                            cost=Decimal("0.5"), currency="USD")
        body, content_type = str(os.getpid()).encode(), "text/plain"
    else:
        body, content_type = metrics.render()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type.encode())]})
    await send({"type": "http.response.body", "body": body})
"""

# The wiring gunicorn.conf.py needs. The master imports the helpers (and so
# prometheus_client) before it exports the variable, as deployments/gunicorn.conf.py does.
GUNICORN_CONF = """
import os
from app.observability.metrics import mark_process_dead, prepare_multiproc_dir

bind = "127.0.0.1:{port}"
workers = 2
worker_class = "uvicorn_worker.UvicornWorker"
max_requests = 4  # recycle workers constantly: dead workers' counts must survive
loglevel = "warning"

def on_starting(server):
    path = os.environ["TEST_METRICS_DIR"]
    prepare_multiproc_dir(path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path

def child_exit(server, worker):
    mark_process_dead(worker.pid)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def get_through_recycling(url: str, resets: list[str]) -> bytes:
    """GET, again if the connection was reset by a worker that was just being recycled."""
    for _ in range(5):
        try:
            return get(url)
        except (ConnectionResetError, http.client.RemoteDisconnected) as exc:
            resets.append(type(exc).__name__)
            time.sleep(0.1)
    return get(url)


def test_gunicorn_workers_share_one_count_across_recycling(tmp_path: Path) -> None:
    port = free_port()
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    (metrics_dir / "counter_99999.db").write_bytes(b"stale from a previous run")
    (tmp_path / "metrics_app.py").write_text(textwrap.dedent(GUNICORN_APP))
    (tmp_path / "gconf.py").write_text(GUNICORN_CONF.format(port=port))
    env = child_env(TEST_METRICS_DIR=str(metrics_dir))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(tmp_path / "gconf.py"), "metrics_app:app"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                get(f"{base}/hit")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        pids = set()
        resets: list[str] = []
        for _ in range(29):
            pids.add(get_through_recycling(f"{base}/hit", resets))
            # Uvicorn checks max_requests on its 0.1 s tick; give recycling a chance.
            time.sleep(0.1)

        parsed = samples(get_through_recycling(f"{base}/metrics", resets))
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0].decode()

    assert len(pids) > 2, "workers were not recycled"
    labels = {"model": "m", "provider": "p", "status": "success"}
    # Every answered hit is counted once; a hit whose connection a dying worker reset (then sent
    # again) may or may not have been counted before the reset.
    total = value(parsed, "llm_requests_total", **labels)
    assert 30 <= total <= 30 + len(resets), (total, resets, output)
    assert value(parsed, "llm_cost_total", model="m", currency="USD") == total / 2
    # Dead workers' files were folded into one archive per type, not left to pile up.
    leftovers = sorted(p.name for p in metrics_dir.glob("*.db"))
    assert "counter_archive.db" in leftovers
    assert "counter_99999.db" not in leftovers
    assert len(leftovers) <= 8, leftovers
