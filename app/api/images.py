"""POST /v1/images/generations."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import call_response, caller, current_principal, get_app_state, json_body
from app.api.schemas.images import parse_images

router = APIRouter()


@router.post("/v1/images/generations")
async def images_generations(request: Request) -> Response:
    """OpenAI image generation, billed per image (and per token where reported)."""
    state = get_app_state(request)
    body = await json_body(request)
    principal = await current_principal(request, state)
    req = parse_images(body, extra=state.llm.extra_params(body.get("model")))
    return call_response(await state.calls.run(req, caller(request, principal)))
