"""Every row of the error table, as a client sees it: status, OpenAI shape, and no cost."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from jose import jwt

from tests.conftest import ADMIN_KEY, Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider
from tests.support import PROVIDER_SECRET, assert_log_has_no_secrets, assert_openai_error, bearer, reserved

JWT_SECRET = "errors-test-jwt-secret-0123456789abcdef"
MAX_SIZE = 2000

# Every caller credential used in this module, checked against the gateway's log at the end.
_SECRETS: list[str] = [PROVIDER_SECRET]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    base = fake_provider.base_url
    gateway = start_gateway(
        tmp_path_factory.mktemp("errors"),
        models=[
            model_entry("fake", "errs+chunks-5", base),
            model_entry("embed", "errs-embed", base),
            model_entry("broken", "errs+fail-500", base),
            model_entry("busy", "errs+fail-429", base),
            model_entry("sluggish", "errs+slow-3000", base),
            model_entry("badkey", "errs+fail-401", base),
            model_entry("tiny", "errs+ctx-5", base),
            model_entry("picky", "errs+fail-400", base),
        ],
        # No retries here (LiteLLM backs off ~1 s per retry); test_fallbacks covers retries.
        router_settings={"num_retries": 0, "timeout": 1},
        env={"MAX_REQUEST_SIZE": str(MAX_SIZE), "JWT_SECRET_KEY": JWT_SECRET},
    )
    yield gateway
    stop_gateway(gateway)


@pytest.fixture(scope="module")
def account(gw: Gateway) -> tuple[str, str]:
    """One funded account; every bad request below must leave it untouched."""
    user_id, key = gw.new_user(balance=5)
    _SECRETS.append(key)
    return user_id, key


@pytest.fixture
def unchanged(gw: Gateway, account: tuple[str, str]) -> Iterator[str]:
    """The account's key; after the test its balance is the same and nothing is held."""
    user_id, key = account
    before = gw.balance(key)
    yield key
    assert gw.balance(key) == before
    assert reserved(gw, user_id) == 0


