"""POST /v1/responses: the OpenAI Responses API (JSON, or SSE when `stream` is true)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import call_response, caller, current_principal, get_app_state, json_body
from app.api.schemas.responses import parse_responses

router = APIRouter()


@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    """A model response; SSE `response.*` events when `stream` is true."""
    state = get_app_state(request)
    body = await json_body(request)
    principal = await current_principal(request, state)
    req = parse_responses(body, extra=state.llm.extra_params(body.get("model")))
    return call_response(await state.calls.run(req, caller(request, principal)))
