"""The production stack as deployed: client -> nginx (deployments/nginx.conf) -> gunicorn with two
uvicorn workers (deployments/gunicorn.conf.py) -> the real app -> the fake provider."""

from __future__ import annotations

import http.client
import itertools
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import model_entry
from tests.fake_provider import FakeProvider
from tests.support import assert_openai_error, bearer

from .conftest import Nginx, Production, running_nginx, start_production, stop_production, worker_pid

STREAM_MODEL = "prod-stream"
STREAM_CHUNKS = 8
CHUNK_DELAY_MS = 250
COUNTED_MODEL = "prod-counted"
CHAT_MODEL = "prod-chat"


@dataclass
class Stack:
    production: Production
    nginx: Nginx
    key: str
    user_id: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("production")
    api = fake_provider.base_url
    # A known output cap, so a call without max_tokens holds a bounded amount and one user
    # can have several calls in flight.
    cap = {"max_output_tokens": 64}
    models = [
        model_entry(STREAM_MODEL, f"fake+chunks-{STREAM_CHUNKS}+chunkdelay-{CHUNK_DELAY_MS}", api, **cap),
        # Slow enough that concurrent calls hold their connections open at once.
        model_entry(COUNTED_MODEL, "fake+chunks-2+slow-300", api, **cap),
        model_entry(CHAT_MODEL, "fake+chunks-3", api, **cap),
    ]
    production = start_production(tmp, models=models, workers=2)
    try:
        upstream = production.gateway.url.removeprefix("http://")
        with running_nginx(tmp, upstream=upstream) as nginx:
            user_id, key = production.gateway.new_user(balance=100)
            yield Stack(production, nginx, key, user_id)
    finally:
        stop_production(production)


def chat_body(model: str, *, stream: bool = False) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], "stream": stream}


def test_nginx_config_in_use_passes_nginx_t(stack: Stack) -> None:
    result = stack.nginx.test_config()
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


def test_both_workers_serve_requests_through_nginx(stack: Stack) -> None:
    assert len(stack.production.workers) == 2
    seen: set[int] = set()
    deadline = time.monotonic() + 20
    while seen != stack.production.workers and time.monotonic() < deadline:
        # Concurrent fresh client connections make nginx open several upstream connections.
        with ThreadPoolExecutor(8) as pool:
            seen.update(pool.map(lambda _: worker_pid(stack.nginx.url), range(8)))
    assert seen == stack.production.workers