def chat(
    gw: Gateway,
    key: str | None,
    body: Any = None,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    h = dict(headers or {})
    if key is not None:
        h.update(bearer(key))
    if content is not None:
        return httpx.post(gw.v1 + "/chat/completions", content=content, headers=h, timeout=30)
    return httpx.post(gw.v1 + "/chat/completions", json=body, headers=h, timeout=30)


def msg(text: str = "hello") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --- 400 invalid_request_error -------------------------------------------------------------

BAD_BODIES: dict[str, tuple[bytes | Any, str | None]] = {
    "malformed_json": (b'{"model": "fake", "messages": [', None),
    "empty_body": (b"", None),
    "array_body": (b'[{"model": "fake"}]', None),
    "string_body": (b'"hello"', None),
    "missing_model": ({"messages": msg()}, "model"),
    "model_not_string": ({"model": 42, "messages": msg()}, "model"),
    "empty_model": ({"model": "", "messages": msg()}, "model"),
    "messages_not_list": ({"model": "fake", "messages": "hello"}, "messages"),
    "messages_missing": ({"model": "fake"}, "messages"),
    "messages_empty": ({"model": "fake", "messages": []}, "messages"),
    "message_not_object": ({"model": "fake", "messages": ["hello"]}, "messages[0]"),
    "bad_role": ({"model": "fake", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0]"),
    "stream_not_bool": ({"model": "fake", "messages": msg(), "stream": "yes"}, "stream"),
    "negative_max_tokens": ({"model": "fake", "messages": msg(), "max_tokens": -5}, "max_tokens"),
    "zero_max_tokens": ({"model": "fake", "messages": msg(), "max_tokens": 0}, "max_tokens"),
    "float_max_tokens": ({"model": "fake", "messages": msg(), "max_tokens": 1.5}, "max_tokens"),
    "bool_max_tokens": ({"model": "fake", "messages": msg(), "max_tokens": True}, "max_tokens"),
    "api_base": ({"model": "fake", "messages": msg(), "api_base": "http://evil.example"}, "api_base"),
    "api_key": ({"model": "fake", "messages": msg(), "api_key": "sk-mine"}, "api_key"),
    "mock_response": ({"model": "fake", "messages": msg(), "mock_response": "free"}, "mock_response"),
    "fallbacks": ({"model": "fake", "messages": msg(), "fallbacks": ["x"]}, "fallbacks"),
    "stream_options_not_object": (
        {"model": "fake", "messages": msg(), "stream": True, "stream_options": "x"},
        "stream_options",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_chat_body_is_400_and_costs_nothing(
    gw: Gateway, unchanged: str, fake_provider: FakeProvider, case: str
) -> None:
    body, param = BAD_BODIES[case]
    fake_provider.clear()
    if isinstance(body, bytes):
        r = chat(gw, unchanged, content=body, headers={"Content-Type": "application/json"})
    else:
        r = chat(gw, unchanged, body)
    error = assert_openai_error(r, 400, "invalid_request_error", any_code=True)
    if param is not None:
        assert error["param"] == param
    assert fake_provider.requests() == []


def test_forbidden_param_is_rejected_on_the_stream_route_too(gw: Gateway, unchanged: str) -> None:
    r = httpx.post(
        gw.v1 + "/chat/completions/stream",
        json={"model": "fake", "messages": msg(), "api_base": "http://evil.example"},
        headers=bearer(unchanged),
        timeout=30,
    )
    assert assert_openai_error(r, 400, "invalid_request_error", any_code=True)["param"] == "api_base"


@pytest.mark.parametrize(
    "body",
    [
        {"model": "embed"},
        {"model": "embed", "input": 42},
        {"model": "embed", "input": []},
        {"input": "hi"},
        {"model": "embed", "input": "hi", "api_base": "http://evil.example"},
    ],
)
def test_bad_embeddings_body_is_400(gw: Gateway, unchanged: str, body: dict[str, Any]) -> None:
    r = httpx.post(gw.v1 + "/embeddings", json=body, headers=bearer(unchanged), timeout=30)
    assert_openai_error(r, 400, "invalid_request_error", any_code=True)


@pytest.mark.parametrize(
    "query", ["limit=abc", "limit=0", "limit=100000", "offset=-1", "offset=x", "limit=1.5"]
)
def test_bad_query_parameter_is_400_not_422(gw: Gateway, unchanged: str, query: str) -> None:
    r = httpx.get(gw.url + "/billing/transactions?" + query, headers=bearer(unchanged), timeout=30)
    error = assert_openai_error(r, 400, "invalid_request_error", any_code=True)
    assert error["param"] in ("limit", "offset")


def test_admin_schema_violation_is_400(gw: Gateway) -> None:
    r = gw.admin("POST", "/admin/users", {"user_id": 7})
    assert assert_openai_error(r, 400, "invalid_request_error", any_code=True)["param"] == "user_id"
    r = httpx.post(
        gw.url + "/admin/users",
        content=b"{nope",
        headers=bearer(ADMIN_KEY) | {"Content-Type": "application/json"},
    )
    assert_openai_error(r, 400, "invalid_request_error", any_code=True)


LONG_PROMPT = " ".join(f"w{i}" for i in range(50))


def test_prompt_over_the_context_window_is_400_and_costs_nothing(gw: Gateway, unchanged: str) -> None:
    r = chat(gw, unchanged, {"model": "tiny", "messages": msg(LONG_PROMPT)})
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
    )
    assert "maximum context length is 5 tokens" in error["message"]


@pytest.mark.parametrize(
    ("model", "prompt"), [("tiny", LONG_PROMPT), ("picky", "hello")], ids=["ctx", "rejected"]
)
def test_provider_400_message_carries_no_litellm_internals(
    gw: Gateway, unchanged: str, model: str, prompt: str
) -> None:
    r = chat(gw, unchanged, {"model": model, "messages": msg(prompt)})
    error = assert_openai_error(r, 400, "invalid_request_error", any_code=True)
    for internal in ("BadRequestError", "LiteLLM", "fallback", "docs.litellm.ai", '{"error"'):
        assert internal not in error["message"], error["message"]


def test_request_the_provider_rejects_is_400_and_costs_nothing(gw: Gateway, unchanged: str) -> None:
    r = chat(gw, unchanged, {"model": "picky", "messages": msg()})
    assert_openai_error(r, 400, "invalid_request_error", any_code=True)


# --- 401 authentication_error / invalid_api_key ---------------------------------------------


def _token(secret: str, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": "jwt-errors-user", "iat": now, "exp": now + 600}
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


CREDENTIALS: dict[str, Any] = {
    "missing_header": None,
    "bearer_only": "Bearer",
    "basic_scheme": "Basic dXNlcjpwYXNz",
    "no_scheme": "sk-gw-whatever",
    "unknown_sk_key": "Bearer sk-gw-" + "x" * 43,
    "not_a_key": "Bearer hello",
    "forged_jwt": "Bearer " + _token("not-the-secret-0123456789abcdef0123"),
    "expired_jwt": "Bearer " + _token(JWT_SECRET, exp=int(time.time()) - 60, iat=int(time.time()) - 700),
    "jwt_without_sub": "Bearer " + jwt.encode({"exp": int(time.time()) + 600}, JWT_SECRET, algorithm="HS256"),
    "jwt_alg_none": "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.",
}


@pytest.mark.parametrize("case", list(CREDENTIALS))
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/billing/balance"])
def test_bad_credential_is_401(gw: Gateway, case: str, path: str) -> None:
    header = CREDENTIALS[case]
    headers = {} if header is None else {"Authorization": header}
    if path == "/v1/chat/completions":
        r = httpx.post(gw.url + path, json={"model": "fake", "messages": msg()}, headers=headers, timeout=30)
    else:
        r = httpx.get(gw.url + path, headers=headers, timeout=30)
    error = assert_openai_error(r, 401, "authentication_error", "invalid_api_key")
    assert "eyJ" not in error["message"]


def test_revoked_key_is_401_at_once(gw: Gateway) -> None:
    user_id, _ = gw.new_user(balance=1)
    r = gw.admin("POST", f"/admin/users/{user_id}/keys", {"name": "to-revoke"})
    key, key_id = r.json()["key"], r.json()["key_id"]
    _SECRETS.append(key)
    assert gw.client(key).chat.completions.create(model="fake", messages=msg()).choices
    assert gw.admin("DELETE", f"/admin/users/{user_id}/keys/{key_id}").status_code == 200
    r = chat(gw, key, {"model": "fake", "messages": msg()})
    error = assert_openai_error(r, 401, "authentication_error", "invalid_api_key")
    assert key not in error["message"]


# --- 402 insufficient_quota / insufficient_balance -------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_zero_balance_is_402(gw: Gateway, fake_provider: FakeProvider, stream: bool) -> None:
    user_id, key = gw.new_user(balance=0)
    _SECRETS.append(key)
    fake_provider.clear()
    r = chat(gw, key, {"model": "fake", "messages": msg(), "stream": stream})
    assert_openai_error(r, 402, "insufficient_quota", "insufficient_balance")
    assert fake_provider.requests() == []
    assert gw.balance(key) == 0 and reserved(gw, user_id) == 0


def test_zero_balance_embeddings_is_402(gw: Gateway) -> None:
    _, key = gw.new_user(balance=0)
    _SECRETS.append(key)
    r = httpx.post(
        gw.v1 + "/embeddings", json={"model": "embed", "input": "hi"}, headers=bearer(key), timeout=30
    )
    assert_openai_error(r, 402, "insufficient_quota", "insufficient_balance")


def test_unaffordable_max_tokens_is_402_saying_what_it_can_afford(gw: Gateway) -> None:
    # 0.0001 at 0.000002 per output token is at most 50 tokens, minus the prompt's cost.
    user_id, key = gw.new_user(balance="0.0001")
    _SECRETS.append(key)
    r = chat(gw, key, {"model": "fake", "messages": msg(), "max_tokens": 1000})
    error = assert_openai_error(r, 402, "insufficient_quota", "insufficient_balance")
    assert error["param"] == "max_tokens"
    found = re.search(r"at most (\d+) completion tokens", error["message"])
    assert found, error["message"]
    affordable = int(found.group(1))
    assert 0 < affordable < 50
    assert gw.balance(key) == Decimal("0.0001") and reserved(gw, user_id) == 0
    # The number in the message is the truth: asking for exactly that much is served.
    r = chat(gw, key, {"model": "fake", "messages": msg(), "max_tokens": affordable})
    assert r.status_code == 200, r.text
    r = chat(gw, key, {"model": "fake", "messages": msg(), "max_tokens": 1000})
    assert r.status_code == 402


HUGE_MAX_TOKENS = 2**40  # more than a Postgres integer holds


def test_huge_max_tokens_is_a_400_naming_it_not_a_store_error(gw: Gateway, unchanged: str) -> None:
    r = chat(gw, unchanged, {"model": "fake", "messages": msg(), "max_tokens": HUGE_MAX_TOKENS})
    error = assert_openai_error(r, 400, "invalid_request_error")
    assert error["param"] == "max_tokens"


def test_a_max_tokens_the_balance_cannot_pay_is_402(gw: Gateway, unchanged: str) -> None:
    r = chat(gw, unchanged, {"model": "fake", "messages": msg(), "max_tokens": 2**31 - 1})
    error = assert_openai_error(r, 402, "insufficient_quota", "insufficient_balance")
    assert error["param"] == "max_tokens"


def test_the_largest_max_tokens_on_postgres_is_402_not_a_store_error(
    tmp_path: Path, fake_provider: FakeProvider, pg_database: str
) -> None:
    gateway = start_gateway(
        tmp_path,
        models=[model_entry("fake", "errs", fake_provider.base_url)],
        env={"DATABASE_URL": pg_database},
    )
    try:
        _, key = gateway.new_user(balance=1)
        _SECRETS.append(key)
        r = chat(gateway, key, {"model": "fake", "messages": msg(), "max_tokens": 2**31 - 1})
        assert_openai_error(r, 402, "insufficient_quota", "insufficient_balance")
    finally:
        stop_gateway(gateway)


# --- 403 permission_error --------------------------------------------------------------------


def test_admin_api_without_admin_key_configured_is_403(tmp_path: Path, fake_provider: FakeProvider) -> None:
    gateway = start_gateway(
        tmp_path, models=[model_entry("fake", "errs", fake_provider.base_url)], env={"ADMIN_API_KEY": ""}
    )
    try:
        for headers in ({}, bearer(ADMIN_KEY), bearer("anything")):
            r = httpx.post(gateway.url + "/admin/users", json={}, headers=headers, timeout=30)
            assert_openai_error(r, 403, "permission_error", any_code=True)
            r = httpx.get(gateway.url + "/admin/users/demo", headers=headers, timeout=30)
            assert_openai_error(r, 403, "permission_error", any_code=True)
    finally:
        stop_gateway(gateway)


# --- 404 model_not_found ---------------------------------------------------------------------


def test_unknown_model_is_404(gw: Gateway, unchanged: str, fake_provider: FakeProvider) -> None:
    fake_provider.clear()
    for stream in (False, True):
        r = chat(gw, unchanged, {"model": "gpt-nonexistent", "messages": msg(), "stream": stream})
        error = assert_openai_error(r, 404, "invalid_request_error", "model_not_found")
        assert error["param"] == "model" and "gpt-nonexistent" in error["message"]
    r = httpx.post(
        gw.v1 + "/embeddings", json={"model": "nope", "input": "hi"}, headers=bearer(unchanged), timeout=30
    )
    assert_openai_error(r, 404, "invalid_request_error", "model_not_found")
    for name in ("nope", "org/nope", "fake-but-not-really"):
        r = httpx.get(gw.v1 + "/models/" + name, headers=bearer(unchanged), timeout=30)
        assert_openai_error(r, 404, "invalid_request_error", "model_not_found")
    assert fake_provider.requests() == []


def test_unknown_model_through_the_sdk_is_not_found(gw: Gateway, unchanged: str) -> None:
    import openai

    with pytest.raises(openai.NotFoundError) as info:
        gw.client(unchanged).chat.completions.create(model="gpt-nonexistent", messages=msg())
    assert info.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/nothing"), ("POST", "/v1/completionz"), ("GET", "/"), ("DELETE", "/admin/nothing")],
)
def test_unknown_route_is_404(gw: Gateway, unchanged: str, method: str, path: str) -> None:
    r = httpx.request(method, gw.url + path, headers=bearer(unchanged), timeout=30)
    error = assert_openai_error(r, 404, "invalid_request_error", "unknown_url")
    assert path in error["message"]


# --- 405 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/chat/completions"), ("DELETE", "/v1/models"), ("PUT", "/billing/balance")],
)
def test_wrong_method_is_405(gw: Gateway, unchanged: str, method: str, path: str) -> None:
    r = httpx.request(method, gw.url + path, headers=bearer(unchanged), timeout=30)
    assert_openai_error(r, 405, "invalid_request_error", any_code=True)
    assert method not in r.headers["allow"] and r.headers["allow"]


# --- 413 request_too_large -------------------------------------------------------------------


def _big_body() -> bytes:
    return b'{"model": "fake", "messages": [{"role": "user", "content": "' + b"a " * MAX_SIZE + b'"}]}'


def test_body_over_limit_with_content_length_is_413(
    gw: Gateway, unchanged: str, fake_provider: FakeProvider
) -> None:
    fake_provider.clear()
    body = _big_body()
    r = chat(gw, unchanged, content=body, headers={"Content-Type": "application/json"})
    error = assert_openai_error(r, 413, "invalid_request_error", "request_too_large")
    assert str(MAX_SIZE) in error["message"]
    assert fake_provider.requests() == []


def test_chunked_body_over_limit_without_content_length_is_413(
    gw: Gateway, unchanged: str, fake_provider: FakeProvider
) -> None:
    fake_provider.clear()
    body = _big_body()

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    r = httpx.post(
        gw.v1 + "/chat/completions",
        content=pieces(),
        headers=bearer(unchanged) | {"Content-Type": "application/json"},
        timeout=30,
    )
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert_openai_error(r, 413, "invalid_request_error", "request_too_large")
    assert fake_provider.requests() == []


def test_chunked_body_under_limit_is_served(gw: Gateway, account: tuple[str, str]) -> None:
    _, key = account
    body = b'{"model": "fake", "messages": [{"role": "user", "content": "hi"}]}'
    r = httpx.post(
        gw.v1 + "/chat/completions",
        content=iter([body[:10], body[10:]]),
        headers=bearer(key) | {"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 200, r.text


def test_admin_body_over_limit_is_413(gw: Gateway) -> None:
    r = gw.admin("POST", "/admin/users", {"user_id": "x", "pad": "y" * MAX_SIZE})
    assert_openai_error(r, 413, "invalid_request_error", "request_too_large")


# --- 502 / 503 / 504 api_error ---------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("broken", 502, "upstream_error"),
        ("busy", 503, "upstream_unavailable"),
        ("sluggish", 504, "upstream_timeout"),
    ],
)
def test_upstream_failure_is_5xx_and_costs_nothing(
    gw: Gateway, unchanged: str, fake_provider: FakeProvider, model: str, status: int, code: str, stream: bool
) -> None:
    fake_provider.clear()
    r = chat(gw, unchanged, {"model": model, "messages": msg(), "stream": stream})
    error = assert_openai_error(r, status, "api_error", code)
    assert PROVIDER_SECRET not in r.text and unchanged not in r.text
    assert "sk-" not in error["message"]
    # The provider really was asked: this is its failure, not a refusal by the gateway.
    assert len(fake_provider.requests()) >= 1
    if status == 503:
        assert int(r.headers["retry-after"]) > 0


def test_provider_rejecting_our_key_is_502_without_the_key(
    gw: Gateway, unchanged: str, fake_provider: FakeProvider
) -> None:
    # LiteLLM cools a deployment down after a 401, so only the first call reaches the provider.
    fake_provider.clear()
    r = chat(gw, unchanged, {"model": "badkey", "messages": msg()})
    error = assert_openai_error(r, 502, "api_error", "upstream_error")
    assert "sk-" not in error["message"]
    sent = fake_provider.requests()
    assert sent and sent[0]["authorization"] == f"Bearer {PROVIDER_SECRET}"


def test_upstream_failure_through_the_sdk(gw: Gateway, unchanged: str) -> None:
    import openai

    with pytest.raises(openai.InternalServerError) as info:
        gw.client(unchanged).chat.completions.create(model="broken", messages=msg())
    assert info.value.status_code == 502 and info.value.code == "upstream_error"


def test_embeddings_upstream_failure_costs_nothing(gw: Gateway, unchanged: str) -> None:
    r = httpx.post(
        gw.v1 + "/embeddings", json={"model": "broken", "input": "hi"}, headers=bearer(unchanged), timeout=30
    )
    assert_openai_error(r, 502, "api_error", "upstream_error")


# --- every response: request id, and no secret anywhere ---------------------------------------


def test_error_responses_carry_the_request_id(gw: Gateway) -> None:
    r = httpx.post(gw.v1 + "/chat/completions", content=b"{", headers={"X-Request-ID": "err-42"}, timeout=30)
    assert r.status_code in (400, 401)
    assert r.headers["x-request-id"] == "err-42"
    r = httpx.get(gw.url + "/nope", headers={"X-Request-ID": "err-43"}, timeout=30)
    assert r.status_code == 404 and r.headers["x-request-id"] == "err-43"
    r = httpx.post(
        gw.v1 + "/chat/completions", content=_big_body(), headers={"X-Request-ID": "err-44"}, timeout=30
    )
    assert r.status_code == 413 and r.headers["x-request-id"] == "err-44"


def test_no_secret_or_traceback_in_the_gateway_log(gw: Gateway) -> None:
    # Runs last in this module: every failure above has been logged by now.
    assert_log_has_no_secrets(gw, _SECRETS)
    assert "Traceback" not in gw.log_path.read_text(errors="replace"), gw.log_tail()
