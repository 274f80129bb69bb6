"""Pure ASGI middleware: request ids, security headers, body size limit, HTTP metrics.

Pure ASGI (not BaseHTTPMiddleware) so streamed responses pass through unbuffered and
contextvars set here are visible to the endpoint.
"""

from __future__ import annotations

import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import RequestTooLarge, anthropic_body_bytes, is_anthropic_path
from app.observability.logging import request_id_var, user_id_var
from app.observability.metrics import Metrics

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_CSP = b"content-security-policy"
_SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (_CSP, b"default-src 'none'; frame-ancestors 'none'"),
]


class GatewayMiddleware:
    """One pass per request: ids, limits, headers and timing."""

    def __init__(self, app: ASGIApp, *, max_body: int, metrics: Metrics | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Two ids: the gateway's own for this call (the ledger's request_id, unique, sent back as
        # X-Gateway-Request-Id) and the client's X-Request-ID, echoed for its own correlation.
        request_id = uuid.uuid4().hex
        client_request_id = request_id
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _VALID_REQUEST_ID.match(candidate):
                    client_request_id = candidate
            elif name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["client_request_id"] = client_request_id
        token_rid = request_id_var.set(client_request_id)
        token_uid = user_id_var.set(None)
        status_holder = [500]
        id_headers = [
            (b"x-request-id", client_request_id.encode()),
            (b"x-gateway-request-id", request_id.encode()),
        ]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.extend(id_headers)
                # A page (the dashboard) sets its own policy; everything else gets 'none'.
                own_csp = any(k.lower() == b"content-security-policy" for k, _ in headers)
                headers.extend(h for h in _SECURITY_HEADERS if not (own_csp and h[0] == _CSP))
                # Set by the rate limiter for the routes it limits.
                headers.extend(state.get("ratelimit_headers", ()))
                message["headers"] = headers
            await send(message)

        try:
            if declared is not None and declared > self.max_body:
                await _send_error(
                    send_wrapper,
                    RequestTooLarge(_too_large(self.max_body)),
                    anthropic=is_anthropic_path(scope["path"]),
                )
                return
            await self.app(scope, _limited(receive, self.max_body), send_wrapper)
        finally:
            request_id_var.reset(token_rid)
            user_id_var.reset(token_uid)
            if self.metrics is not None:
                route = scope.get("route")
                path = getattr(route, "path", None) or "unmatched"
                self.metrics.http_request(
                    method=scope["method"],
                    route=path,
                    status=status_holder[0],
                    duration_s=time.perf_counter() - started,
                )


def _too_large(limit: int) -> str:
    return f"The request body is larger than the limit of {limit} bytes."


def _limited(receive: Receive, limit: int) -> Receive:
    """Count the bytes actually received (Content-Length can lie or be absent)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise RequestTooLarge(_too_large(limit))
        return message

    return wrapped


async def _send_error(send: Send, error: RequestTooLarge, *, anthropic: bool) -> None:
    body = anthropic_body_bytes(error) if anthropic else error.body_bytes()
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
