"""POST /v1/rerank (Cohere-compatible)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import call_response, caller, current_principal, get_app_state, json_body
from app.api.schemas.rerank import parse_rerank

router = APIRouter()


@router.post("/v1/rerank")
async def rerank(request: Request) -> Response:
    """Rerank documents against a query, billed per search unit."""
    state = get_app_state(request)
    body = await json_body(request)
    principal = await current_principal(request, state)
    req = parse_rerank(body, extra=state.llm.extra_params(body.get("model")))
    return call_response(await state.calls.run(req, caller(request, principal)))
