"""POST /v1/chat/completions (JSON or SSE) and /v1/chat/completions/stream."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from app.api.deps import current_principal, get_app_state, json_body
from app.auth.service import Principal
from app.billing.service import Hold
from app.billing.tokens import count_prompt_tokens, count_text_tokens
from app.errors import GatewayError, ModelNotFound, sse_error_event
from app.llm.fastpath import DirectResponse, DirectStream, StreamTally, relay_events
from app.llm.requests import ChatRequest, parse_chat
from app.llm.router import translate_error
from app.observability.sentry import capture_upstream_failure
from app.state import AppState

log = logging.getLogger(__name__)
router = APIRouter()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class CallRecord:
    """What one call did, for billing, metrics and tracing."""

    request_id: str  # the billing id: unique per call, the ledger's request_id
    public_id: str  # X-Request-ID as the caller sees it
    user_id: str
    model: str
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    deployment_id: str | None = None
    provider: str = "unknown"
    cost: Decimal | None = None


# The hot routes resolve state, body and caller themselves rather than through FastAPI's
# dependency solver, which costs more per request than everything else in front of the call.


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions; SSE when `stream` is true."""
    state = get_app_state(request)
    body = await json_body(request)
    principal = await current_principal(request, state)
    return await _chat(request, state, principal, parse_chat(body))


@router.post("/v1/chat/completions/stream")
async def chat_completions_stream(request: Request) -> Response:
    """The same call with streaming forced."""
    state = get_app_state(request)
    body = await json_body(request)
    principal = await current_principal(request, state)
    return await _chat(request, state, principal, parse_chat(body, force_stream=True))


