"""Sentry error reporting: scrubbed of secrets, and of prompts unless SENTRY_SEND_PROMPTS."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import sentry_sdk
from sentry_sdk.integrations.fastapi import FastApiIntegration
from sentry_sdk.integrations.starlette import StarletteIntegration

from app.observability.logging import request_id_var
from app.observability.scrub import scrub_value

if TYPE_CHECKING:
    from collections.abc import Callable

    from sentry_sdk.types import Event, Hint

    from app.config import Settings

log = logging.getLogger(__name__)

# Headers that carry credentials; dropped outright rather than scrubbed.
_DROPPED_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
# Besides Sentry's own sensitive-key list; these name client addresses, which are PII.
_HEADER_DENY_TERMS = ["forwarded", "-ip", "remote-", "via", "-user"]


def _strip_request(event: dict[str, Any], *, keep_body: bool) -> None:
    request = event.get("request")
    if not isinstance(request, dict):
        return
    headers = request.get("headers")
    if isinstance(headers, dict):
        request["headers"] = {
            name: value for name, value in headers.items() if str(name).lower() not in _DROPPED_HEADERS
        }
    request.pop("cookies", None)
    if not keep_body:
        # The body of /v1/chat/completions is the user's prompt.
        request.pop("data", None)


def _make_before_send(*, send_prompts: bool) -> Callable[[Event, Hint], Event | None]:
    def before_send(event: Event, hint: Hint) -> Event | None:
        _strip_request(cast("dict[str, Any]", event), keep_body=send_prompts)
        # Events are captured in the request's own context: tag them with the id the
        # caller got back in X-Request-ID.
        request_id = request_id_var.get()
        tags = event.setdefault("tags", {})
        if request_id and isinstance(tags, dict):
            tags.setdefault("request_id", request_id)
        # Exception messages from providers and our own log lines can quote keys, bearer
        # tokens and database URLs: every string in the event goes through scrub.
        return cast("Event", scrub_value(event))

    return before_send


def init_sentry(settings: Settings) -> bool:
    """Start Sentry if SENTRY_DSN is set; returns whether it did."""
    if not settings.SENTRY_DSN:
        return False
    send_prompts = settings.SENTRY_SEND_PROMPTS
    before_send = _make_before_send(send_prompts=send_prompts)
    sentry_sdk.init(
        dsn=settings.SENTRY_DSN,
        environment=settings.ENVIRONMENT,
        traces_sample_rate=settings.SENTRY_TRACES_SAMPLE_RATE,
        # sentry-sdk 2.7x replaced send_default_pii=False (now a DeprecationWarning) with
        # this; it is the PII-off set, further closed: no cookies, and no request bodies or
        # frame locals (they hold the prompt) unless SENTRY_SEND_PROMPTS.
        data_collection={
            "user_info": False,
            "cookies": {"mode": "off"},
            "http_headers": {"request": {"mode": "denylist", "terms": _HEADER_DENY_TERMS}},
            "url_query_params": {"mode": "denylist"},
            "http_bodies": ["incoming_request"] if send_prompts else [],
            "gen_ai": {"inputs": send_prompts, "outputs": send_prompts},
            "database_query_data": False,
            "stack_frame_variables": send_prompts,
        },
        # Only the web framework: the auto-enabled OpenAI/Anthropic/httpx/aiohttp
        # integrations wrap every provider call and stream chunk on the hot path, and
        # report each provider error the Router then retries or falls back from.
        auto_enabling_integrations=False,
        integrations=[StarletteIntegration(), FastApiIntegration()],
        before_send=before_send,
        before_send_transaction=before_send,
    )
    log.info("sentry on (environment=%s)", settings.ENVIRONMENT)
    return True


def capture_upstream_failure(
    exc: BaseException, *, request_id: str | None, user_id: str | None, model: str
) -> None:
    """Report a call on which every provider failed, tagged with request id, model and user.

    `request_id` is the call's own id (the ledger's); the `request_id` tag is the X-Request-ID
    the caller got back and nginx logged, when there is one, and the ledger's is `billing_id`.
    """
    if not sentry_sdk.is_initialized():
        return
    caller_request_id = request_id_var.get()
    with sentry_sdk.new_scope() as scope:
        if caller_request_id or request_id:
            scope.set_tag("request_id", caller_request_id or request_id)
        if request_id and request_id != caller_request_id:
            scope.set_tag("billing_id", request_id)
        scope.set_tag("model", model)
        scope.set_tag("failure", "upstream")
        if user_id:
            scope.set_user({"id": user_id})
        # One issue per model and error type, not one per call site or message text.
        scope.fingerprint = ["upstream-failure", model, type(exc).__name__]
        sentry_sdk.capture_exception(exc)
