"""The model-call routes skip FastAPI's router: what a client sees on them must not change.

Ids, security headers, CORS, the size limit, errors in each protocol's shape and the metrics'
route label are the same on a directly dispatched route as on every other route.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider
from tests.support import assert_openai_error, bearer

ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    tmp: Path = tmp_path_factory.mktemp("hotlane")
    gateway = start_gateway(
        tmp,
        models=[model_entry("fake", "hot+chunks-3", fake_provider.base_url)],
        env={
            "CORS_ORIGINS": ORIGIN,
            "MAX_REQUEST_SIZE": "4000",
            "PROMETHEUS_ENABLED": "true",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
        },
    )
    yield gateway
    stop_gateway(gateway)


@pytest.fixture(scope="module")
def key(gw: Gateway) -> str:
    return gw.new_user(balance=5)[1]


def _chat(gw: Gateway, key: str, body: dict[str, object], **headers: str) -> httpx.Response:
    return httpx.post(gw.v1 + "/chat/completions", json=body, headers={**bearer(key), **headers}, timeout=30)


def test_a_call_carries_ids_security_and_cors_headers(gw: Gateway, key: str) -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    r = _chat(gw, key, body, Origin=ORIGIN, **{"X-Request-ID": "client-id-1"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "client-id-1"
    assert len(r.headers["x-gateway-request-id"]) == 32
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["x-request-cost"]


def test_errors_keep_each_protocols_shape(gw: Gateway, key: str) -> None:
    r = _chat(gw, key, {"model": "fake", "messages": "not a list"})
    assert_openai_error(r, 400, "invalid_request_error", any_code=True)
    assert r.headers["x-gateway-request-id"]
    r = httpx.post(gw.v1 + "/messages", content=b"{", headers={"x-api-key": key}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "fake"}, timeout=30)
    assert_openai_error(r, 401, "authentication_error", "invalid_api_key")


def test_the_size_limit_holds(gw: Gateway, key: str) -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_openai_error(_chat(gw, key, body), 413, "invalid_request_error", any_code=True)


def test_other_methods_and_paths_are_still_the_routers(gw: Gateway, key: str) -> None:
    r = httpx.get(gw.v1 + "/chat/completions", headers=bearer(key), timeout=30)
    assert_openai_error(r, 405, "invalid_request_error", "method_not_allowed")
    r = httpx.options(
        gw.v1 + "/chat/completions",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN


def test_metrics_name_the_route_template(gw: Gateway, key: str) -> None:
    _chat(gw, key, {"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
    text = httpx.get(gw.url + "/metrics", timeout=30).text
    counts = [ln for ln in text.splitlines() if ln.startswith("http_requests_total{")]
    line = next((ln for ln in counts if "/v1/chat/completions" in ln), None)
    assert line is not None, text[:2000]
    assert 'route="/v1/chat/completions"' in line and 'method="POST"' in line
