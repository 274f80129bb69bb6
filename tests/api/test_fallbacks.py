"""The Router's resilience as a client sees it: fallbacks, retries, cooldowns, broken streams."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider
from tests.support import assert_log_has_no_secrets, assert_openai_error, bearer, reserved, wait_reserved_zero

# Model strings are unique to this module: failfirst counters live in the shared fake provider.
PRIMARY = "fb-primary+fail-500"
BACKUP = "fb-backup+chunks-3"
SMALL = "fb-small+ctx-5"
BIG = "fb-big+chunks-2"
FLAKY = "fb-flaky+failfirst-1"
POOL_BAD = "fb-pool-bad+fail-500"
POOL_GOOD = "fb-pool-good+chunks-4"
BUSY = "fb-busy+fail-429"
DROPPING = "fb-dropping+chunks-10+drop-3"
STALLING = "fb-stalling+chunks-5+chunkdelay-5000"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    base = fake_provider.base_url
    gateway = start_gateway(
        tmp_path_factory.mktemp("fallbacks"),
        models=[
            model_entry("primary", PRIMARY, base),
            model_entry("backup", BACKUP, base),
            model_entry("small", SMALL, base),
            model_entry("big", BIG, base),
            model_entry("flaky", FLAKY, base),
            model_entry("pool", POOL_BAD, base),
            model_entry("pool", POOL_GOOD, base),
            model_entry("busy", BUSY, base),
            model_entry("dropping", DROPPING, base),
            _with_params(model_entry("stalling", STALLING, base), stream_timeout=1),
        ],
        router_settings={
            "num_retries": 1,
            "fallbacks": [{"primary": ["backup"]}],
            "context_window_fallbacks": [{"small": ["big"]}],
            "allowed_fails": 1,
            "cooldown_time": 30,
        },
    )
    yield gateway
    stop_gateway(gateway)


def _with_params(entry: dict[str, Any], **params: Any) -> dict[str, Any]:
    entry["litellm_params"].update(params)
    return entry


def _sent(fake_provider: FakeProvider) -> list[str]:
    """The model strings the provider received, in order."""
    return [r["model"] for r in fake_provider.requests() if r["path"].endswith("/chat/completions")]


def _msg(text: str = "hello there") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_fallback_answers_when_the_primary_fails(gw: Gateway, fake_provider: FakeProvider) -> None:
    user_id, key = gw.new_user(balance=1)
    fake_provider.clear()
    resp = gw.client(key).chat.completions.create(model="primary", messages=_msg())
    assert resp.choices[0].message.content == "tok0 tok1 tok2 "
    # The first attempt and the one retry num_retries allows, then the fallback: the Router's
    # policy, with the same number of provider calls, though the fast path makes the first attempt.
    assert _sent(fake_provider) == [PRIMARY, PRIMARY, BACKUP]
    # The caller pays for the answer it got (the backup's 3 tokens), once.
    rows = httpx.get(gw.url + "/billing/transactions", headers=bearer(key), timeout=30).json()["transactions"]
    charges = [t for t in rows if t["amount"] < 0]
    assert len(charges) == 1 and charges[0]["completion_tokens"] == 3
    assert reserved(gw, user_id) == 0


def test_fallback_works_for_streams(gw: Gateway, fake_provider: FakeProvider) -> None:
    _, key = gw.new_user(balance=1)
    fake_provider.clear()
    chunks = list(gw.client(key).chat.completions.create(model="primary", messages=_msg(), stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 "
    assert _sent(fake_provider)[-1] == BACKUP


def test_context_window_fallback_takes_a_long_prompt(gw: Gateway, fake_provider: FakeProvider) -> None:
    _, key = gw.new_user(balance=1)
    client = gw.client(key)
    fake_provider.clear()
    short = client.chat.completions.create(model="small", messages=_msg("hi"))
    assert short.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "  # the small model itself
    assert _sent(fake_provider) == [SMALL]
    fake_provider.clear()
    long_prompt = " ".join(f"word{i}" for i in range(40))
    resp = client.chat.completions.create(model="small", messages=_msg(long_prompt))
    assert resp.choices[0].message.content == "tok0 tok1 "  # answered by the big model
    sent = _sent(fake_provider)
    assert sent[0] == SMALL and sent[-1] == BIG


def test_retry_hides_a_transient_failure(gw: Gateway, fake_provider: FakeProvider) -> None:
    _, key = gw.new_user(balance=1)
    fake_provider.reset()  # failfirst counters start again
    resp = gw.client(key).chat.completions.create(model="flaky", messages=_msg())
    assert resp.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert _sent(fake_provider) == [FLAKY, FLAKY]


def test_exhausted_retries_on_rate_limits_are_503(gw: Gateway, fake_provider: FakeProvider) -> None:
    user_id, key = gw.new_user(balance=1)
    before = gw.balance(key)
    fake_provider.clear()
    r = httpx.post(
        gw.v1 + "/chat/completions",
        json={"model": "busy", "messages": _msg()},
        headers=bearer(key),
        timeout=60,
    )
    assert_openai_error(r, 503, "api_error", "upstream_unavailable")
    assert int(r.headers["retry-after"]) > 0
    assert 1 <= len(_sent(fake_provider)) <= 2  # asked, and retried unless cooled down at once
    assert gw.balance(key) == before and reserved(gw, user_id) == 0


def test_a_failing_deployment_is_cooled_down(gw: Gateway, fake_provider: FakeProvider) -> None:
    _, key = gw.new_user(balance=1)
    client = gw.client(key)
    fake_provider.clear()
    # Call until the bad deployment has failed more than allowed_fails (1). Routing is random
    # and a retry may land on the bad deployment again, so a warm-up call may fail.
    for _ in range(40):
        r = httpx.post(
            gw.v1 + "/chat/completions",
            json={"model": "pool", "messages": _msg()},
            headers=bearer(key),
            timeout=60,
        )
        assert r.status_code in (200, 502), r.text
        if _sent(fake_provider).count(POOL_BAD) >= 2:
            break
    assert _sent(fake_provider).count(POOL_BAD) >= 2, _sent(fake_provider)
    fake_provider.clear()
    for _ in range(10):
        resp = client.chat.completions.create(model="pool", messages=_msg())
        assert resp.choices[0].message.content == "tok0 tok1 tok2 tok3 "
    sent = _sent(fake_provider)
    assert POOL_BAD not in sent and sent.count(POOL_GOOD) == 10
    # Operators see the same thing.
    breakers = httpx.get(gw.url + "/health/circuit-breakers", timeout=30).json()["deployments"]
    states = {d["deployment_id"]: d["state"] for d in breakers if d["model_name"] == "pool"}
    assert sorted(states.values()) == ["closed", "open"], breakers


def _sse_events(body: str) -> list[str]:
    return [e.removeprefix("data: ") for e in body.split("\n\n") if e.strip()]


def test_stream_broken_midway_ends_with_an_error_event(gw: Gateway) -> None:
    user_id, key = gw.new_user(balance=1)
    before = gw.balance(key)
    with httpx.stream(
        "POST",
        gw.v1 + "/chat/completions",
        json={"model": "dropping", "messages": _msg(), "stream": True},
        headers=bearer(key),
        timeout=60,
    ) as r:
        assert r.status_code == 200  # the stream had started when the provider went away
        events = _sse_events(r.read().decode())
    assert "[DONE]" not in events
    last: dict[str, Any] = json.loads(events[-1])
    assert set(last) == {"error"}
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert last["error"]["type"] == "api_error"
    assert "Traceback" not in events[-1] and "sk-provider-secret" not in events[-1]
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(json.loads, events[:-1])
        if c.get("choices")
    )
    assert text == "tok0 tok1 tok2 "  # what arrived before the break was passed on
    wait_reserved_zero(gw, user_id)
    assert gw.balance(key) == before


def test_stream_broken_midway_raises_in_the_sdk(gw: Gateway) -> None:
    user_id, key = gw.new_user(balance=1)
    before = gw.balance(key)
    received = ""
    with pytest.raises(openai.APIError) as info:
        for chunk in gw.client(key).chat.completions.create(model="dropping", messages=_msg(), stream=True):
            if chunk.choices:
                received += chunk.choices[0].delta.content or ""
    assert received == "tok0 tok1 tok2 "
    assert "sk-" not in str(info.value)
    wait_reserved_zero(gw, user_id)
    assert gw.balance(key) == before


def _stalled_stream_error(gw: Gateway) -> tuple[str, str, dict[str, Any]]:
    user_id, key = gw.new_user(balance=1)
    with httpx.stream(
        "POST",
        gw.v1 + "/chat/completions",
        json={"model": "stalling", "messages": _msg(), "stream": True},
        headers=bearer(key),
        timeout=60,
    ) as r:
        assert r.status_code == 200
        events = _sse_events(r.read().decode())
    last: dict[str, Any] = json.loads(events[-1])
    return user_id, key, last


def test_stream_that_stalls_ends_with_an_error_event_and_costs_nothing(gw: Gateway) -> None:
    # The provider sends its first chunk, then nothing for longer than stream_timeout.
    user_id, key, last = _stalled_stream_error(gw)
    assert set(last) == {"error"} and last["error"]["type"] == "api_error"
    wait_reserved_zero(gw, user_id)
    assert gw.balance(key) == 1


def test_stream_that_stalls_reports_a_timeout(gw: Gateway) -> None:
    _, _, last = _stalled_stream_error(gw)
    assert last["error"]["code"] == "upstream_timeout"


def test_no_provider_key_in_the_log_after_all_those_failures(gw: Gateway) -> None:
    assert_log_has_no_secrets(gw, [])
