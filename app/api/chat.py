"""POST /v1/chat/completions (JSON or SSE) and /v1/chat/completions/stream."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import call_response, caller, current_principal, get_app_state, json_body
from app.api.schemas.chat import parse_chat

router = APIRouter()

# The hot routes resolve state, body and caller themselves rather than through FastAPI's
# dependency solver, which costs more per request than everything else in front of the call.


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions; SSE when `stream` is true."""
    return await _chat(request, force_stream=False)


@router.post("/v1/chat/completions/stream")
async def chat_completions_stream(request: Request) -> Response:
    """The same call with streaming forced."""
    return await _chat(request, force_stream=True)


async def _chat(request: Request, *, force_stream: bool) -> Response:
    state = get_app_state(request)
    body = await json_body(request)
    principal = await current_principal(request, state)
    req = parse_chat(body, force_stream=force_stream, extra=state.llm.extra_params(body.get("model")))
    return call_response(await state.calls.run(req, caller(request, principal)))
