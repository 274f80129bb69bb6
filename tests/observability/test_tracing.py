from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from app.config import Settings
from app.observability.tracing import LLMTracer

from .support import Recorded, RecordingServer

OTEL_PATH = "/api/public/otel/v1/traces"

CALL = """
import time
from decimal import Decimal
from app.config import Settings
from app.observability.tracing import LLMTracer

tracer = LLMTracer.from_settings(Settings(
    LANGFUSE_ENABLED=True, LANGFUSE_PUBLIC_KEY="pk-lf-test", LANGFUSE_SECRET_KEY="sk-lf-test",
    LANGFUSE_HOST=HOST, ENVIRONMENT="test"))
assert tracer.enabled
start = 1_700_000_000.0
tracer.trace_call(
    request_id="req-777", user_id="user-42", model="gpt-4o-mini",
    provider_model="openai/gpt-4o-mini-2024-07-18", prompt_tokens=12, completion_tokens=34,
    cost=Decimal("0.000123"), currency="USD", start=start, end=start + 1.5, ttft=0.25,
    status="success", stream=True)
tracer.trace_call(
    request_id="req-778", user_id="user-42", model="gpt-4o-mini", provider_model=None,
    prompt_tokens=12, completion_tokens=0, cost=None, currency="USD", start=start,
    end=start + 3.0, ttft=None, status="error", stream=False,
    error="all providers failed: 401 invalid key sk-abcdef123456")
now = time.perf_counter()  # the clock the gateway's handlers time calls with
tracer.trace_call(
    request_id="req-779", user_id="user-42", model="gpt-4o-mini", provider_model=None,
    prompt_tokens=1, completion_tokens=1, cost=None, currency="USD", start=now - 2.0, end=now,
    ttft=None, status="success", stream=False)
tracer.shutdown()
"""


def attribute(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    assert kind is not None
    if kind == "array_value":
        return [attribute(v) for v in value.array_value.values]
    return getattr(value, kind)


def spans(requests: list[Recorded]) -> dict[str, dict[str, Any]]:
    """Spans posted to the OTLP endpoint, by request id, as plain dicts."""
    found: dict[str, dict[str, Any]] = {}
    for request in requests:
        export = ExportTraceServiceRequest()
        export.ParseFromString(request.body)
        for resource_spans in export.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: attribute(a.value) for a in span.attributes}
                    found[attributes["langfuse.observation.metadata.request_id"]] = {
                        "name": span.name,
                        "scope": scope_spans.scope.name,
                        "seconds": (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9,
                        "start": span.start_time_unix_nano / 1e9,
                        "attributes": attributes,
                    }
    return found


def test_tracer_is_off_unless_enabled_with_both_keys() -> None:
    for settings in (
        Settings(LANGFUSE_ENABLED=False, LANGFUSE_PUBLIC_KEY="pk", LANGFUSE_SECRET_KEY="sk"),
        Settings(LANGFUSE_ENABLED=True, LANGFUSE_PUBLIC_KEY="pk", LANGFUSE_SECRET_KEY=""),
    ):
        tracer = LLMTracer.from_settings(settings)
        assert not tracer.enabled
        tracer.trace_call(
            request_id="r",
            user_id="u",
            model="m",
            provider_model=None,
            prompt_tokens=1,
            completion_tokens=1,
            cost=Decimal("1"),
            currency="USD",
            start=0.0,
            end=1.0,
            ttft=None,
            status="success",
            stream=False,
        )
        tracer.shutdown()


def test_calls_arrive_at_langfuse_otel_endpoint(
    recording_server: RecordingServer, run_python: Callable[..., str]
) -> None:
    began = time.time()
    run_python(f"HOST = {recording_server.url + '/'!r}\n{CALL}")

    assert {r.path for r in recording_server.requests} == {OTEL_PATH}
    request = recording_server.requests[0]
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"pk-lf-test:sk-lf-test").decode()
    assert b"gpt-4o-mini" in request.body
    found = spans(recording_server.requests)

    ok = found["req-777"]
    assert ok["name"] == "chat.completions"
    assert ok["scope"] == "langfuse-sdk"
    assert ok["start"] == 1_700_000_000.0
    assert ok["seconds"] == 1.5
    attrs = ok["attributes"]
    assert attrs["langfuse.observation.type"] == "generation"
    assert attrs["langfuse.observation.model.name"] == "gpt-4o-mini"
    assert attrs["user.id"] == "user-42"
    assert attrs["langfuse.trace.name"] == "chat.completions"
    assert attrs["langfuse.trace.tags"] == ["gpt-4o-mini"]
    assert attrs["langfuse.environment"] == "test"
    assert json.loads(attrs["langfuse.observation.usage_details"]) == {
        "input": 12,
        "output": 34,
        "total": 46,
    }
    assert json.loads(attrs["langfuse.observation.cost_details"]) == {"total": 0.000123}
    assert json.loads(attrs["langfuse.observation.completion_start_time"]) == ("2023-11-14T22:13:20.250000Z")
    assert attrs["langfuse.observation.metadata.provider_model"] == "openai/gpt-4o-mini-2024-07-18"
    assert attrs["langfuse.observation.metadata.stream"] is True
    # No prompt or completion text is sent.
    content_keys = {
        f"langfuse.{level}.{io}" for level in ("trace", "observation") for io in ("input", "output")
    }
    assert content_keys.isdisjoint(attrs)

    failed = found["req-778"]["attributes"]
    assert failed["langfuse.observation.level"] == "ERROR"
    assert failed["langfuse.observation.status_message"] == "all providers failed: 401 invalid key sk-***"
    assert "langfuse.observation.cost_details" not in failed
    assert found["req-778"]["seconds"] == 3.0

    monotonic = found["req-779"]
    assert abs(monotonic["seconds"] - 2.0) < 1e-3
    assert abs(monotonic["start"] - (began - 2.0)) < 30


