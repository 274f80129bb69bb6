"""Annotated dependencies shared by the routers."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.requests import ClientDisconnect

from app.auth.service import Principal
from app.calls.lifecycle import Caller, JsonResult, StreamResult
from app.errors import AuthenticationFailed, ClientClosed, InvalidRequest, PermissionDenied
from app.state import AppState

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def get_app_state(request: Request) -> AppState:
    """The state the lifespan built."""
    state: AppState = request.app.state.gateway
    return state


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain `def` dependency in the threadpool, a thread hop per request.
    return get_app_state(request)


State = Annotated[AppState, Depends(get_state)]


async def current_principal(request: Request, state: State, *, authorization: str | None = None) -> Principal:
    """The authenticated caller; rate limits are applied here, before any work is done.

    `authorization` replaces the request's header (routes that also accept `x-api-key`).
    """
    principal = await state.auth.authenticate(authorization or request.headers.get("authorization"))
    request.state.user_id = principal.user_id
    if state.ratelimiter is not None:
        await state.ratelimiter.check(request, principal)
    return principal


CurrentUser = Annotated[Principal, Depends(current_principal)]


async def require_admin(request: Request, state: State) -> None:
    """`Authorization: Bearer $ADMIN_API_KEY`, compared in constant time."""
    expected = state.settings.ADMIN_API_KEY
    if not expected:
        raise PermissionDenied("The admin API is disabled: ADMIN_API_KEY is not set.")
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise AuthenticationFailed("Invalid admin credentials.")


Admin = Depends(require_admin)


async def json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 in OpenAI's shape."""
    try:
        raw = await request.body()
    except ClientDisconnect as exc:
        raise ClientClosed("The client closed the connection before sending its request.") from exc
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


JsonBody = Annotated[dict[str, Any], Depends(json_body)]


def caller(request: Request, principal: Principal) -> Caller:
    """The caller and the two ids of this call: the gateway's (the ledger's) and the client's."""
    return Caller(
        user_id=principal.user_id,
        request_id=request.state.request_id,
        client_request_id=request.state.client_request_id,
        key_id=principal.key_id,
    )


def call_response(result: JsonResult | StreamResult) -> Response:
    """A finished call as an HTTP response: JSON, or an SSE stream."""
    if isinstance(result, JsonResult):
        return Response(result.body, media_type=result.media_type, headers=result.headers)
    return StreamingResponse(
        result.events, media_type="text/event-stream", headers={**SSE_HEADERS, **result.headers}
    )