def test_sse_events_arrive_as_they_are_produced(stack: Stack) -> None:
    arrivals: list[float] = []
    texts: list[str] = []
    with httpx.Client(timeout=30) as client:  # sends Accept-Encoding: gzip, like real clients
        with client.stream(
            "POST",
            stack.nginx.url + "/v1/chat/completions",
            json=chat_body(STREAM_MODEL, stream=True),
            headers=bearer(stack.key),
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert "content-encoding" not in r.headers  # never compressed (would buffer)
            done = False
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                event = json.loads(line.removeprefix("data: "))
                content = "".join(
                    (c.get("delta") or {}).get("content") or "" for c in event.get("choices", [])
                )
                if content:
                    arrivals.append(time.monotonic())
                    texts.append(content)
    assert done
    assert "".join(texts) == "".join(f"tok{k} " for k in range(STREAM_CHUNKS))
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    spread = arrivals[-1] - arrivals[0]
    print(f"SSE through nginx: spread {spread:.3f}s, gaps {[round(g, 3) for g in gaps]}")
    # The provider produces a token every 250 ms. Buffering anywhere (gunicorn, nginx, the
    # gateway) would deliver them as one burst at the end: gaps near 0 and no spread.
    # Tolerant of a scheduling hiccup on a busy machine (one late event makes the next gap short).
    assert spread >= 1.2, gaps
    assert sum(g >= 0.15 for g in gaps) >= len(gaps) - 2, gaps
    assert statistics.median(gaps) >= 0.15, gaps


def _counted_call(url: str, key: str, request_id: str) -> httpx.Response:
    with httpx.Client(timeout=30) as client:  # a fresh connection per call
        return client.post(
            url + "/v1/chat/completions",
            json=chat_body(COUNTED_MODEL),
            headers={**bearer(key), "X-Request-ID": request_id},
        )


def _successes(metrics_text: str, model: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if (
                sample.name == "llm_requests_total"
                and sample.labels.get("model") == model
                and sample.labels.get("status") == "success"
            ):
                total += sample.value
    return total


def test_metrics_sum_both_workers_whichever_answers(stack: Stack) -> None:
    production, nginx = stack.production, stack.nginx
    calls: list[str] = []
    served_by: dict[int, int] = {}
    # Waves of concurrent calls until both workers have served some (normally the first two).
    for _ in range(6):
        wave = [f"count-{uuid.uuid4().hex[:12]}" for _ in range(10)]
        with ThreadPoolExecutor(len(wave)) as pool:
            responses = list(pool.map(lambda rid: _counted_call(nginx.url, stack.key, rid), wave))
        for r in responses:
            assert r.status_code == 200, r.text
        calls += wave
        lines = production.wait_access(set(calls))
        served_by = {}
        for line in lines.values():
            assert line["path"] == "/v1/chat/completions" and line["status"] == 200
            served_by[line["pid"]] = served_by.get(line["pid"], 0) + 1
        if len(calls) >= 20 and set(served_by) == production.workers:
            break
    assert set(served_by) == production.workers, served_by
    n = len(calls)

    # Scrape through nginx, many times on fresh connections, until both workers have answered.
    scraped_by: dict[int, float] = {}
    deadline = time.monotonic() + 30
    while set(scraped_by) != production.workers and time.monotonic() < deadline:
        ids = [f"scrape-{uuid.uuid4().hex[:12]}" for _ in range(6)]

        def scrape(rid: str) -> str:
            with httpx.Client(timeout=30) as client:
                r = client.get(nginx.url + "/metrics", headers={"X-Request-ID": rid})
            assert r.status_code == 200, r.text
            return r.text

        with ThreadPoolExecutor(len(ids)) as pool:
            bodies = list(pool.map(scrape, ids))
        lines = production.wait_access(set(ids))
        for rid, body in zip(ids, bodies, strict=True):
            scraped_by[lines[rid]["pid"]] = _successes(body, COUNTED_MODEL)
    print(f"{n} calls served by {served_by}; scrapes answered by {scraped_by}")
    assert set(scraped_by) == production.workers
    assert all(value == n for value in scraped_by.values()), (n, scraped_by)


def test_request_id_comes_back_through_nginx(stack: Stack) -> None:
    rid = f"client-req-{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=30) as client:
        r = client.post(
            stack.nginx.url + "/v1/chat/completions",
            json=chat_body(CHAT_MODEL),
            headers={**bearer(stack.key), "X-Request-ID": rid},
        )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == rid
    # The same id in nginx's log and in the gateway's access line: one request, traceable.
    line = stack.production.wait_access({rid})[rid]
    assert line["path"] == "/v1/chat/completions"
    deadline = time.monotonic() + 5
    while not [x for x in stack.nginx.access_lines() if x["request_id"] == rid]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_every_call_through_nginx_names_its_ledger_row(stack: Stack, stream: bool) -> None:
    with httpx.Client(timeout=30) as client:
        r = client.post(
            stack.nginx.url + "/v1/chat/completions",
            json={**chat_body(CHAT_MODEL), "stream": stream},
            headers=bearer(stack.key),
        )
        assert r.status_code == 200, r.text
        ledger_id = r.headers["x-gateway-request-id"]
        assert ledger_id != r.headers["x-request-id"]  # nginx's id is not the ledger's
        rows = client.get(
            stack.nginx.url + "/billing/transactions?limit=100", headers=bearer(stack.key)
        ).json()["transactions"]
        assert ledger_id in [t["request_id"] for t in rows]
        record = client.get(stack.nginx.url + f"/billing/requests/{ledger_id}", headers=bearer(stack.key))
        assert record.status_code == 200 and record.json()["status"] == "charged", record.text
    deadline = time.monotonic() + 5
    while not [x for x in stack.nginx.access_lines() if x.get("gateway_request_id") == ledger_id]:
        assert time.monotonic() < deadline  # nginx's log names the ledger row too
        time.sleep(0.05)


def test_request_id_is_made_up_by_nginx_when_the_client_sends_none(stack: Stack) -> None:
    with httpx.Client(timeout=30) as client:
        r = client.post(
            stack.nginx.url + "/v1/chat/completions", json=chat_body(CHAT_MODEL), headers=bearer(stack.key)
        )
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    assert len(rid) == 32  # nginx's $request_id, forwarded, and echoed by the gateway
    deadline = time.monotonic() + 5
    while not [x for x in stack.nginx.access_lines() if x["request_id"] == rid]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert stack.production.wait_access({rid})[rid]["path"] == "/v1/chat/completions"


def test_gateway_sees_the_address_nginx_saw_not_a_forged_one(stack: Stack) -> None:
    rid = f"ip-{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=30) as client:
        r = client.get(
            stack.nginx.url + "/health",
            headers={"X-Request-ID": rid, "X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.8"},
        )
    assert r.status_code == 200
    line = stack.production.wait_access({rid})[rid]
    assert line["remote_addr"] == "127.0.0.1", line
    nginx_line = [x for x in stack.nginx.access_lines() if x["request_id"] == rid]
    assert nginx_line and nginx_line[0]["remote_addr"] == "127.0.0.1"


def test_body_over_the_limit_gets_openai_413_through_nginx(stack: Stack) -> None:
    host, port = stack.nginx.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=b"x" * (10 * 1024 * 1024 + 1),
            headers={"Content-Type": "application/json", **bearer(stack.key)},
        )
        resp = conn.getresponse()
        response = httpx.Response(resp.status, headers=resp.getheaders(), content=resp.read())
    finally:
        conn.close()
    error = assert_openai_error(response, 413, "invalid_request_error", "request_too_large")
    assert "too large" in error["message"].lower()


def test_openai_sdk_works_through_nginx(stack: Stack) -> None:
    import openai

    client = openai.OpenAI(base_url=stack.nginx.url + "/v1", api_key=stack.key, max_retries=0, timeout=30)
    reply = client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "tok0 tok1 tok2 "
    parts = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        if chunk.choices
    ]
    assert "".join(parts) == "tok0 tok1 tok2 "
    client.close()
