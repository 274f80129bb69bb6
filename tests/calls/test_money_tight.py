"""A caller can never make the provider bill more than the caller pays, on either call path.

Each gateway runs on the fast path (OpenAI-compatible bytes) or LiteLLM's path, on SQLite or
Postgres; every attack is sent as raw HTTP, the way an attacker would, and the fake provider's
record shows what actually reached it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.billing.support import audit, charges, decimal_json, tag, wait_reserved_zero
from tests.conftest import INPUT_PRICE, OUTPUT_PRICE, Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider
from tests.support import assert_openai_error, bearer

PRIORITY_IN, PRIORITY_OUT = Decimal("0.000004"), Decimal("0.000008")
CACHE_READ, REASONING = Decimal("0.0000001"), Decimal("0.00001")


def _entry(name: str, behaviour: str, base: str, path: str, **info: Any) -> dict[str, Any]:
    entry = model_entry(name, behaviour, base, **info)
    if path == "litellm":
        entry["litellm_params"]["drop_params"] = True  # only LiteLLM's path understands it
    return entry


@pytest.fixture(scope="module", params=["fast-sqlite", "litellm-sqlite", "fast-postgres"])
def gw(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_provider: FakeProvider,
    pg_database: str,
) -> Iterator[Gateway]:
    path, store = request.param.split("-")
    base = fake_provider.base_url
    gateway = start_gateway(
        tmp_path_factory.mktemp(f"money-{request.param}"),
        models=[
            _entry("plain", "fake+chunks-5", base, path),
            _entry("spaced", "fake+chunks-6+spaced", base, path),
            _entry(
                "tiers",
                "fake+chunks-5",
                base,
                path,
                input_cost_per_token_priority=str(PRIORITY_IN),
                output_cost_per_token_priority=str(PRIORITY_OUT),
            ),
            _entry(
                "parts",
                "fake+chunks-9+cached-3+reasoning-4",
                base,
                path,
                cache_read_input_token_cost=str(CACHE_READ),
                output_cost_per_reasoning_token=str(REASONING),
            ),
            _entry("greedy", "fake+chunks-60+ignoremax", base, path),
            _entry("greedy-silent", "fake+chunks-60+ignoremax+nousage", base, path),
        ],
        env={"DATABASE_URL": pg_database} if store == "postgres" else {},
    )
    yield gateway
    stop_gateway(gateway)


def _post(gw: Gateway, key: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(gw.url + path, json=body, headers=bearer(key), timeout=60)


def _msg(text: str = "hello there") -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{tag()} {text}"}]


def _seen(fake: FakeProvider, marker: str) -> list[dict[str, Any]]:
    return [
        r["body"]
        for r in fake.requests()
        if r.get("path", "").endswith("/chat/completions") and marker in json.dumps(r.get("body"))
    ]


def _cost(prompt: int, completion: int, inp: Decimal = INPUT_PRICE, out: Decimal = OUTPUT_PRICE) -> Decimal:
    return (prompt * inp + completion * out).quantize(Decimal("0.00000001"))


# -- parameters are allowed, not denied --------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"extra_body": {"max_tokens": 3000, "n": 3}},
        {"additional_drop_params": ["max_tokens"]},
        {"provider_specific_header": {"extra_headers": {"Authorization": "Bearer sk-attacker"}}},
        {"api_base": "http://127.0.0.1:9/v1"},
        {"metadata": {"model_group": "other"}},
        {"mock_response": "free"},
        {"some_future_parameter": 1},
    ],
    ids=lambda e: next(iter(e)),
)
def test_a_parameter_outside_the_api_is_a_400_naming_it_and_never_reaches_the_provider(
    gw: Gateway, fake_provider: FakeProvider, extra: dict[str, Any]
) -> None:
    _, key = gw.new_user(Decimal("0.15"))
    messages = _msg()
    r = _post(gw, key, {"model": "plain", "messages": messages, **extra})
    error = assert_openai_error(r, 400, "invalid_request_error")
    assert error["param"] == next(iter(extra))
    assert _seen(fake_provider, messages[0]["content"].split()[0]) == []
    assert gw.balance(key) == Decimal("0.15")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", "hot"),
        ("temperature", 3),
        ("top_p", -0.1),
        ("n", 0),
        ("n", 1000),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("logit_bias", {"abc": 5}),
        ("max_tokens", -1),
        ("max_completion_tokens", 2**40),
        ("stream", "yes"),
        ("service_tier", "scale"),
        ("modalities", ["text", "audio"]),
    ],
)
def test_a_mistyped_parameter_is_a_400_naming_it(gw: Gateway, field: str, value: Any) -> None:
    _, key = gw.new_user(1)
    r = _post(gw, key, {"model": "plain", "messages": _msg(), field: value})
    assert assert_openai_error(r, 400, "invalid_request_error")["param"] == field


def test_embeddings_with_a_mistyped_encoding_format_is_a_400(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    r = _post(gw, key, {"model": "plain", "input": "hi", "encoding_format": 5}, "/v1/embeddings")
    assert assert_openai_error(r, 400, "invalid_request_error")["param"] == "encoding_format"


def test_both_token_limits_are_capped_at_what_was_held(gw: Gateway, fake_provider: FakeProvider) -> None:
    _, key = gw.new_user(1)
    messages = _msg()
    r = _post(
        gw, key, {"model": "plain", "messages": messages, "max_completion_tokens": 2, "max_tokens": 3000}
    )
    assert r.status_code == 200, r.text
    [seen] = _seen(fake_provider, messages[0]["content"].split()[0])
    assert (seen["max_completion_tokens"], seen["max_tokens"]) == (2, 2)
    assert r.json()["usage"]["completion_tokens"] == 2


def test_a_service_tier_is_priced_or_refused(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    refused = _post(gw, key, {"model": "plain", "messages": _msg(), "service_tier": "priority"})
    error = assert_openai_error(refused, 400, "invalid_request_error", "service_tier_not_priced")
    assert error["param"] == "service_tier"
    r = _post(gw, key, {"model": "tiers", "messages": _msg(), "service_tier": "priority"})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    expected = _cost(usage["prompt_tokens"], usage["completion_tokens"], PRIORITY_IN, PRIORITY_OUT)
    assert Decimal(r.headers["x-request-cost"]) == expected


# -- every usage component at its own price ---------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_cached_and_reasoning_tokens_are_charged_at_their_own_prices(gw: Gateway, stream: bool) -> None:
    _, key = gw.new_user(1)
    body: dict[str, Any] = {"model": "parts", "messages": _msg("one two three four five")}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    r = _post(gw, key, body)
    assert r.status_code == 200, r.text
    if stream:
        chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        usage = chunks[-1]["usage"]
    else:
        usage = r.json()["usage"]
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    expected = (
        (prompt - 3) * INPUT_PRICE + 3 * CACHE_READ + (completion - 4) * OUTPUT_PRICE + 4 * REASONING
    ).quantize(Decimal("0.00000001"))
    rid = r.headers["x-gateway-request-id"]
    assert charges(gw, key)[rid].amount == -expected


# -- the cost surface -------------------------------------------------------------------------


def test_a_json_answer_carries_its_cost_and_its_ledger_id(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    r = _post(gw, key, {"model": "plain", "messages": _msg()}, "/v1/chat/completions")
    assert r.status_code == 200, r.text
    rid = r.headers["x-gateway-request-id"]
    body = decimal_json(r)
    assert body["usage"]["cost"] == Decimal(r.headers["x-request-cost"]) == -charges(gw, key)[rid].amount
    record = httpx.get(f"{gw.url}/billing/requests/{rid}", headers=bearer(key), timeout=30)
    assert record.status_code == 200, record.text
    detail = decimal_json(record)
    assert (detail["status"], detail["model"], detail["cost"]) == ("charged", "plain", body["usage"]["cost"])
    assert detail["usage"]["input_tokens"] == body["usage"]["prompt_tokens"]
    assert detail["deployment"] and detail["settled"]
    # Nobody else's: another user gets a 404, as for an unknown id.
    _, other = gw.new_user(1)
    assert httpx.get(f"{gw.url}/billing/requests/{rid}", headers=bearer(other), timeout=30).status_code == 404


def test_the_caller_keeps_its_own_request_id_and_still_learns_the_ledger_id(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "plain", "messages": _msg()},
        headers={**bearer(key), "X-Request-ID": "mine-123"},
        timeout=30,
    )
    assert r.headers["x-request-id"] == "mine-123"
    assert r.headers["x-gateway-request-id"] in charges(gw, key)


def test_a_spaced_usage_chunk_is_found_and_billed_and_only_sent_to_who_asked(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    for wants in (False, True):
        body: dict[str, Any] = {"model": "spaced", "messages": _msg("a b c"), "stream": True}
        if wants:
            body["stream_options"] = {"include_usage": True}
        r = _post(gw, key, body)
        assert r.status_code == 200, r.text
        chunks = [
            json.loads(line[6:], parse_float=Decimal)
            for line in r.text.splitlines()
            if line.startswith("data: {")
        ]
        assert all(c.get("choices") for c in chunks[:-1])
        rid = r.headers["x-gateway-request-id"]
        charge = -charges(gw, key)[rid].amount
        if wants:
            usage = chunks[-1]["usage"]
            assert chunks[-1]["choices"] == []
            assert usage["completion_tokens"] == 6
            assert usage["cost"] == charge == _cost(usage["prompt_tokens"], 6)
        else:
            assert all("usage" not in c or c["usage"] is None for c in chunks)
            assert charge == _cost(5, 6)  # the provider's own count: 3 words + tag + 1


# -- a provider that generates more than was held ---------------------------------------------


def test_a_stream_that_outgrows_its_hold_is_cut_at_the_limit_and_charged_for_what_came(gw: Gateway) -> None:
    user_id, key = gw.new_user(1)
    r = _post(gw, key, {"model": "greedy-silent", "messages": _msg(), "stream": True, "max_tokens": 5})
    assert r.status_code == 200, r.text
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len(chunks) < 5 + 8 + 3  # nowhere near the provider's 60 tokens
    assert r.text.rstrip().endswith("data: [DONE]")
    rid = r.headers["x-gateway-request-id"]
    assert -charges(gw, key)[rid].amount > 0
    wait_reserved_zero(gw, user_id)


def test_a_charge_above_its_hold_is_recorded_not_silently_lost(gw: Gateway) -> None:
    _, key = gw.new_user(Decimal("0.0001"))  # affords 5 tokens, not the 60 the provider sends
    r = _post(gw, key, {"model": "greedy", "messages": _msg(), "max_tokens": 5})
    assert r.status_code == 200, r.text
    rid = r.headers["x-gateway-request-id"]
    detail = decimal_json(httpx.get(f"{gw.url}/billing/requests/{rid}", headers=bearer(key), timeout=30))
    provider_cost = _cost(r.json()["usage"]["prompt_tokens"], 60)
    assert detail["cost"] + detail["uncollected"] == provider_cost
    assert detail["uncollected"] > 0
    assert "uncollected" in charges(gw, key)[rid].description
    assert gw.balance(key) == 0


async def test_the_books_balance_after_every_attack(gw: Gateway) -> None:
    assert await audit(gw) == []
