"""The fast path for OpenAI-compatible deployments: bytes in, bytes out, Router still in charge.

The Router keeps doing what it is for: `async_function_with_fallbacks` runs our attempt
function with its retry policy and its fallback chain, `async_get_available_deployment`
chooses the deployment (routing strategy, weights, cooldowns) and
`deployment_callback_on_failure` counts failures and cools deployments down. What changes is
the call itself: the request body the client sent is forwarded as is, and the provider's SSE
bytes are passed on without being parsed into objects and rebuilt chunk by chunk. Only the
usage event is parsed, for billing.

A model group takes this path only if it and every group it can fall back to are served by
plain OpenAI-compatible deployments; everything else goes through `Router.acompletion`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import httpx
import orjson
from litellm import exceptions as llm_errors
from litellm.router import Router

from app.config import ModelConfig
from app.llm.results import Completion, CompletionStream
from app.llm.wires import CHAT, Wire

# litellm_params a deployment may have and still be called directly (anything else, such
# as mock_response or provider-specific settings, needs LiteLLM's own call path).
_DIRECT_PARAMS = frozenset(
    {
        "model",
        "api_base",
        "api_key",
        "organization",
        "timeout",
        "stream_timeout",
        "rpm",
        "tpm",
        "num_retries",
        "max_retries",
        "extra_headers",
        "input_cost_per_token",
        "output_cost_per_token",
        "weight",
        "order",
    }
)
# Routing strategies that decide from the Router's own state; the others learn from
# LiteLLM's success callbacks, which the fast path does not fire.
_DIRECT_STRATEGIES = frozenset({None, "simple-shuffle"})


def _is_direct(entry: dict[str, Any], prefix: str) -> bool:
    params: dict[str, Any] = entry["litellm_params"]
    model = str(params.get("model", ""))
    return model.startswith(prefix) and set(params) <= _DIRECT_PARAMS


def direct_groups(config: ModelConfig, prefix: str = "openai/") -> frozenset[str]:
    """Model groups that (with every fallback they may reach) can use the fast path.

    `prefix` names the provider whose API the call speaks natively: `openai/` for chat and
    Responses, `anthropic/` for Messages.
    """
    if config.router_settings.get("routing_strategy") not in _DIRECT_STRATEGIES:
        return frozenset()
    groups: dict[str, bool] = {}
    for entry in config.model_list:
        name = str(entry["model_name"])
        groups[name] = groups.get(name, True) and _is_direct(entry, prefix) and "*" not in name
    return frozenset(
        n for n, ok in groups.items() if ok and all(groups.get(m, False) for m in config.reachable(n))
    )


class DirectCaller:
    """Calls OpenAI-compatible deployments chosen by the Router, over one shared HTTP pool."""

    def __init__(self, router: Router, session: aiohttp.ClientSession) -> None:
        self._router = router
        self._session = session

    async def call(
        self, params: dict[str, Any], wire: Wire = CHAT, headers: Mapping[str, str] | None = None
    ) -> Completion | CompletionStream:
        """One call with the Router's retries, fallbacks and cooldowns around each attempt.

        `headers` are the client's headers the wire may pass on (never its credential).

        The first attempt runs without the Router's retry and fallback wrappers, whose work on a
        success is bookkeeping this path has no use for (about 6 % of a call's CPU); it still
        asks the Router for the deployment. If it fails, the Router takes over as though that
        failure were its own first attempt's: the wrappers get an attempt function that raises
        it once, then makes real attempts, so retry policy, cooldowns and fallbacks are the
        Router's, with the same number of provider calls.
        """
        model = params["model"]
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": params.get("messages"),
            "gw_body": params,
            "gw_wire": wire,
            "gw_headers": headers or {},
        }
        self._router._update_kwargs_before_fallbacks(model=model, kwargs=kwargs)
        first = {k: v for k, v in kwargs.items() if k not in _WRAPPER_KWARGS}
        try:
            return await self._attempt(**first)
        except Exception as exc:
            failure = exc
        kwargs["original_function"] = _replay_then(failure, self._attempt)
        result: Completion | CompletionStream = await self._router.async_function_with_fallbacks(**kwargs)
        return result

    async def _attempt(self, model: str, messages: Any, **kwargs: Any) -> Completion | CompletionStream:
        deployment = await self._router.async_get_available_deployment(
            model=model, messages=messages, request_kwargs=kwargs
        )
        wire: Wire = kwargs["gw_wire"]
        params: dict[str, Any] = deployment["litellm_params"]
        deployment_id = str(deployment["model_info"]["id"])
        body = dict(kwargs["gw_body"])
        body["model"] = str(params["model"]).split("/", 1)[1]
        stream = bool(body.get("stream"))
        url = wire.url(params)
        headers = wire.headers(params, kwargs["gw_headers"])
        timeout = self._timeout(params, stream=stream)
        started = time.time()
        try:
            response = await self._session.post(
                url, data=orjson.dumps(body), headers=headers, timeout=timeout
            )
        except TimeoutError as exc:
            raise self._failed(
                llm_errors.Timeout(
                    message=f"timed out after {timeout.total or timeout.sock_read}s",
                    model=model,
                    llm_provider="openai",
                ),
                deployment,
                model,
                started,
            ) from exc
        except aiohttp.ClientError as exc:
            raise self._failed(
                llm_errors.APIConnectionError(
                    message=f"{type(exc).__name__}: {exc}", llm_provider="openai", model=model
                ),
                deployment,
                model,
                started,
            ) from exc
        if response.status != 200:
            try:
                data = await response.read()
            except (aiohttp.ClientError, TimeoutError):
                data = b""
            finally:
                response.release()
            raise self._failed(_status_error(response, data, model, url), deployment, model, started)
        if stream:
            return wire.stream(response, deployment_id)
        try:
            data = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._failed(
                llm_errors.APIConnectionError(
                    message=f"{type(exc).__name__} reading the response", llm_provider="openai", model=model
                ),
                deployment,
                model,
                started,
            ) from exc
        finally:
            response.release()
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise self._failed(
                llm_errors.APIError(
                    status_code=502,
                    message="the provider's answer is not JSON",
                    llm_provider="openai",
                    model=model,
                ),
                deployment,
                model,
                started,
            )
        return wire.completion(parsed, deployment_id)

    def _timeout(self, params: dict[str, Any], *, stream: bool) -> aiohttp.ClientTimeout:
        total = params.get("timeout") or self._router.timeout or 600
        if stream:
            # A stream may run long; what must not happen is a silent provider.
            idle = params.get("stream_timeout") or self._router.stream_timeout or total
            return aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=float(idle))
        return aiohttp.ClientTimeout(total=float(total))

    def _failed(self, exc: Exception, deployment: dict[str, Any], model: str, started: float) -> Exception:
        """Tell the Router (failure counts, cooldowns), then let its retry/fallback logic see exc."""
        exc.failed_deployment_id = str(deployment["model_info"]["id"])  # type: ignore[attr-defined]
        self._router.deployment_callback_on_failure(
            kwargs={
                "exception": exc,
                "litellm_params": {
                    "model_info": deployment.get("model_info", {}),
                    "metadata": {"model_group": model},
                },
            },
            completion_response=None,
            start_time=started,
            end_time=time.time(),
        )
        return exc


# What the Router's wrappers take out of the kwargs before they reach the attempt function.
_WRAPPER_KWARGS = frozenset(
    {
        "original_function",
        "fallbacks",
        "context_window_fallbacks",
        "content_policy_fallbacks",
        "model_group_retry_policy",
        "num_retries",
        "disable_fallbacks",
        "mock_timeout",
    }
)


def _replay_then(failure: Exception, attempt: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """An attempt function that raises `failure` on its first call and calls `attempt` after."""
    pending = [failure]

    async def replayed(*args: Any, **kwargs: Any) -> Any:
        if pending:
            raise pending.pop()
        return await attempt(*args, **kwargs)

    replayed.__name__ = attempt.__name__  # the Router reads the function's name
    return replayed


def _status_error(response: aiohttp.ClientResponse, data: bytes, model: str, url: str) -> Exception:
    """The LiteLLM exception LiteLLM itself would raise for this provider status."""
    status = response.status
    text = data.decode("utf-8", "replace")[:2000]
    fake = httpx.Response(
        status, headers=dict(response.headers), content=data, request=httpx.Request("POST", url)
    )
    common: dict[str, Any] = {"message": text, "model": model, "llm_provider": "openai", "response": fake}
    if status == 400:
        if any(
            m in text for m in ("context_length_exceeded", "maximum context length", "prompt is too long")
        ):
            return llm_errors.ContextWindowExceededError(**common)
        return llm_errors.BadRequestError(**common)
    if status == 401:
        return llm_errors.AuthenticationError(**common)
    if status == 403:
        return llm_errors.PermissionDeniedError(**common)
    if status == 404:
        return llm_errors.NotFoundError(**common)
    if status == 408:
        return llm_errors.Timeout(message=text, model=model, llm_provider="openai", exception_status_code=408)
    if status == 422:
        return llm_errors.UnprocessableEntityError(**common)
    if status == 429:
        return llm_errors.RateLimitError(**common)
    if status == 503:
        return llm_errors.ServiceUnavailableError(**common)
    return llm_errors.InternalServerError(**common)


def message_text(data: dict[str, Any]) -> str:
    """What the choices of a chat answer generated: content, refusals and tool-call arguments."""
    parts: list[str] = []
    for choice in data.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        for key in ("content", "reasoning_content", "refusal"):
            if isinstance(message.get(key), str):
                parts.append(message[key])
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                named = (function.get("name"), function.get("arguments"))
                parts.extend(v for v in named if isinstance(v, str))
    return "".join(parts)


async def close_session(session: aiohttp.ClientSession) -> None:
    await session.close()
    await asyncio.sleep(0)  # let aiohttp close its transports
