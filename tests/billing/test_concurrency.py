"""Many calls at once on one balance, end to end: never overdrawn, every cent accounted for.

Runs against the embedded store and against real Postgres, through the official openai SDK.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.billing.support import (
    account,
    audit,
    charges,
    expected_cost,
    ledger,
    provider_prompt_tokens,
    provider_saw,
    tag,
)
from tests.conftest import ROOT, Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider
from tests.store.conftest import SERVICE_KEY, create_database, drop_database
from tests.store.postgrest_shim import PostgrestShim

CALLS = 60
COMPLETION = 50  # the fake generates 50 tokens; every call asks for max_tokens=50
MODES = ("json", "stream", "stream+usage")
# About 1/3 of the 60 calls fit: each costs 0.000102..0.000106 and holds a little more.
START = Decimal("0.0021")


@pytest.fixture(scope="module")
def supabase_rest() -> Iterator[str]:
    """Supabase's REST API as the PostgREST shim on a fresh database; its URL."""
    name = f"gw_conc_supa_{uuid.uuid4().hex[:8]}"
    shim = PostgrestShim(asyncio.run(create_database(name)), SERVICE_KEY).start()
    try:
        yield shim.url
    finally:
        shim.stop()
        asyncio.run(drop_database(name))


@pytest.fixture(
    scope="module",
    params=["sqlite", "postgres", "postgres-litellm-path", "sqlite-2-gunicorn-workers", "supabase-rest"],
)
def gw(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_provider: FakeProvider,
    pg_database: str,
) -> Iterator[Gateway]:
    env: dict[str, str] = {}
    if request.param.startswith("postgres"):
        env = {"DATABASE_URL": pg_database, "DATABASE_POOL_SIZE": "5"}
    elif request.param == "supabase-rest":
        env = {
            "SUPABASE_URL": request.getfixturevalue("supabase_rest"),
            "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
        }
    command = None
    if request.param.endswith("gunicorn-workers"):
        # Two processes on one embedded store: SQLite's write lock must serialise them.
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(ROOT / "deployments" / "gunicorn.conf.py"),
            "app.main:app",
        ]
        env["WEB_CONCURRENCY"] = "2"
    # slow-200: the provider answers after 200 ms, so the calls really are in flight together.
    entry = model_entry("conc", f"fake+chunks-{COMPLETION}+slow-200", fake_provider.base_url)
    if request.param.endswith("litellm-path"):
        # A parameter only LiteLLM's own call path understands keeps the model off the fast path.
        entry["litellm_params"]["drop_params"] = True
    gateway = start_gateway(
        tmp_path_factory.mktemp(f"concurrency-{request.param}"), models=[entry], env=env, command=command
    )
    yield gateway
    stop_gateway(gateway)


@dataclass
class Outcome:
    index: int
    mode: str
    prompt_tokens: int  # as the provider counts them
    status: int
    request_id: str | None
    cost_header: str | None = None
    usage: Any = None
    text: str = ""
    error: Any = None


async def _call(client: openai.AsyncOpenAI, index: int, mode: str, messages: list[dict[str, Any]]) -> Outcome:
    out = Outcome(index, mode, provider_prompt_tokens(messages), 0, None)
    kwargs: dict[str, Any] = {"model": "conc", "messages": messages, "max_tokens": COMPLETION}
    if mode != "json":
        kwargs["stream"] = True
    if mode == "stream+usage":
        kwargs["stream_options"] = {"include_usage": True}
    try:
        raw = await client.chat.completions.with_raw_response.create(**kwargs)
    except openai.APIStatusError as exc:
        out.status, out.request_id, out.error = (
            exc.status_code,
            exc.response.headers.get("x-request-id"),
            exc.body,
        )
        return out
    out.status, out.request_id = raw.http_response.status_code, raw.headers.get("x-request-id")
    out.cost_header = raw.headers.get("x-request-cost")
    if mode == "json":
        completion = raw.parse()
        out.usage, out.text = completion.usage, completion.choices[0].message.content or ""
        return out
    async for chunk in raw.parse():
        if chunk.usage is not None:
            assert out.usage is None and chunk.choices == []
            out.usage = chunk.usage
        for choice in chunk.choices:
            out.text += choice.delta.content or ""
    return out


