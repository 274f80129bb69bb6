"""POST /v1/moderations."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import call_response, caller, current_principal, get_app_state, json_body
from app.api.schemas.moderations import parse_moderations

router = APIRouter()


@router.post("/v1/moderations")
async def moderations(request: Request) -> Response:
    """OpenAI moderations: priced like any model (free only where the operator says so)."""
    state = get_app_state(request)
    body = await json_body(request)
    principal = await current_principal(request, state)
    req = parse_moderations(body, extra=state.llm.extra_params(body.get("model")))
    return call_response(await state.calls.run(req, caller(request, principal)))
