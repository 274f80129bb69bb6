"""POST /v1/completions (legacy text completions; JSON or SSE)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import call_response, caller, current_principal, get_app_state, json_body
from app.api.schemas.completions import parse_completions

router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    """OpenAI legacy completions; SSE when `stream` is true."""
    state = get_app_state(request)
    body = await json_body(request)
    principal = await current_principal(request, state)
    req = parse_completions(body, extra=state.llm.extra_params(body.get("model")))
    return call_response(await state.calls.run(req, caller(request, principal)))
