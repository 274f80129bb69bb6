"""GET /v1/models and /v1/models/{model}."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import CurrentUser, State
from app.errors import ModelNotFound

router = APIRouter()


def _model(state: State, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": int(state.started_at),
        "owned_by": state.llm.owner(name),
    }


@router.get("/v1/models")
async def list_models(principal: CurrentUser, state: State) -> dict[str, Any]:
    """The model groups this gateway serves."""
    return {"object": "list", "data": [_model(state, n) for n in state.llm.model_names()]}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, principal: CurrentUser, state: State) -> dict[str, Any]:
    """One model group."""
    if not state.llm.has_model(model):
        raise ModelNotFound(f"The model '{model}' does not exist.", param="model")
    return _model(state, model)
