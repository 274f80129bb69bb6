"""The gateway's ASGI app: FastAPI, with the model-call routes dispatched without its router.

FastAPI's way to an endpoint passes through its error middleware, an exit-stack middleware,
a body-limit middleware, the router's match over every included router, and the route's
request/response wrappers: about 35-60 us per request, measured, on calls whose whole
gateway cost is under a millisecond. The model-call endpoints need none of it: each takes the
`Request` only, resolves what it needs itself and returns a `Response`. So a request for one
of them goes through the same user middleware (ids, size limit, metrics, CORS, hosts) straight
to the endpoint, and an exception it raises goes to the same exception handlers the app
registered. Everything else (lifespan, other routes, 404s and 405s) is FastAPI's as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Any], Response | Awaitable[Response]]


def _takes_request_only(route: APIRoute) -> bool:
    """A POST route without path parameters or dependencies whose endpoint takes the Request."""
    if "POST" not in (route.methods or ()) or "{" in route.path:
        return False
    if route.dependencies or route.dependant.dependencies:
        return False
    params = list(inspect.signature(route.endpoint).parameters.values())
    return len(params) == 1 and params[0].annotation in (Request, "Request")


class GatewayApp(FastAPI):
    """FastAPI with a direct lane for the routes `serve_directly` names."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._direct: dict[str, APIRoute] = {}
        self._lane: ASGIApp | None = None

    def serve_directly(self, *routers: APIRouter) -> None:
        """Dispatch these routers' eligible routes directly (see the module's docstring)."""
        for router in routers:
            for route in router.routes:
                if isinstance(route, APIRoute) and _takes_request_only(route):
                    self._direct[route.path] = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self._direct:
            scope["app"] = self
            if self._lane is None:
                self._lane = self._build_lane()
            await self._lane(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def _build_lane(self) -> ASGIApp:
        """The app's own user middleware, in its order, around the direct dispatch."""
        lane: ASGIApp = self._dispatch
        for cls, args, kwargs in reversed(self.user_middleware):
            lane = cls(lane, *args, **kwargs)
        return lane

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._direct[scope["path"]]
        scope["route"] = route  # what the router sets: the metrics' route label reads it
        scope["endpoint"] = route.endpoint
        request = Request(scope, receive, send)
        endpoint: Endpoint = route.endpoint
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Handler | None:
        """The exception handler the app registered for this exception's nearest class."""
        for cls in type(exc).__mro__:
            handler = self.exception_handlers.get(cls)
            if handler is not None:
                found: Handler = handler
                return found
        return None
