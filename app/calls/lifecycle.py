"""The one call lifecycle every endpoint shares: estimate -> reserve -> call -> settle -> record."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal

from app.billing.estimate import chat_prompt_tokens, embedding_tokens
from app.billing.estimate_protocols import messages_prompt_tokens, responses_prompt_tokens
from app.billing.service import BillingService, Charge, Hold
from app.billing.units import unit_cost
from app.calls.drain import Drain
from app.calls.record import CallRecord, Recorder, billed_usage
from app.calls.request import CallRequest
from app.calls.streaming import metered
from app.errors import GatewayError, ModelNotFound
from app.llm.results import Completion, CompletionStream
from app.llm.router import LLMService
from app.observability.sentry import capture_upstream_failure

# Endpoints whose prompt is plain text (CallRequest.inputs), counted like embedding inputs.
_TEXT_INPUT = frozenset({"completions", "images", "moderations", "rerank", "transcriptions"})
# Endpoints served by LLMService.call (the Router's own entry point for each).
_ROUTED = frozenset({"completions", "images", "transcriptions", "speech", "moderations", "rerank"})


@dataclass(slots=True)
class JsonResult:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/json"


@dataclass(slots=True)
class StreamResult:
    events: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes the call and under which ids."""

    user_id: str
    request_id: str  # the gateway's id for this call (the ledger's)
    client_request_id: str
    key_id: str | None = None  # the API key it came with: its budget and model list apply


class CallService:
    """Runs calls for every endpoint; the routers only parse and authenticate."""

    def __init__(self, *, llm: LLMService, billing: BillingService, recorder: Recorder, drain: Drain) -> None:
        self.llm = llm
        self.billing = billing
        self.recorder = recorder
        self.drain = drain

    async def run(self, req: CallRequest, caller: Caller) -> JsonResult | StreamResult:
        if not self.llm.has_model(req.model):
            raise ModelNotFound(f"The model '{req.model}' does not exist.", param="model")
        call = CallRecord(
            request_id=caller.request_id,
            client_request_id=caller.client_request_id,
            user_id=caller.user_id,
            model=req.model,
            endpoint=req.endpoint,
            stream=req.stream,
        )
        call.prompt_tokens = await self._estimate(req)
        hold = await self.billing.reserve(
            user_id=caller.user_id,
            request_id=caller.request_id,
            model=req.model,
            prompt_tokens=call.prompt_tokens,
            max_tokens=req.max_output_tokens,
            n=req.n,
            tier=req.service_tier,
            key_id=caller.key_id,
            fixed_cost=self._fixed_cost(req),
        )
        if hold is not None and hold.max_tokens is not None and req.output_limit_keys:
            for key in req.output_limit_keys:  # every limit key the client sent, capped
                req.params[key] = hold.max_tokens
        try:
            result = await self._call(req)
        except GatewayError as exc:
            if hold is not None:
                await self.billing.release(hold)
            self.recorder.finished(call, "error", error=exc)
            if exc.status_code >= 500:
                capture_upstream_failure(
                    exc, request_id=call.request_id, user_id=call.user_id, model=call.model
                )
            raise
        call.deployment_id, call.provider = result.deployment_id, result.provider
        if isinstance(result, Completion):
            return await self._complete(req, call, hold, result)
        return StreamResult(
            metered(
                result,
                call=call,
                hold=hold,
                n=req.n,
                wants_usage=req.wants_usage,
                billing=self.billing,
                recorder=self.recorder,
                drain=self.drain,
            )
        )

    async def _estimate(self, req: CallRequest) -> int:
        if req.endpoint == "embeddings" or req.endpoint in _TEXT_INPUT:
            return await embedding_tokens(req.model, req.inputs)
        if req.endpoint == "responses":
            return await responses_prompt_tokens(req.model, req.params)
        if req.endpoint == "messages":
            return await messages_prompt_tokens(req.model, req.params)
        return await chat_prompt_tokens(req.model, req.params)

    def _fixed_cost(self, req: CallRequest) -> Decimal:
        """What the call's units (images, seconds, ...) cost at most; each must be priced."""
        if req.units is None or not self.billing.enabled:
            return Decimal(0)
        return unit_cost(self.billing.price_for(req.model, req.service_tier), req.units, model=req.model)

    async def _call(self, req: CallRequest) -> Completion | CompletionStream:
        if req.endpoint == "embeddings":
            return await self.llm.embed(req.params)
        if req.endpoint in _ROUTED:
            return await self.llm.call(req.endpoint, req.params, file=req.file)
        if req.endpoint == "responses":
            return await self.llm.responses(req.params)
        if req.endpoint == "messages":
            return await self.llm.messages(req.params, req.headers)
        return await self.llm.chat(req.params)

    async def _complete(
        self, req: CallRequest, call: CallRecord, hold: Hold | None, result: Completion
    ) -> JsonResult:
        call.first_token = time.perf_counter()
        usage = await billed_usage(result.usage, call, self.recorder, text=result.text, units=req.units)
        charge: Charge | None = None
        headers: dict[str, str] = {}
        if hold is not None:
            charge = await self.billing.settle(hold, usage, deployment_id=call.deployment_id)
            call.cost = charge.cost
            headers["X-Request-Cost"] = f"{charge.cost:f}"
        self.recorder.finished(call, "success")
        body = result.body(None if charge is None else charge.cost, usage)
        return JsonResult(body, headers, result.media_type)
