"""Langfuse tracing of LLM calls: one generation per call with model, usage, cost and latency.

The langfuse v4 SDK is OpenTelemetry underneath: finished spans go into a
BatchSpanProcessor queue (a deque append) and a background thread posts them, OTLP over
HTTP, to `{LANGFUSE_HOST}/api/public/otel/v1/traces`. Recording a call therefore never
waits on the network; `shutdown()` is the one blocking call (it exports what is queued).

The SDK's client, span processor, exporter and attribute names are used as they are. Its
per-observation wrapper (LangfuseGeneration) is not: it runs media detection and a generic
serializer over every field and costs ~240 us of event-loop CPU per call, where setting the
same attributes directly costs ~70 us. tests/observability/test_tracing.py checks that the
attributes stay identical to what the wrapper would produce.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import orjson
from langfuse import Langfuse
from langfuse import LangfuseOtelSpanAttributes as Attr
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from opentelemetry.util.types import AttributeValue

from app.observability.scrub import scrub

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

GENERATION_NAME = "chat.completions"
# The instrumentation scope the SDK's own spans carry. Langfuse's span processor exports
# spans of this scope only when they also name this project's public key.
LANGFUSE_SCOPE = "langfuse-sdk"
# Langfuse prices in USD; a cost in another currency goes to metadata only.
LANGFUSE_CURRENCY = "USD"

_OBSERVATION_METADATA = Attr.OBSERVATION_METADATA + "."


# No wall-clock reading is below this (2001-09-09); monotonic readings (seconds since
# boot) always are.
_EPOCH_FLOOR = 1_000_000_000.0


def _wall_clock_offset(start: float) -> float:
    """0 for time.time() readings; what moves perf_counter()/monotonic() ones to wall time."""
    if start >= _EPOCH_FLOOR:
        return 0.0
    # perf_counter and monotonic share CLOCK_MONOTONIC on Linux; one offset maps both.
    return time.time() - time.perf_counter()


def _ns(epoch_seconds: float) -> int:
    return int(epoch_seconds * 1_000_000_000)


def _json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_UTC_Z).decode()


def _generation_attributes(
    *,
    environment: str | None,
    request_id: str,
    user_id: str,
    model: str,
    provider_model: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    cost: Decimal | None,
    currency: str,
    completion_start: float | None,
    status: str,
    stream: bool,
    error: str | None,
) -> dict[str, AttributeValue]:
    """The span attributes LangfuseGeneration(...) would set, plus the trace's own."""
    attributes: dict[str, AttributeValue] = {
        Attr.TRACE_NAME: GENERATION_NAME,
        Attr.TRACE_USER_ID: user_id,
        Attr.TRACE_TAGS: [model],
        f"{Attr.TRACE_METADATA}.request_id": request_id,
        Attr.OBSERVATION_TYPE: "generation",
        Attr.OBSERVATION_MODEL: model,
        Attr.OBSERVATION_USAGE_DETAILS: _json(
            {
                "input": prompt_tokens,
                "output": completion_tokens,
                "total": prompt_tokens + completion_tokens,
            }
        ),
        _OBSERVATION_METADATA + "request_id": request_id,
        _OBSERVATION_METADATA + "status": status,
        _OBSERVATION_METADATA + "stream": stream,
        _OBSERVATION_METADATA + "currency": currency,
    }
    if environment:
        attributes[Attr.ENVIRONMENT] = environment
    if provider_model:
        attributes[_OBSERVATION_METADATA + "provider_model"] = provider_model
    if cost is not None:
        attributes[_OBSERVATION_METADATA + "cost"] = str(cost)
        if currency == LANGFUSE_CURRENCY:
            attributes[Attr.OBSERVATION_COST_DETAILS] = _json({"total": float(cost)})
    if completion_start is not None:
        attributes[Attr.OBSERVATION_COMPLETION_START_TIME] = _json(
            datetime.fromtimestamp(completion_start, tz=UTC)
        )
    if error:
        attributes[Attr.OBSERVATION_LEVEL] = "ERROR"
        attributes[Attr.OBSERVATION_STATUS_MESSAGE] = scrub(error)
    return attributes


class LLMTracer:
    """Sends one Langfuse generation per LLM call; a disabled tracer does nothing."""

    def __init__(
        self,
        client: Langfuse | None = None,
        tracer: Tracer | None = None,
        *,
        environment: str | None = None,
    ) -> None:
        self._client = client
        self._tracer = tracer
        self._environment = environment

    @property
    def enabled(self) -> bool:
        """True when calls are being sent to Langfuse."""
        return self._client is not None and self._tracer is not None

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMTracer:
        """Build the tracer; disabled unless LANGFUSE_ENABLED and both keys are set."""
        if not (settings.LANGFUSE_ENABLED and settings.LANGFUSE_PUBLIC_KEY and settings.LANGFUSE_SECRET_KEY):
            return cls()
        public_key = settings.LANGFUSE_PUBLIC_KEY
        # A provider of our own rather than the process-global one: only the gateway's
        # generations go to Langfuse, not every OpenTelemetry span some library emits.
        provider = TracerProvider()
        client = Langfuse(
            public_key=public_key,
            secret_key=settings.LANGFUSE_SECRET_KEY,
            base_url=settings.LANGFUSE_HOST.rstrip("/"),
            environment=settings.ENVIRONMENT,
            tracer_provider=provider,
        )
        # The SDK keeps one set of resources per public key per process; a second client
        # with the same key reuses the first one's provider and ignores ours.
        resources = getattr(client, "_resources", None)
        active = getattr(resources, "tracer_provider", None)
        if isinstance(active, TracerProvider) and active is not provider:
            provider = active
        tracer = provider.get_tracer(LANGFUSE_SCOPE, attributes={"public_key": public_key})
        log.info("langfuse tracing on: %s", settings.LANGFUSE_HOST)
        return cls(client, tracer, environment=settings.ENVIRONMENT)

    def trace_call(
        self,
        *,
        request_id: str,
        user_id: str,
        model: str,
        provider_model: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        cost: Decimal | None,
        currency: str,
        start: float,
        end: float,
        ttft: float | None,
        status: str,
        stream: bool,
        error: str | None = None,
    ) -> None:
        """Record one finished call; start/end from time.time() or perf_counter(), ttft in seconds."""
        if self._client is None or self._tracer is None:
            return
        try:
            offset = _wall_clock_offset(start)
            start, end = start + offset, end + offset
            attributes = _generation_attributes(
                environment=self._environment,
                request_id=request_id,
                user_id=user_id,
                model=model,
                provider_model=provider_model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost=cost,
                currency=currency,
                completion_start=start + ttft if ttft is not None else None,
                status=status,
                stream=stream,
                error=error,
            )
            # The SDK's start_observation() stamps "now", but the call already happened: open
            # the span at its real start. An empty Context makes it a trace root even if
            # some other span is current.
            span = self._tracer.start_span(
                GENERATION_NAME,
                context=Context(),
                start_time=_ns(start),
                attributes=attributes,
            )
            span.end(end_time=_ns(end))
        except Exception:  # tracing must never fail the request it describes
            log.warning("langfuse: could not record call %s", request_id, exc_info=True)

    def shutdown(self) -> None:
        """Send everything queued and stop the SDK's threads (blocks; call at app shutdown)."""
        if self._client is None:
            return
        try:
            self._client.shutdown()
        except Exception:  # shutdown goes on whatever Langfuse does
            log.warning("langfuse: flush at shutdown failed", exc_info=True)
