"""The OpenAI Agents SDK with its default model (Responses API) against the gateway, unchanged.

The agent is pointed at the gateway only through the SDK's own client setting; the model name
is the SDK's default, served by the fake provider. Every model call the agent makes is billed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import openai
import pytest
from agents import Agent, OpenAIProvider, RunConfig, Runner, function_tool
from agents.models import get_default_model

from tests.billing.support import audit, charges
from tests.conftest import INPUT_PRICE, OUTPUT_PRICE, Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider

DEFAULT_MODEL = get_default_model()


@pytest.fixture(scope="module", params=["fast-sqlite", "litellm-postgres"])
def gw(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_provider: FakeProvider,
    pg_database: str,
) -> Iterator[Gateway]:
    path, store = request.param.split("-")
    entries = [
        model_entry(DEFAULT_MODEL, "fake+chunks-5", fake_provider.base_url),
        model_entry("tooled", "fake+chunks-3+toolstream", fake_provider.base_url),
    ]
    if path == "litellm":
        for entry in entries:
            entry["litellm_params"]["drop_params"] = True  # served through Router.aresponses
    gateway = start_gateway(
        tmp_path_factory.mktemp(f"agents-{request.param}"),
        models=entries,
        env={"DATABASE_URL": pg_database} if store == "postgres" else {},
    )
    yield gateway
    stop_gateway(gateway)


@pytest.fixture
async def clients() -> AsyncIterator[list[openai.AsyncOpenAI]]:
    made: list[openai.AsyncOpenAI] = []
    yield made
    for client in made:
        await client.close()


def _config(gw: Gateway, key: str, made: list[openai.AsyncOpenAI]) -> RunConfig:
    """The SDK's own way to point its default provider at another base URL."""
    client = openai.AsyncOpenAI(base_url=gw.v1, api_key=key, max_retries=0, timeout=60)
    made.append(client)
    return RunConfig(model_provider=OpenAIProvider(openai_client=client), tracing_disabled=True)


def _billed(gw: Gateway, key: str) -> Decimal:
    return -sum((row.amount for row in charges(gw, key).values()), Decimal(0))


async def test_an_agent_with_the_default_model_answers_and_each_call_is_billed(
    gw: Gateway, clients: list[openai.AsyncOpenAI]
) -> None:
    _, key = gw.new_user(1)
    agent = Agent(name="helper", instructions="Be helpful.")  # no model: the SDK's default
    result = await Runner.run(agent, "say something", run_config=_config(gw, key, clients))
    assert result.final_output == "tok0 tok1 tok2 tok3 tok4 "
    usage = result.context_wrapper.usage
    assert usage.requests == 1 and usage.output_tokens == 5
    expected = usage.input_tokens * INPUT_PRICE + usage.output_tokens * OUTPUT_PRICE
    assert _billed(gw, key) == expected
    assert gw.balance(key) == 1 - expected


async def test_a_streamed_agent_run_gets_its_text_and_is_billed(
    gw: Gateway, clients: list[openai.AsyncOpenAI]
) -> None:
    _, key = gw.new_user(1)
    agent = Agent(name="streamer", instructions="Stream.")
    run = Runner.run_streamed(agent, "stream something", run_config=_config(gw, key, clients))
    deltas = [
        event.data.delta
        async for event in run.stream_events()
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta"
    ]
    assert "".join(deltas) == run.final_output == "tok0 tok1 tok2 tok3 tok4 "
    usage = run.context_wrapper.usage
    assert _billed(gw, key) == usage.input_tokens * INPUT_PRICE + usage.output_tokens * OUTPUT_PRICE


async def test_an_agent_calls_its_tool_through_the_gateway(
    gw: Gateway, clients: list[openai.AsyncOpenAI]
) -> None:
    _, key = gw.new_user(1)
    seen: list[str] = []

    @function_tool
    def lookup(text: str) -> str:
        """Look text up."""
        seen.append(text)
        return "found"

    agent = Agent(name="tooled", model="tooled", tools=[lookup], tool_use_behavior="stop_on_first_tool")
    result = await Runner.run(agent, "look it up", run_config=_config(gw, key, clients))
    assert seen == ["tok0 tok1 tok2 "] and result.final_output == "found"
    assert len(charges(gw, key)) == 1


async def test_the_books_balance(gw: Gateway) -> None:
    assert await audit(gw) == []
