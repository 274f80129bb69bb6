"""Annotated dependencies shared by the routers."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request

from app.auth.service import Principal
from app.errors import AuthenticationFailed, InvalidRequest, PermissionDenied
from app.state import AppState


def get_app_state(request: Request) -> AppState:
    """The state the lifespan built."""
    state: AppState = request.app.state.gateway
    return state


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain `def` dependency in the threadpool, a thread hop per request.
    return get_app_state(request)


State = Annotated[AppState, Depends(get_state)]


async def current_principal(request: Request, state: State) -> Principal:
    """The authenticated caller; rate limits are applied here, before any work is done."""
    principal = await state.auth.authenticate(request.headers.get("authorization"))
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
    raw = await request.body()
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
