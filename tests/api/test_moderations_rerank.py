"""Moderations with the official client and rerank with plain HTTP (a Cohere-compatible body).

Moderations are priced like any model (by the counted input) and free only where the operator
says so; rerank is charged per search unit the provider bills.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.billing.support import audit, charges, decimal_json, ledger, tag, wait_reserved_zero
from tests.conftest import INPUT_PRICE, Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider
from tests.support import assert_openai_error, bearer

QUERY_PRICE = Decimal("0.002")


def _rerank_entry(name: str, behaviour: str, root: str, **info: Any) -> dict[str, Any]:
    entry = model_entry(name, behaviour, root, **info)
    entry["litellm_params"]["model"] = f"cohere/{behaviour}"
    return entry


def _bare(name: str, behaviour: str, base: str, **info: Any) -> dict[str, Any]:
    entry = model_entry(name, behaviour, base)
    entry["model_info"] = dict(info)
    return entry


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_provider: FakeProvider,
    pg_database: str,
) -> Iterator[Gateway]:
    base = fake_provider.base_url
    root = base.removesuffix("/v1")
    per_query = {"input_cost_per_query": str(QUERY_PRICE)}
    gateway = start_gateway(
        tmp_path_factory.mktemp(f"modrerank-{request.param}"),
        models=[
            model_entry("omni-moderation-latest", "fake", base),
            _bare("moderation-free", "fake", base, free=True),
            _bare("moderation-unpriced", "fake", base),
            model_entry("moderation-broken", "fake+fail-500", base),
            _rerank_entry("rerank", "fake", root, **per_query),
            _rerank_entry("rerank-silent", "fake+nousage", root, **per_query),
            _rerank_entry("rerank-unpriced", "fake", root),
            _rerank_entry("rerank-broken", "fake+fail-500", root, **per_query),
        ],
        env={"DATABASE_URL": pg_database} if request.param == "postgres" else {},
    )
    yield gateway
    stop_gateway(gateway)


# -- moderations ------------------------------------------------------------------------------


def test_a_moderation_is_charged_its_counted_input_at_the_input_price(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    text = f"{tag()} violence in the street"
    raw = gw.client(key).moderations.with_raw_response.create(
        model="omni-moderation-latest", input=[text, "a quiet day"]
    )
    result = raw.parse()
    assert [r.flagged for r in result.results] == [True, False]
    assert result.results[0].categories.violence is True
    assert result.results[0].categories.self_harm_intent is False
    body = decimal_json(raw.http_response)
    assert "self-harm/intent" in body["results"][0]["categories"]  # OpenAI's names, not LiteLLM's
    rid = raw.headers["x-gateway-request-id"]
    row = next(r for r in ledger(gw, key) if r.request_id == rid)
    assert row.prompt_tokens is not None and row.prompt_tokens >= 8  # at least a token a word
    expected = row.prompt_tokens * INPUT_PRICE
    assert row.amount == -expected
    assert Decimal(raw.headers["x-request-cost"]) == expected == body["usage"]["cost"]


def test_a_moderation_without_a_model_uses_openais_default(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    result = gw.client(key).moderations.create(input="nothing to see")
    assert result.results[0].flagged is False
    assert gw.balance(key) < 1


def test_a_moderation_model_marked_free_costs_nothing(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    raw = gw.client(key).moderations.with_raw_response.create(model="moderation-free", input="hate")
    assert raw.parse().results[0].categories.hate is True
    assert Decimal(raw.headers["x-request-cost"]) == 0
    assert gw.balance(key) == 1


def test_an_unpriced_moderation_model_is_refused(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    r = httpx.post(
        gw.v1 + "/moderations", json={"model": "moderation-unpriced", "input": "x"}, headers=bearer(key)
    )
    assert_openai_error(r, 400, "invalid_request_error", "model_not_priced")


def test_a_failed_moderation_costs_nothing(gw: Gateway) -> None:
    user, key = gw.new_user(1)
    r = httpx.post(
        gw.v1 + "/moderations", json={"model": "moderation-broken", "input": "x"}, headers=bearer(key)
    )
    assert_openai_error(r, 502, "api_error", "upstream_error")
    wait_reserved_zero(gw, user)
    assert gw.balance(key) == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": 5}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"type": "audio"}]}, "input"),
        ({"input": "x", "threshold": 0.5}, "threshold"),
        ({"input": "x", "model": 7}, "model"),
    ],
)
def test_a_bad_moderation_body_is_a_400_naming_the_parameter(
    gw: Gateway, body: dict[str, Any], param: str
) -> None:
    _, key = gw.new_user(1)
    r = httpx.post(gw.v1 + "/moderations", json=body, headers=bearer(key))
    assert assert_openai_error(r, 400, "invalid_request_error")["param"] == param
    assert gw.balance(key) == 1


# -- rerank -----------------------------------------------------------------------------------


def _rerank(gw: Gateway, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gw.v1 + "/rerank", json=body, headers=bearer(key), timeout=60)


def test_a_rerank_orders_the_documents_and_is_charged_per_search_unit(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    r = _rerank(
        gw,
        key,
        {
            "model": "rerank",
            "query": "red fox",
            "documents": ["a blue whale", "the red fox jumps", "a red car"],
            "top_n": 2,
        },
    )
    assert r.status_code == 200, r.text
    body = decimal_json(r)
    assert [x["index"] for x in body["results"]] == [1, 2]
    assert body["meta"]["billed_units"]["search_units"] == 1
    assert body["usage"] == {"cost": QUERY_PRICE}
    assert Decimal(r.headers["x-request-cost"]) == QUERY_PRICE
    assert charges(gw, key)[r.headers["x-gateway-request-id"]].amount == -QUERY_PRICE


def test_a_rerank_over_many_documents_is_charged_every_search_unit(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    documents = [f"document number {i}" for i in range(150)]
    r = _rerank(gw, key, {"model": "rerank", "query": f"{tag()} number", "documents": documents})
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["billed_units"]["search_units"] == 2
    assert charges(gw, key)[r.headers["x-gateway-request-id"]].amount == -2 * QUERY_PRICE


def test_a_rerank_without_reported_units_is_charged_what_cohere_would_bill(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    r = _rerank(gw, key, {"model": "rerank-silent", "query": "fox", "documents": ["fox", "dog"]})
    assert r.status_code == 200, r.text
    assert charges(gw, key)[r.headers["x-gateway-request-id"]].amount == -QUERY_PRICE


def test_a_rerank_the_balance_cannot_cover_is_a_402(gw: Gateway) -> None:
    _, key = gw.new_user(Decimal("0.003"))
    documents = [f"doc {i}" for i in range(250)]  # three search units
    r = _rerank(gw, key, {"model": "rerank", "query": "doc", "documents": documents})
    assert_openai_error(r, 402, "insufficient_quota", "insufficient_balance")
    assert gw.balance(key) == Decimal("0.003")


def test_a_rerank_model_without_a_query_price_is_refused(gw: Gateway) -> None:
    _, key = gw.new_user(1)
    r = _rerank(gw, key, {"model": "rerank-unpriced", "query": "fox", "documents": ["fox"]})
    assert_openai_error(r, 400, "invalid_request_error", "model_not_priced")


def test_a_failed_rerank_costs_nothing(gw: Gateway) -> None:
    user, key = gw.new_user(1)
    r = _rerank(gw, key, {"model": "rerank-broken", "query": "fox", "documents": ["fox"]})
    assert r.status_code >= 500 and set(r.json()) == {"error"}, r.text
    wait_reserved_zero(gw, user)
    assert gw.balance(key) == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"query": "x"}, "documents"),
        ({"documents": ["a"]}, "query"),
        ({"query": "x", "documents": ["a"], "top_n": "two"}, "top_n"),
        ({"query": "x", "documents": [1, 2]}, "documents"),
        ({"query": "x", "documents": ["a"], "api_key": "sk-mine"}, "api_key"),
        ({"query": "x", "documents": ["a"], "rerank_mode": "fast"}, "rerank_mode"),
    ],
)
def test_a_bad_rerank_body_is_a_400_naming_the_parameter(
    gw: Gateway, body: dict[str, Any], param: str
) -> None:
    _, key = gw.new_user(1)
    r = _rerank(gw, key, {"model": "rerank", **body})
    assert assert_openai_error(r, 400, "invalid_request_error")["param"] == param
    assert gw.balance(key) == 1


async def test_the_books_balance(gw: Gateway) -> None:
    assert await audit(gw) == []
