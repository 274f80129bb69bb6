"""POST /v1/embeddings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import current_principal, get_app_state, json_body
from app.billing.tokens import count_input_tokens
from app.errors import GatewayError, ModelNotFound
from app.llm.requests import parse_embeddings

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    """OpenAI embeddings, billed on the provider's prompt token count."""
    state = get_app_state(request)
    body = await json_body(request)
    principal = await current_principal(request, state)
    req = parse_embeddings(body)
    if not state.llm.has_model(req.model):
        raise ModelNotFound(f"The model '{req.model}' does not exist.", param="model")
    prompt_tokens = await count_input_tokens(req.model, req.inputs)
    hold = await state.billing.reserve(
        user_id=principal.user_id,
        request_id=request.state.billing_id,
        model=req.model,
        prompt_tokens=prompt_tokens,
        max_tokens=None,
        key_id=principal.key_id,
    )
    try:
        response = await state.llm.embed(req.params)
    except GatewayError:
        if hold is not None:
            await state.billing.release(hold)
        raise
    hidden: dict[str, Any] = getattr(response, "_hidden_params", {}) or {}
    usage = getattr(response, "usage", None)
    if usage is not None and getattr(usage, "prompt_tokens", None):
        prompt_tokens = int(usage.prompt_tokens)
    headers: dict[str, str] = {}
    if hold is not None:
        cost = await state.billing.settle(
            hold, prompt_tokens=prompt_tokens, completion_tokens=0, deployment_id=hidden.get("model_id")
        )
        headers["X-Request-Cost"] = f"{cost:f}"
    return Response(response.model_dump_json(), media_type="application/json", headers=headers)
