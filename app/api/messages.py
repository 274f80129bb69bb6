"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API.

The credential may come in `x-api-key` (the Anthropic SDK, Claude Code) or as a bearer token;
errors on these routes are in Anthropic's shape (see app/main.py).
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import call_response, caller, current_principal, get_app_state, json_body
from app.api.schemas.messages import parse_count_tokens, parse_messages, pass_headers
from app.auth.service import Principal
from app.billing.estimate_protocols import messages_prompt_tokens
from app.errors import ModelNotFound, NotFound
from app.state import AppState

router = APIRouter()


async def _principal(request: Request, state: AppState) -> Principal:
    authorization = request.headers.get("authorization")
    if not authorization and (key := request.headers.get("x-api-key")):
        authorization = f"Bearer {key}"
    return await current_principal(request, state, authorization=authorization)


@router.post("/v1/messages")
async def create_message(request: Request) -> Response:
    """An Anthropic message; SSE in Anthropic's event order when `stream` is true."""
    state = get_app_state(request)
    body = await json_body(request)
    principal = await _principal(request, state)
    req = parse_messages(body, request.headers, extra=state.llm.extra_params(body.get("model")))
    return call_response(await state.calls.run(req, caller(request, principal)))


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    """Input tokens of a Messages request: the provider's count where it has one; free."""
    state = get_app_state(request)
    body = await json_body(request)
    await _principal(request, state)
    params = parse_count_tokens(body, extra=state.llm.extra_params(body.get("model")))
    if not state.llm.has_model(params["model"]):
        raise ModelNotFound(f"model: '{params['model']}' does not exist.", param="model")
    count = await state.llm.count_tokens(params, pass_headers(request.headers))
    if count is None:
        count = await messages_prompt_tokens(params["model"], params)
    return Response(orjson.dumps({"input_tokens": count}), media_type="application/json")


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def probe(request: Request) -> Response:
    """Claude Code probes the base URL with HEAD / before it starts; GET / stays unknown."""
    if request.method == "GET":
        raise NotFound(f"Unknown route: GET {request.url.path}", code="unknown_url")
    return Response(status_code=200)