PARITY = """
import json
from datetime import datetime, timezone
from decimal import Decimal
from langfuse import Langfuse, propagate_attributes
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from app.observability.tracing import LANGFUSE_SCOPE, LLMTracer

exporter = InMemorySpanExporter()
provider = TracerProvider()
client = Langfuse(public_key="pk-parity", secret_key="sk", base_url="http://127.0.0.1:9",
                  environment="test", tracer_provider=provider, span_exporter=exporter)
ours = LLMTracer(client, provider.get_tracer(LANGFUSE_SCOPE, attributes={"public_key": "pk-parity"}),
                 environment="test")
start = 1_700_000_000.0
ours.trace_call(request_id="req-1", user_id="user-42", model="gpt-4o", provider_model="openai/gpt-4o",
                prompt_tokens=12, completion_tokens=34, cost=Decimal("0.5"), currency="USD",
                start=start, end=start + 2, ttft=0.5, status="error", stream=True, error="boom")
# The same generation through the SDK's own public API.
with propagate_attributes(user_id="user-42", tags=["gpt-4o"], trace_name="chat.completions",
                          metadata={"request_id": "req-1"}):
    client.start_observation(
        name="chat.completions", as_type="generation", model="gpt-4o",
        usage_details={"input": 12, "output": 34, "total": 46}, cost_details={"total": 0.5},
        completion_start_time=datetime.fromtimestamp(start + 0.5, tz=timezone.utc),
        metadata={"request_id": "req-1", "provider_model": "openai/gpt-4o", "status": "error",
                  "stream": True, "currency": "USD", "cost": "0.5"},
        level="ERROR", status_message="boom",
    ).end()
# Never raises, whatever it is given.
ours.trace_call(request_id="req-2", user_id="u", model="m", provider_model=None, prompt_tokens=1,
                completion_tokens=1, cost=None, currency="USD", start=float("nan"), end=0.0,
                ttft=None, status="success", stream=False)
client.flush()
mine, sdk = [dict(span.attributes) for span in exporter.get_finished_spans()]
print(json.dumps({"ours": mine, "sdk": sdk}))
ours.shutdown()
"""

JSON_VALUED = {
    "langfuse.observation.usage_details",
    "langfuse.observation.cost_details",
    "langfuse.observation.completion_start_time",
}


def test_attributes_match_what_the_sdk_would_send(run_python: Callable[..., str]) -> None:
    out = json.loads(run_python(PARITY))

    def normalised(attrs: dict[str, Any]) -> dict[str, Any]:
        return {k: json.loads(v) if k in JSON_VALUED else v for k, v in attrs.items()}

    assert normalised(out["ours"]) == normalised(out["sdk"])


SLOW_LANGFUSE = """
import os, time
from decimal import Decimal
from app.config import Settings
from app.observability.logging import configure_logging
from app.observability.tracing import LLMTracer

configure_logging("INFO")
tracer = LLMTracer.from_settings(Settings(
    LANGFUSE_ENABLED=True, LANGFUSE_PUBLIC_KEY="pk-slow", LANGFUSE_SECRET_KEY="sk-slow",
    LANGFUSE_HOST=HOST))

def call(i):
    tracer.trace_call(request_id=f"r{i}", user_id="u", model="m", provider_model=None,
                      prompt_tokens=1, completion_tokens=1, cost=None, currency="USD",
                      start=time.time() - 1, end=time.time(), ttft=None, status="success",
                      stream=False)

for i in range(10):  # a full batch: the exporter thread posts it and stalls
    call(i)
time.sleep(0.5)
worst = 0.0
for i in range(200):  # the queue (20 spans) overflows: most of these are dropped
    began = time.perf_counter()
    call(i)
    worst = max(worst, time.perf_counter() - began)
print("WORST", worst, flush=True)
os._exit(0)  # skip the exit-time flush into the stalled endpoint
"""


def test_recording_never_waits_for_langfuse(
    recording_server: RecordingServer, run_python: Callable[..., str]
) -> None:
    recording_server.delay_s = 3.0  # Langfuse stalls on every export
    began = time.monotonic()
    out = run_python(
        f"HOST = {recording_server.url!r}\n{SLOW_LANGFUSE}",
        LANGFUSE_FLUSH_AT="10",
        OTEL_BSP_MAX_QUEUE_SIZE="20",
    )
    assert [r.path for r in recording_server.requests] == [OTEL_PATH]  # still stalled
    worst = float(out.splitlines()[-1].split()[1])
    assert worst < 0.05
    assert time.monotonic() - began < 15
    # One warning about the dropped spans, not one per span (the SDK dedupes its own).
    assert sum("Queue full" in line for line in out.splitlines()) == 1