async def test_60_concurrent_calls_on_a_balance_that_covers_a_third(
    gw: Gateway, fake_provider: FakeProvider
) -> None:
    user_id, key = gw.new_user(START)
    marker = tag()
    client = gw.async_client(key)
    jobs = []
    for i in range(CALLS):
        # Prompts of 2..6 provider tokens, so the calls do not all cost the same.
        messages = [{"role": "user", "content": " ".join([marker] + ["word"] * (i % 5))}]
        jobs.append(_call(client, i, MODES[i % 3], messages))
    try:
        outcomes = await asyncio.gather(*jobs)
    finally:
        await client.close()

    statuses = sorted({o.status for o in outcomes})
    assert statuses == [200, 402], [(o.status, o.error) for o in outcomes if o.status not in (200, 402)]
    ok = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 402]
    for o in refused:
        assert o.error["code"] == "insufficient_balance" and o.error["type"] == "insufficient_quota", o.error
    # Streams were in the mix on both sides.
    assert any(o.mode != "json" for o in ok) and any(o.mode != "json" for o in refused)
    cheapest = expected_cost(2, COMPLETION)
    assert 1 <= len(ok) <= START // cheapest, len(ok)

    expected = {o.request_id: expected_cost(o.prompt_tokens, COMPLETION) for o in ok}
    assert len(expected) == len(ok) and None not in expected
    for o in ok:
        assert o.text == "".join(f"tok{k} " for k in range(COMPLETION))
        if o.mode == "stream":
            assert o.usage is None  # not asked for, not sent
        else:
            assert (o.usage.prompt_tokens, o.usage.completion_tokens) == (o.prompt_tokens, COMPLETION)
        if o.mode == "json":
            assert Decimal(o.cost_header) == expected[o.request_id]

    # Refused calls never reached the provider; every accepted one did, once.
    assert len(provider_saw(fake_provider, marker)) == len(ok)

    charged = charges(gw, key)
    assert set(charged) == set(expected)
    for request_id, row in charged.items():
        assert -row.amount == expected[request_id]
        assert (row.completion_tokens, row.prompt_tokens) == (COMPLETION, row.prompt_tokens)
    headers = sum(Decimal(o.cost_header) for o in ok if o.cost_header is not None)
    assert headers == sum(expected[o.request_id] for o in ok if o.mode == "json")

    acct = account(gw, user_id)
    assert acct["reserved"] == 0
    assert acct["balance"] >= 0
    assert acct["balance"] == START - sum(expected.values())
    assert acct["balance"] == sum(row.amount for row in ledger(gw, key))
    assert gw.balance(key) == acct["balance"]
    assert await audit(gw) == []


async def test_a_second_wave_after_a_top_up_is_accounted_the_same(gw: Gateway) -> None:
    """Top up mid-way: credits and charges interleave, and the ledger still adds up."""
    user_id, key = gw.new_user("0.0005")
    client = gw.async_client(key)
    messages = [{"role": "user", "content": f"{tag()} a b"}]  # 4 provider tokens
    try:
        first = await asyncio.gather(*(_call(client, i, MODES[i % 3], messages) for i in range(12)))
        r = gw.admin(
            "POST", f"/admin/users/{user_id}/credits", {"amount": "0.001", "idempotency_key": user_id}
        )
        assert r.status_code == 200, r.text
        second = await asyncio.gather(*(_call(client, i, MODES[i % 3], messages) for i in range(12)))
    finally:
        await client.close()
    ok = [o for o in [*first, *second] if o.status == 200]
    assert {o.status for o in [*first, *second]} <= {200, 402}
    assert sum(o.status == 200 for o in second) > 0
    each = expected_cost(4, COMPLETION)
    acct = account(gw, user_id)
    assert acct["reserved"] == 0
    assert acct["balance"] == Decimal("0.0015") - len(ok) * each >= 0
    assert len(charges(gw, key)) == len(ok)
    assert acct["balance"] == sum(row.amount for row in ledger(gw, key))
