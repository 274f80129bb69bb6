"""The gateway's one error type, and the single place that renders the OpenAI error body."""

from __future__ import annotations

from typing import Any

import orjson


class GatewayError(Exception):
    """An error with an HTTP status and an OpenAI-shaped body; services raise these."""

    status_code = 500
    error_type = "api_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body_bytes(self) -> bytes:
        return orjson.dumps(self.body())


class InvalidRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"
    code = None


class AuthenticationFailed(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class InsufficientBalance(GatewayError):
    status_code = 402
    error_type = "insufficient_quota"
    code = "insufficient_balance"


class PermissionDenied(GatewayError):
    status_code = 403
    error_type = "permission_error"
    code = None


class NotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RequestTooLarge(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    status_code = 502
    error_type = "api_error"
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status_code = 503
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class ClientClosed(GatewayError):
    """The client went away; nobody reads the answer (logged at info, never as an error)."""

    status_code = 499
    error_type = "invalid_request_error"
    code = "client_closed"


class StoreUnavailable(GatewayError):
    """The billing/identity store cannot be reached: fail closed."""

    status_code = 503
    error_type = "api_error"
    code = "store_unavailable"


def sse_error_event(error: GatewayError) -> bytes:
    """An error as one SSE event, for failures after a stream has started."""
    return b"data: " + error.body_bytes() + b"\n\n"


class StoreFailure(Exception):
    """Base of every error a store raises (`app.store.base` defines the kinds)."""


def from_store(exc: StoreFailure) -> GatewayError:
    """The one table from a store error that reached a route to what the caller gets.

    Routes that can say something more precise (an admin adjustment that would overdraw)
    catch the specific kind themselves; everything else ends here.
    """
    kind = type(exc).__name__
    if kind == "UserNotFound":
        return NotFound("No such account.", code="user_not_found")
    if kind == "UserExists":
        return GatewayError("The account already exists.", code="user_exists", status_code=409)
    if kind == "BalanceConflict":
        return GatewayError(
            "The change would take money that is not there.", code="balance_conflict", status_code=409
        )
    return StoreUnavailable("The account store is unavailable; try again.")


# Anthropic's documented error types by status; its SDKs and Claude Code read `error.type`.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    499: "invalid_request_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(error: GatewayError) -> str:
    """The Anthropic error type for a gateway error (503: the provider side is overloaded)."""
    if error.status_code == 503:
        return "overloaded_error"
    return _ANTHROPIC_TYPES.get(error.status_code) or (
        "api_error" if error.status_code >= 500 else "invalid_request_error"
    )


def anthropic_body_bytes(error: GatewayError) -> bytes:
    """An error in Anthropic's shape: {"type": "error", "error": {"type", "message"}}."""
    return orjson.dumps(
        {"type": "error", "error": {"type": anthropic_error_type(error), "message": error.message}}
    )


def anthropic_error_event(error: GatewayError) -> bytes:
    """A failure after an Anthropic stream started, as Anthropic's `error` event."""
    return b"event: error\ndata: " + anthropic_body_bytes(error) + b"\n\n"


def is_anthropic_path(path: str) -> bool:
    """Routes that speak Anthropic's protocol, errors included."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")
