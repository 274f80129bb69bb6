"""The record of one call, and the one place that reports it: metrics, token limits, trace."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from app.billing.estimate import count_text
from app.errors import GatewayError
from app.observability.metrics import Metrics
from app.observability.tracing import LLMTracer
from app.usage import Usage

if TYPE_CHECKING:
    from app.ratelimit import RateLimiter


@dataclass(slots=True)
class CallRecord:
    """What one call did, for billing, metrics and tracing."""

    request_id: str  # the gateway's id: unique per call, the ledger's request_id
    client_request_id: str  # X-Request-ID as the caller sent it (or the gateway's id)
    user_id: str
    model: str
    endpoint: str
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    deployment_id: str | None = None
    provider: str = "unknown"
    cost: Decimal | None = None


async def billed_usage(
    reported: Usage | None,
    call: CallRecord,
    recorder: Recorder,
    *,
    text: Callable[[], str],
    units: Usage | None = None,
) -> Usage:
    """What a call is charged on: the provider's usage, else the held units, else a count.

    LiteLLM reports 0s for "no usage"; a call billed by its units may report no tokens.
    """
    usage = reported
    if usage is None or (usage.prompt_tokens == 0 and not usage.has_units):
        if units is not None:
            usage = units  # what was held is what the call used (characters, ...)
        else:
            completion = await count_text(call.model, text())
            usage = Usage.tokens(call.prompt_tokens, completion, counted=True)
        if usage.counted:  # speech's characters are exact, not a count by the gateway
            recorder.metrics.usage_counted(endpoint=call.endpoint)
    call.prompt_tokens, call.completion_tokens = usage.prompt_tokens, usage.completion_tokens
    return usage


class Recorder:
    """Reports finished calls; never raises into the request."""

    def __init__(
        self, *, metrics: Metrics, tracer: LLMTracer, ratelimiter: RateLimiter | None, currency: str
    ) -> None:
        self.metrics = metrics
        self._tracer = tracer
        self._ratelimiter = ratelimiter
        self._currency = currency

    def finished(self, call: CallRecord, status: str, *, error: GatewayError | None = None) -> None:
        end = time.perf_counter()
        ttft = call.first_token - call.started if call.first_token is not None else None
        self.metrics.llm_request(
            model=call.model,
            provider=call.provider,
            status=status,
            duration_s=end - call.started,
            ttft_s=ttft,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            cost=call.cost,
            currency=self._currency,
        )
        if error is not None:
            self.metrics.llm_error(error_type=error.code or error.error_type)
        if self._ratelimiter is not None:
            self._ratelimiter.record_tokens(call.user_id, call.prompt_tokens + call.completion_tokens)
        self._tracer.trace_call(
            request_id=call.client_request_id,
            user_id=call.user_id,
            model=call.model,
            provider_model=call.deployment_id,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            cost=call.cost,
            currency=self._currency,
            start=call.started,
            end=end,
            ttft=ttft,
            status=status,
            stream=call.stream,
            error=error.message if error is not None else None,
        )
