from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from app.config import Settings
from app.observability.sentry import capture_upstream_failure, init_sentry

from .support import Recorded, RecordingServer

SECRET_KEY = "sk-secret1234567890abcdef"
BEARER = "bearer-token-0123456789"
PROMPT = "PROMPT-TEXT-please-do-not-leak"

UPSTREAM_FAILURE = f"""
import sentry_sdk
from app.config import Settings
from app.observability.sentry import capture_upstream_failure, init_sentry

assert init_sentry(Settings(SENTRY_DSN=DSN, ENVIRONMENT="test"))

def call_provider(messages):
    prompt = messages[0]["content"]  # a local the event must not carry
    raise RuntimeError("provider said: invalid key {SECRET_KEY} (Authorization: Bearer {BEARER})")

try:
    call_provider([{{"role": "user", "content": "{PROMPT}"}}])
except RuntimeError as exc:
    capture_upstream_failure(exc, request_id="req-abc-123", user_id="user-42", model="gpt-4o")
sentry_sdk.flush(timeout=10)
"""

UNHANDLED_IN_APP = f"""
import asyncio
import httpx
import sentry_sdk
from fastapi import FastAPI
from app.config import Settings
from app.observability.logging import request_id_var
from app.observability.sentry import init_sentry

assert init_sentry(Settings(SENTRY_DSN=DSN, ENVIRONMENT="test", SENTRY_SEND_PROMPTS=SEND))
app = FastAPI()

@app.post("/v1/chat/completions")
async def chat(body: dict) -> dict:
    request_id_var.set("req-from-middleware")  # what the gateway's middleware does
    raise ValueError("database at postgresql://gw:db-pass-991@db:5432/gw is gone")

async def main():
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.post(
            "/v1/chat/completions?api_key=query-key-555",
            headers={{"Authorization": "Bearer {BEARER}", "X-Api-Key": "{SECRET_KEY}",
                      "Cookie": "session=cookie-value-333"}},
            json={{"model": "gpt-4o", "messages": [{{"role": "user", "content": "{PROMPT}"}}]}},
        )
    assert response.status_code == 500

asyncio.run(main())
sentry_sdk.flush(timeout=10)
"""


def dsn(server: RecordingServer) -> str:
    return server.url.replace("http://", "http://publickey@") + "/1"


def is_envelope(request: Recorded) -> bool:
    return request.path == "/api/1/envelope/"


def events(server: RecordingServer) -> list[dict[str, Any]]:
    """Every error event in the envelopes the fake Sentry received."""
    found = []
    for request in server.requests:
        if not is_envelope(request):
            continue
        lines = request.body.split(b"\n")
        # Envelope: a header line, then (item header, item payload) pairs.
        for header, payload in zip(lines[1::2], lines[2::2], strict=False):
            if json.loads(header).get("type") == "event":
                found.append(json.loads(payload))
    return found


def run_with_dsn(run_python: Callable[..., str], code: str, server: RecordingServer) -> None:
    run_python(f"DSN = {dsn(server)!r}\nSEND = False\n{code}")


def test_without_dsn_sentry_stays_off() -> None:
    assert init_sentry(Settings(SENTRY_DSN="")) is False
    # Safe to call when Sentry is off: nothing to report to, nothing raised.
    capture_upstream_failure(RuntimeError("x"), request_id=None, user_id=None, model="m")


def test_upstream_failure_is_reported_with_context_and_without_secrets(
    recording_server: RecordingServer, run_python: Callable[..., str]
) -> None:
    run_with_dsn(run_python, UPSTREAM_FAILURE, recording_server)

    recording_server.wait_for(is_envelope)
    (event,) = events(recording_server)
    assert event["tags"]["request_id"] == "req-abc-123"
    assert event["tags"]["model"] == "gpt-4o"
    assert event["user"] == {"id": "user-42"}
    assert event["environment"] == "test"
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert exception["value"] == "provider said: invalid key sk-*** (Authorization: Bearer ***)"
    raw = b"".join(r.body for r in recording_server.requests)
    for leaked in (SECRET_KEY, BEARER, PROMPT):
        assert leaked.encode() not in raw


def test_request_credentials_and_prompt_are_kept_out_of_events(
    recording_server: RecordingServer, run_python: Callable[..., str]
) -> None:
    run_with_dsn(run_python, UNHANDLED_IN_APP, recording_server)

    recording_server.wait_for(is_envelope)
    (event,) = events(recording_server)
    assert event["exception"]["values"][0]["value"] == ("database at postgresql://gw:***@db:5432/gw is gone")
    assert event["tags"]["request_id"] == "req-from-middleware"
    request = event["request"]
    assert request["method"] == "POST"
    assert {name.lower() for name in request["headers"]}.isdisjoint({"authorization", "x-api-key", "cookie"})
    assert "data" not in request
    raw = b"".join(r.body for r in recording_server.requests)
    for leaked in (SECRET_KEY, BEARER, PROMPT, "db-pass-991", "query-key-555", "cookie-value"):
        assert leaked.encode() not in raw


def test_prompts_are_sent_only_when_asked(
    recording_server: RecordingServer, run_python: Callable[..., str]
) -> None:
    run_python(f"DSN = {dsn(recording_server)!r}\nSEND = True\n{UNHANDLED_IN_APP}")

    recording_server.wait_for(is_envelope)
    (event,) = events(recording_server)
    assert PROMPT in json.dumps(event["request"]["data"])
    raw = b"".join(r.body for r in recording_server.requests)
    for leaked in (SECRET_KEY, BEARER, "query-key-555"):
        assert leaked.encode() not in raw
