"""Langfuse and Sentry end to end: the real gateway under gunicorn, sending to local recorders
that stand in for the Langfuse and Sentry servers (which cannot run here)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ADMIN_KEY, model_entry
from tests.fake_provider import FakeProvider
from tests.observability.support import Recorded, RecordingServer
from tests.support import assert_openai_error, bearer

from .conftest import Production, recorder, start_production, stop_production

OTLP_PATH = "/api/public/otel/v1/traces"
SENTRY_ENVELOPE_PATH = "/api/1/envelope/"
PROVIDER_KEY = "sk-provider-secret"  # what model_entry puts in the config
MODEL_OK = "obs-ok"
MODEL_BROKEN = "obs-broken"
MODEL_DROPS = "obs-drops"
PROMPT = "PROMPT-do-not-ship-{}"


def models(api_base: str) -> list[dict[str, Any]]:
    cap = {"max_output_tokens": 64}
    return [
        model_entry(MODEL_OK, "fake+chunks-3", api_base, **cap),
        model_entry(MODEL_BROKEN, "fake+fail-500", api_base, **cap),
        model_entry(MODEL_DROPS, "fake+chunks-6+drop-2", api_base, **cap),
    ]


@contextmanager
def production(tmp: Path, fake_provider: FakeProvider, env: dict[str, str]) -> Iterator[Production]:
    running = start_production(tmp, models=models(fake_provider.base_url), env=env)
    try:
        yield running
    finally:
        stop_production(running)


def chat(
    url: str, key: str, model: str, prompt: str, request_id: str, *, stream: bool = False
) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.post(
            url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream},
            headers={**bearer(key), "X-Request-ID": request_id},
        )


def raw(server: RecordingServer) -> bytes:
    return b"\n".join(r.body for r in server.requests)


# --- Langfuse -------------------------------------------------------------------------------


def _is_otlp_export(request: Recorded) -> bool:
    return request.method == "POST" and request.path == OTLP_PATH


def test_langfuse_receives_each_call_while_running_and_the_rest_at_shutdown(
    tmp_path: Path, fake_provider: FakeProvider
) -> None:
    with recorder() as langfuse:
        env = {
            "LANGFUSE_ENABLED": "true",
            "LANGFUSE_PUBLIC_KEY": "pk-lf-prod-test",
            "LANGFUSE_SECRET_KEY": "sk-lf-prod-test-secret",
            "LANGFUSE_HOST": langfuse.url,
        }
        with production(tmp_path, fake_provider, env) as prod:
            gw = prod.gateway
            first_user, first_key = gw.new_user()
            prompt = PROMPT.format(uuid.uuid4().hex[:8])
            r = chat(gw.url, first_key, MODEL_OK, prompt, "lf-first")
            assert r.status_code == 200, r.text
            # The SDK's batch processor exports on its own (every 5 s by default): the trace
            # shows up while the gateway keeps running.
            export = langfuse.wait_for(
                lambda q: _is_otlp_export(q) and first_user.encode() in q.body, timeout=20
            )
            assert MODEL_OK.encode() in export.body
            assert (
                export.headers["authorization"]
                == "Basic " + base64.b64encode(b"pk-lf-prod-test:sk-lf-prod-test-secret").decode()
            )

            second_user, second_key = gw.new_user()
            r = chat(gw.url, second_key, MODEL_OK, prompt, "lf-second", stream=True)
            assert r.status_code == 200 and "data: [DONE]" in r.text
            stopped = time.monotonic()
            stop_production(prod)  # SIGTERM: each worker's lifespan shuts the tracer down
            assert gw.proc.returncode == 0, gw.log_tail()
            assert time.monotonic() - stopped < 15
        # No waiting after exit: the shutdown flush had delivered it before the worker ended.
        exports = [q for q in langfuse.requests if _is_otlp_export(q)]
        assert any(second_user.encode() in q.body and MODEL_OK.encode() in q.body for q in exports)
        sent = raw(langfuse)
        for secret in (prompt, first_key, second_key, PROVIDER_KEY, ADMIN_KEY, "sk-lf-prod-test-secret"):
            assert secret.encode() not in sent, secret
        assert "langfuse tracing on" in gw.log_path.read_text()


# --- Sentry ---------------------------------------------------------------------------------


def sentry_events(server: RecordingServer) -> list[dict[str, Any]]:
    """Every error event in the envelopes the fake Sentry received."""
    found = []
    for request in server.requests:
        if request.path != SENTRY_ENVELOPE_PATH:
            continue
        lines = request.body.split(b"\n")
        # Envelope: a header line, then (item header, item payload) pairs.
        for header, payload in zip(lines[1::2], lines[2::2], strict=False):
            if header.strip() and json.loads(header).get("type") == "event":
                found.append(json.loads(payload))
    return found


def wait_events(server: RecordingServer, predicate: Any, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        matching = [e for e in sentry_events(server) if predicate(e)]
        if matching or time.monotonic() > deadline:
            return matching
        time.sleep(0.05)


def test_sentry_gets_upstream_failures_tagged_for_the_operator_without_secrets(
    tmp_path: Path, fake_provider: FakeProvider
) -> None:
    with recorder() as sentry:
        port = sentry.url.rsplit(":", 1)[1]
        env = {"SENTRY_DSN": f"http://public@127.0.0.1:{port}/1"}
        with production(tmp_path, fake_provider, env) as prod:
            gw = prod.gateway
            user_id, key = gw.new_user()
            prompt = PROMPT.format(uuid.uuid4().hex[:8])

            rid = f"sentry-{uuid.uuid4().hex[:10]}"
            r = chat(gw.url, key, MODEL_BROKEN, prompt, rid)
            assert_openai_error(r, 502, "api_error", any_code=True)
            assert r.headers["x-request-id"] == rid

            events = wait_events(sentry, lambda e: e.get("tags", {}).get("model") == MODEL_BROKEN)
            assert len(events) == 1, events
            (event,) = events
            assert event["tags"]["failure"] == "upstream"
            assert event["environment"] == "test"
            assert event["user"] == {"id": user_id}
            # The id the caller got back (and nginx logged): what an operator searches for.
            assert event["tags"]["request_id"] == rid, event["tags"]
            # ...and the ledger's id for the call, to find its billing records.
            assert len(event["tags"]["billing_id"]) == 32 and event["tags"]["billing_id"] != rid

            # A stream the provider breaks midway is reported the same way.
            stream_rid = f"sentry-stream-{uuid.uuid4().hex[:10]}"
            r = chat(gw.url, key, MODEL_DROPS, prompt, stream_rid, stream=True)
            assert r.status_code == 200 and '"error"' in r.text
            events = wait_events(sentry, lambda e: e.get("tags", {}).get("model") == MODEL_DROPS)
            assert len(events) == 1, events
            assert events[0]["tags"]["failure"] == "upstream"
            assert events[0]["tags"]["request_id"] == stream_rid, events[0]["tags"]
            stop_production(prod)
        sent = raw(sentry)
        assert sent
        for secret in (prompt, key, PROVIDER_KEY, ADMIN_KEY):
            assert secret.encode() not in sent, secret
        assert "sentry on" in gw.log_path.read_text()


# --- neither configured -----------------------------------------------------------------------


def test_without_configuration_nothing_is_sent(tmp_path: Path, fake_provider: FakeProvider) -> None:
    with recorder() as sink:
        # Keys and host are there, but LANGFUSE_ENABLED is not; no SENTRY_DSN at all.
        env = {
            "LANGFUSE_PUBLIC_KEY": "pk-lf-prod-test",
            "LANGFUSE_SECRET_KEY": "sk-lf-prod-test-secret",
            "LANGFUSE_HOST": sink.url,
        }
        with production(tmp_path, fake_provider, env) as prod:
            gw = prod.gateway
            _, key = gw.new_user()
            assert chat(gw.url, key, MODEL_OK, "hello", "off-ok").status_code == 200
            assert chat(gw.url, key, MODEL_BROKEN, "hello", "off-broken").status_code == 502
            stop_production(prod)
        assert gw.proc.returncode == 0
        assert sink.requests == []
        log = gw.log_path.read_text()
        assert "langfuse tracing on" not in log and "sentry on" not in log
