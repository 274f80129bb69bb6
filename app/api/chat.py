"""POST /v1/chat/completions (JSON or SSE) and /v1/chat/completions/stream."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from app.api.deps import CurrentUser, JsonBody, State
from app.auth.service import Principal
from app.billing.service import Hold
from app.billing.tokens import count_prompt_tokens, count_text_tokens
from app.errors import GatewayError, ModelNotFound, sse_error_event
from app.llm.requests import ChatRequest, parse_chat
from app.llm.router import translate_error
from app.state import AppState

log = logging.getLogger(__name__)
router = APIRouter()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class CallRecord:
    """What one call did, for billing, metrics and tracing."""

    request_id: str
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


@router.post("/v1/chat/completions")
async def chat_completions(
    request: Request, body: JsonBody, principal: CurrentUser, state: State
) -> Response:
    """OpenAI chat completions; SSE when `stream` is true."""
    return await _chat(request, state, principal, parse_chat(body))


@router.post("/v1/chat/completions/stream")
async def chat_completions_stream(
    request: Request, body: JsonBody, principal: CurrentUser, state: State
) -> Response:
    """The same call with streaming forced."""
    return await _chat(request, state, principal, parse_chat(body, force_stream=True))


async def _chat(request: Request, state: AppState, principal: Principal, chat: ChatRequest) -> Response:
    if not state.llm.has_model(chat.model):
        raise ModelNotFound(f"The model '{chat.model}' does not exist.", param="model")
    call = CallRecord(
        request_id=request.state.billing_id,
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
    )
    if hold is not None and chat.max_tokens is None and hold.max_tokens is not None:
        chat.params[chat.max_tokens_key] = hold.max_tokens  # what the balance affords
    if chat.stream:
        return await _stream(state, chat, call, hold)
    return await _complete(state, chat, call, hold)


async def _complete(state: AppState, chat: ChatRequest, call: CallRecord, hold: Hold | None) -> Response:
    try:
        response = await state.llm.complete(chat.params)
    except GatewayError as exc:
        await _failed(state, call, hold, exc)
        raise
    call.first_token = time.perf_counter()
    hidden: dict[str, Any] = getattr(response, "_hidden_params", {}) or {}
    call.deployment_id = hidden.get("model_id")
    call.provider = str(hidden.get("custom_llm_provider") or "unknown")
    usage = getattr(response, "usage", None)
    if usage is not None and getattr(usage, "prompt_tokens", None) is not None:
        call.prompt_tokens = int(usage.prompt_tokens)
        call.completion_tokens = int(usage.completion_tokens or 0)
    else:
        text = "".join(
            (c.message.content or "") for c in response.choices if getattr(c, "message", None)
        )
        call.completion_tokens = await count_text_tokens(chat.model, text)
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
    return Response(response.model_dump_json(), media_type="application/json", headers=headers)


async def _stream(state: AppState, chat: ChatRequest, call: CallRecord, hold: Hold | None) -> Response:
    try:
        upstream = await state.llm.stream(chat.params)
    except GatewayError as exc:
        await _failed(state, call, hold, exc)
        raise
    hidden: dict[str, Any] = getattr(upstream, "_hidden_params", {}) or {}
    call.deployment_id = hidden.get("model_id")
    call.provider = str(hidden.get("custom_llm_provider") or "unknown")
    return StreamingResponse(
        _events(state, chat, call, hold, upstream),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


async def _events(
    state: AppState, chat: ChatRequest, call: CallRecord, hold: Hold | None, upstream: Any
) -> AsyncIterator[bytes]:
    parts: list[str] = []
    usage: Any = None
    outcome: str | None = None
    try:
        async for chunk in upstream:
            chunk_usage = getattr(chunk, "usage", None)
            if chunk_usage is not None and getattr(chunk_usage, "prompt_tokens", None) is not None:
                usage = chunk_usage
                if not chunk.choices or not any(_delta_text(c) for c in chunk.choices):
                    if not chat.wants_usage:
                        continue  # asked upstream for billing; the client did not ask for it
                    chunk.choices = []  # OpenAI's usage chunk carries no choices
            for choice in chunk.choices:
                text = _delta_text(choice)
                if text:
                    if call.first_token is None:
                        call.first_token = time.perf_counter()
                    parts.append(text)
            yield b"data: " + chunk.model_dump_json(exclude_none=True).encode() + b"\n\n"
    except Exception as exc:  # the provider failed midway: end with an error event
        outcome = "error"
        error = translate_error(exc)
        log.warning("stream failed upstream", extra={"error": type(exc).__name__})
        if hold is not None:
            state.billing.release_soon(hold)
        _finished(state, call, "error", error=error)
        yield sse_error_event(error)
        return
    else:
        outcome = "success"
        await _settle_stream(state, chat, call, hold, usage, parts)
        _finished(state, call, "success")
        yield DONE
    finally:
        if outcome is None:
            # The client went away: charge for what was generated, in a task of its own
            # (this one is being cancelled), and stop the provider generating more.
            state.billing.detach(_close_quietly(upstream))
            call.completion_tokens = _rough_tokens(parts)
            if hold is not None:
                state.billing.settle_soon(
                    hold,
                    prompt_tokens=call.prompt_tokens,
                    completion_tokens=call.completion_tokens,
                    deployment_id=call.deployment_id,
                )
            _finished(state, call, "client_closed")


async def _settle_stream(
    state: AppState,
    chat: ChatRequest,
    call: CallRecord,
    hold: Hold | None,
    usage: Any,
    parts: list[str],
) -> None:
    if usage is not None:
        call.prompt_tokens = int(usage.prompt_tokens)
        call.completion_tokens = int(usage.completion_tokens or 0)
    else:
        call.completion_tokens = await count_text_tokens(chat.model, "".join(parts))
    if hold is not None:
        call.cost = await state.billing.settle(
            hold,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            deployment_id=call.deployment_id,
        )


def _delta_text(choice: Any) -> str:
    delta = getattr(choice, "delta", None)
    content = getattr(delta, "content", None) if delta is not None else None
    return content if isinstance(content, str) else ""


def _rough_tokens(parts: list[str]) -> int:
    # Providers send about one token per content chunk; no await is possible here (the
    # task may be cancelled), so count chunks rather than run the tokenizer.
    return len(parts)


async def _close_quietly(upstream: Any) -> None:
    closer = getattr(upstream, "aclose", None)
    if closer is None:
        return
    try:
        await closer()
    except BaseException:  # noqa: BLE001 - closing a dead stream must not mask the cancel
        pass


async def _failed(state: AppState, call: CallRecord, hold: Hold | None, error: GatewayError) -> None:
    if hold is not None:
        await state.billing.release(hold)
    _finished(state, call, "error", error=error)


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
    state.tracer.trace_call(
        request_id=call.request_id,
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
