"""The lifecycle around a call: shutdown mid-stream, a store that is down at start, bad integers,
clients that hang up."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.billing.tcp_proxy import TcpProxy
from tests.conftest import ADMIN_KEY, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider
from tests.support import assert_openai_error, bearer


def test_a_stream_running_at_the_shutdown_deadline_ends_with_an_error_event_and_is_charged(
    tmp_path: Path, fake_provider: FakeProvider
) -> None:
    gw = start_gateway(
        tmp_path,
        models=[model_entry("long", "fake+chunks-400+chunkdelay-20", fake_provider.base_url)],
        env={"SHUTDOWN_STREAM_DEADLINE_SECONDS": "1"},
    )
    try:
        _, key = gw.new_user(1)
        lines: list[str] = []
        headers: dict[str, str] = {}

        def read() -> None:
            body = {"model": "long", "messages": [{"role": "user", "content": "go on"}], "stream": True}
            with httpx.stream(
                "POST", gw.v1 + "/chat/completions", json=body, headers=bearer(key), timeout=60
            ) as r:
                headers.update(r.headers)
                lines.extend(line for line in r.iter_lines() if line)

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(1.0)
        gw.proc.send_signal(signal.SIGTERM)
        reader.join(timeout=30)
        assert gw.proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    finally:
        stop_gateway(gw)
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert "error" in events[-1] and "restarting" in events[-1]["error"]["message"]
    content = [e for e in events if e.get("choices")]
    assert 10 < len(content) < 400  # it ran for a while, and was ended before the provider finished
    with sqlite3.connect(gw.data_dir / "gateway.sqlite3") as db:
        [(amount,)] = db.execute(
            "select amount from transactions where request_id = ? and kind = 'charge'",
            (headers["x-gateway-request-id"],),
        ).fetchall()
    assert Decimal(amount) < 0  # charged for what was generated before the worker exited


def test_the_gateway_starts_without_its_database_and_recovers_when_it_returns(
    tmp_path: Path, fake_provider: FakeProvider, pg_database: str
) -> None:
    proxy = TcpProxy.for_url(pg_database).start()
    proxy.cut()
    try:
        gw = start_gateway(
            tmp_path,
            models=[model_entry("fake", "fake", fake_provider.base_url)],
            env={"DATABASE_URL": proxy.url(pg_database)},
        )
        try:
            assert httpx.get(gw.url + "/health", timeout=10).status_code == 200
            assert httpx.get(gw.url + "/ready", timeout=10).status_code == 503
            r = httpx.post(
                gw.v1 + "/chat/completions",
                json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
                headers=bearer("sk-gw-anything"),
                timeout=30,
            )
            assert_openai_error(r, 503, "api_error", "store_unavailable")
            proxy.restore()
            deadline = time.monotonic() + 30
            while httpx.get(gw.url + "/ready", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, gw.log_tail()
                time.sleep(0.5)
            _, key = gw.new_user(1)
            with gw.client(key) as client:
                answer = client.chat.completions.create(
                    model="fake", messages=[{"role": "user", "content": "hi"}]
                )
            assert answer.choices[0].message.content
        finally:
            stop_gateway(gw)
    finally:
        proxy.stop()
    assert "Traceback" not in gw.log_path.read_text()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, pg_database: str) -> dict[str, str]:
    return {"DATABASE_URL": pg_database} if request.param == "postgres" else {}


def test_integers_beyond_what_a_store_takes_are_400s(
    tmp_path: Path, fake_provider: FakeProvider, store_env: dict[str, str]
) -> None:
    gw = start_gateway(tmp_path, models=[model_entry("fake", "fake", fake_provider.base_url)], env=store_env)
    try:
        user_id, key = gw.new_user(1)
        for query in ("offset=9223372036854775808", "limit=9223372036854775808", "offset=-1"):
            r = httpx.get(f"{gw.url}/billing/transactions?{query}", headers=bearer(key), timeout=30)
            assert_openai_error(r, 400, "invalid_request_error")
        for field in ("rpm_limit", "tpm_limit", "rph_limit"):
            r = gw.admin("PUT", f"/admin/users/{user_id}/limits", {field: 2**63})
            assert assert_openai_error(r, 400, "invalid_request_error")["param"] == field
        ok = httpx.get(f"{gw.url}/billing/transactions?offset=10000000", headers=bearer(key), timeout=30)
        assert ok.status_code == 200 and ok.json()["transactions"] == []
    finally:
        stop_gateway(gw)


def test_a_client_that_hangs_up_mid_request_is_an_info_line_not_an_error(
    tmp_path: Path, fake_provider: FakeProvider
) -> None:
    gw = start_gateway(
        tmp_path, models=[model_entry("fake", "fake", fake_provider.base_url)], env={"LOG_LEVEL": "INFO"}
    )
    try:
        _, key = gw.new_user(1)
        host, port = gw.url.removeprefix("http://").split(":")
        for _ in range(3):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Authorization: Bearer {key}\r\nContent-Length: 5000\r\n\r\n".encode()
                    + b'{"model": "fake", "messages": ['
                )
                time.sleep(0.2)
        time.sleep(0.5)
        assert httpx.get(gw.url + "/health", timeout=10).status_code == 200
    finally:
        stop_gateway(gw)
    log = gw.log_path.read_text()
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
    assert ADMIN_KEY not in log and key not in log