async def _chat(request: Request, state: AppState, principal: Principal, chat: ChatRequest) -> Response:
    if not state.llm.has_model(chat.model):
        raise ModelNotFound(f"The model '{chat.model}' does not exist.", param="model")
    call = CallRecord(
        request_id=request.state.billing_id,
        public_id=request.state.request_id,
        user_id=principal.user_id,
        model=chat.model,
        stream=chat.stream,
    )
    call.prompt_tokens = await count_prompt_tokens(chat.model, chat.messages)
    hold = await state.billing.reserve(
        user_id=principal.user_id,
        request_id=call.request_id,
        model=chat.model,
        prompt_tokens=call.prompt_tokens,
        max_tokens=chat.max_tokens,
        n=chat.n,
        key_id=principal.key_id,
    )
    if hold is not None and hold.max_tokens is not None:
        chat.params[chat.max_tokens_key] = hold.max_tokens  # the balance affords no more
    try:
        upstream = await state.llm.chat(chat.params)
    except GatewayError as exc:
        if hold is not None:
            await state.billing.release(hold)
        _finished(state, call, "error", error=exc)
        if exc.status_code >= 500:
            capture_upstream_failure(exc, request_id=call.request_id, user_id=call.user_id, model=call.model)
        raise
    hidden: dict[str, Any] = getattr(upstream, "_hidden_params", None) or {}
    call.deployment_id = hidden.get("model_id")
    call.provider = str(hidden.get("custom_llm_provider") or "unknown")
    if chat.stream:
        tally = StreamTally()
        if isinstance(upstream, DirectStream):
            source = relay_events(upstream, tally, client_wants_usage=chat.wants_usage)
        else:
            source = _litellm_events(upstream, tally, client_wants_usage=chat.wants_usage)
        return StreamingResponse(
            _events(state, call, hold, source, tally, upstream),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    return await _respond(state, chat, call, hold, upstream)


async def _respond(
    state: AppState, chat: ChatRequest, call: CallRecord, hold: Hold | None, upstream: Any
) -> Response:
    call.first_token = time.perf_counter()
    if isinstance(upstream, DirectResponse):
        body, usage = upstream.body, upstream.usage
    else:
        body = upstream.model_dump_json().encode()
        raw = getattr(upstream, "usage", None)
        usage = (
            None
            if raw is None
            else {"prompt_tokens": raw.prompt_tokens, "completion_tokens": raw.completion_tokens}
        )
    if usage is not None and usage.get("prompt_tokens"):  # LiteLLM reports 0s for "no usage"
        call.prompt_tokens = int(usage["prompt_tokens"])
        call.completion_tokens = int(usage.get("completion_tokens") or 0)
    else:
        call.completion_tokens = await count_text_tokens(chat.model, _message_text(upstream))
    headers: dict[str, str] = {}
    if hold is not None:
        call.cost = await state.billing.settle(
            hold,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            deployment_id=call.deployment_id,
        )
        headers["X-Request-Cost"] = f"{call.cost:f}"
    _finished(state, call, "success")
    return Response(body, media_type="application/json", headers=headers)


def _message_text(upstream: Any) -> str:
    if isinstance(upstream, DirectResponse):
        choices = orjson.loads(upstream.body).get("choices") or []
        return "".join((c.get("message") or {}).get("content") or "" for c in choices)
    return "".join((c.message.content or "") for c in upstream.choices if getattr(c, "message", None))


async def _litellm_events(
    upstream: Any, tally: StreamTally, *, client_wants_usage: bool
) -> AsyncIterator[bytes]:
    """LiteLLM's chunk objects as SSE events (providers that are not OpenAI-compatible)."""
    async for chunk in upstream:
        usage = getattr(chunk, "usage", None)
        if usage is not None and getattr(usage, "prompt_tokens", None) is not None:
            tally.usage = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
            if getattr(usage, "cost", None) is not None:
                usage.cost = None  # LiteLLM's own estimate, not what the gateway charges
            if not any(_delta_text(c) for c in chunk.choices or []):
                if not client_wants_usage:
                    continue  # asked upstream for billing; the client did not ask for it
                chunk.choices = []  # OpenAI's usage chunk carries no choices
        for choice in chunk.choices:
            text = _delta_text(choice)
            if text:
                tally.parts.append(text)
        yield b"data: " + chunk.model_dump_json(exclude_none=True).encode() + b"\n\n"


def _delta_text(choice: Any) -> str:
    delta = getattr(choice, "delta", None)
    content = getattr(delta, "content", None) if delta is not None else None
    return content if isinstance(content, str) else ""


async def _events(
    state: AppState,
    call: CallRecord,
    hold: Hold | None,
    source: AsyncIterator[bytes],
    tally: StreamTally,
    upstream: Any,
) -> AsyncIterator[bytes]:
    outcome: str | None = None
    try:
        async for block in source:
            if call.first_token is None:
                call.first_token = time.perf_counter()
            yield block
    except Exception as exc:  # the provider failed midway: end with an error event, charge nothing
        outcome = "error"
        error = translate_error(exc)
        capture_upstream_failure(error, request_id=call.request_id, user_id=call.user_id, model=call.model)
        if hold is not None:
            state.billing.release_soon(hold)
        state.billing.detach(_close_quietly(upstream))
        _finished(state, call, "error", error=error)
        yield sse_error_event(error)
        return
    else:
        outcome = "success"
        await _settle_stream(state, call, hold, tally)
        _finished(state, call, "success")
        yield DONE
    finally:
        if outcome is None:
            # The client went away. This task is being cancelled, so the provider stream is
            # closed and what was generated is charged in tasks of their own.
            state.billing.detach(_close_quietly(upstream))
            state.billing.detach(_settle_dropped(state, call, hold, tally))


async def _settle_stream(state: AppState, call: CallRecord, hold: Hold | None, tally: StreamTally) -> None:
    if tally.usage is not None and tally.usage.get("prompt_tokens"):
        call.prompt_tokens = int(tally.usage["prompt_tokens"])
        call.completion_tokens = int(tally.usage.get("completion_tokens") or 0)
    else:
        call.completion_tokens = await count_text_tokens(call.model, tally.generated_text())
    if hold is not None:
        call.cost = await state.billing.settle(
            hold,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            deployment_id=call.deployment_id,
        )


async def _settle_dropped(state: AppState, call: CallRecord, hold: Hold | None, tally: StreamTally) -> None:
    """Charge a dropped stream for the prompt and the completion generated so far."""
    await _settle_stream(state, call, hold, tally)
    _finished(state, call, "client_closed")


async def _close_quietly(upstream: Any) -> None:
    closer = getattr(upstream, "aclose", None)
    if closer is None:
        return
    try:
        await closer()
    except Exception:  # closing an already broken stream
        log.debug("closing the upstream stream failed", exc_info=True)


def _finished(state: AppState, call: CallRecord, status: str, *, error: GatewayError | None = None) -> None:
    end = time.perf_counter()
    ttft = call.first_token - call.started if call.first_token is not None else None
    state.metrics.llm_request(
        model=call.model,
        provider=call.provider,
        status=status,
        duration_s=end - call.started,
        ttft_s=ttft,
        prompt_tokens=call.prompt_tokens,
        completion_tokens=call.completion_tokens,
        cost=call.cost,
        currency=state.billing.currency,
    )
    if error is not None:
        state.metrics.llm_error(error_type=error.code or error.error_type)
    if state.ratelimiter is not None:
        state.ratelimiter.record_tokens(call.user_id, call.prompt_tokens + call.completion_tokens)
    state.tracer.trace_call(
        request_id=call.public_id,
        user_id=call.user_id,
        model=call.model,
        provider_model=call.deployment_id,
        prompt_tokens=call.prompt_tokens,
        completion_tokens=call.completion_tokens,
        cost=call.cost,
        currency=state.billing.currency,
        start=call.started,
        end=end,
        ttft=ttft,
        status=status,
        stream=call.stream,
        error=error.message if error is not None else None,
    )
