"""The fast path for OpenAI-compatible deployments: bytes in, bytes out, Router still in charge.

The Router keeps doing what it is for: `async_function_with_fallbacks` runs our attempt
function with its retry policy and its fallback chain, `async_get_available_deployment`
chooses the deployment (routing strategy, weights, cooldowns) and
`deployment_callback_on_failure` counts failures and cools deployments down. What changes is
the call itself: the request body the client sent is forwarded as is, and the provider's SSE
bytes are passed on without being parsed into objects and rebuilt chunk by chunk. Only the
usage chunk is parsed, for billing.

A model group takes this path only if it and every group it can fall back to are served by
plain OpenAI-compatible deployments; everything else goes through `Router.acompletion`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import orjson
from litellm import exceptions as llm_errors
from litellm.router import Router

from app.config import ModelConfig

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
_OPENAI_BASE = "https://api.openai.com/v1"

USAGE_MARK = b'"usage":{'
DONE_EVENT = b"data: [DONE]\n\n"


@dataclass(slots=True)
class DirectResponse:
    """A provider's JSON answer, unparsed apart from its usage."""

    body: bytes
    usage: dict[str, Any] | None
    deployment_id: str
    _hidden_params: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class DirectStream:
    """An open SSE response from the provider, after a 200 status."""

    response: aiohttp.ClientResponse
    deployment_id: str
    _hidden_params: dict[str, Any] = field(default_factory=dict)

    async def aclose(self) -> None:
        self.response.close()


def _is_direct(entry: dict[str, Any]) -> bool:
    params: dict[str, Any] = entry["litellm_params"]
    model = str(params.get("model", ""))
    return model.startswith("openai/") and set(params) <= _DIRECT_PARAMS


def direct_groups(config: ModelConfig) -> frozenset[str]:
    """Model groups that (with every fallback they may reach) can use the fast path."""
    if config.router_settings.get("routing_strategy") not in _DIRECT_STRATEGIES:
        return frozenset()
    groups: dict[str, bool] = {}
    for entry in config.model_list:
        name = str(entry["model_name"])
        groups[name] = groups.get(name, True) and _is_direct(entry) and "*" not in name
    chains: dict[str, set[str]] = {}
    for key in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
        for item in config.router_settings.get(key) or []:
            if isinstance(item, dict):
                for src, targets in item.items():
                    chains.setdefault(str(src), set()).update(str(t) for t in targets or [])

    def reachable(name: str, seen: set[str]) -> set[str]:
        out = {name}
        for nxt in chains.get(name, set()) - seen:
            out |= reachable(nxt, seen | out)
        return out

    return frozenset(
        n for n, ok in groups.items() if ok and all(groups.get(m, False) for m in reachable(n, set()))
    )


class DirectCaller:
    """Calls OpenAI-compatible deployments chosen by the Router, over one shared HTTP pool."""

    def __init__(self, router: Router, session: aiohttp.ClientSession) -> None:
        self._router = router
        self._session = session

    async def call(self, params: dict[str, Any]) -> DirectResponse | DirectStream:
        """One call with the Router's retries, fallbacks and cooldowns around each attempt."""
        model = params["model"]
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": params["messages"],
            "gw_body": params,
            "original_function": self._attempt,
        }
        self._router._update_kwargs_before_fallbacks(model=model, kwargs=kwargs)
        result: DirectResponse | DirectStream = await self._router.async_function_with_fallbacks(**kwargs)
        return result

    async def _attempt(self, model: str, messages: list[Any], **kwargs: Any) -> DirectResponse | DirectStream:
        deployment = await self._router.async_get_available_deployment(
            model=model, messages=messages, request_kwargs=kwargs
        )
        params: dict[str, Any] = deployment["litellm_params"]
        deployment_id = str(deployment["model_info"]["id"])
        body = dict(kwargs["gw_body"])
        body["model"] = str(params["model"]).split("/", 1)[1]
        stream = bool(body.get("stream"))
        url = str(params.get("api_base") or _OPENAI_BASE).rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if params.get("api_key"):
            headers["Authorization"] = f"Bearer {params['api_key']}"
        if params.get("organization"):
            headers["OpenAI-Organization"] = str(params["organization"])
        headers.update(params.get("extra_headers") or {})
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
        hidden = {"model_id": deployment_id, "custom_llm_provider": "openai", "api_base": None}
        if stream:
            return DirectStream(response=response, deployment_id=deployment_id, _hidden_params=hidden)
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
        usage = _usage_of(data)
        return DirectResponse(body=data, usage=usage, deployment_id=deployment_id, _hidden_params=hidden)

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


def _usage_of(data: bytes) -> dict[str, Any] | None:
    try:
        usage = orjson.loads(data).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


def _status_error(response: aiohttp.ClientResponse, data: bytes, model: str, url: str) -> Exception:
    """The LiteLLM exception LiteLLM itself would raise for this provider status."""
    status = response.status
    text = data.decode("utf-8", "replace")[:2000]
    fake = httpx.Response(
        status, headers=dict(response.headers), content=data, request=httpx.Request("POST", url)
    )
    common: dict[str, Any] = {"message": text, "model": model, "llm_provider": "openai", "response": fake}
    if status == 400:
        if "context_length_exceeded" in text or "maximum context length" in text:
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


@dataclass(slots=True)
class StreamTally:
    """What passed through a direct stream, for billing and metrics."""

    usage: dict[str, Any] | None = None
    first_byte: float | None = None
    blocks: list[bytes] = field(default_factory=list)  # kept only until usage arrives
    parts: list[str] = field(default_factory=list)  # text, when the chunks were parsed anyway
    done: bool = False

    def generated_text(self) -> str:
        """Content generated so far (parsed only when the provider reported no usage)."""
        parts: list[str] = list(self.parts)
        for block in self.blocks:
            for event in block.split(b"\n\n"):
                if not event.startswith(b"data: {"):
                    continue
                try:
                    chunk = orjson.loads(event[6:])
                except orjson.JSONDecodeError:
                    continue
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if isinstance(content, str):
                        parts.append(content)
        return "".join(parts)


async def relay_events(
    stream: DirectStream, tally: StreamTally, *, client_wants_usage: bool
) -> AsyncIterator[bytes]:
    """Yield the provider's SSE bytes in whole events, dropping the usage chunk if unasked.

    Ends at the provider's `[DONE]` without yielding it, so the caller can settle first.
    """
    pending = b""
    async for data in stream.response.content.iter_any():
        if tally.first_byte is None:
            tally.first_byte = time.perf_counter()
        buf = pending + data if pending else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            pending = buf
            continue
        block, pending = buf[: cut + 2], buf[cut + 2 :]
        if DONE_EVENT in block:
            block = block.replace(DONE_EVENT, b"")
            tally.done = True
        if USAGE_MARK in block:
            block = _take_usage(block, tally, keep=client_wants_usage)
        elif tally.usage is None:
            tally.blocks.append(block)
        if block:
            yield block
        if tally.done:
            return
    if pending.strip():
        yield pending


def _take_usage(block: bytes, tally: StreamTally, *, keep: bool) -> bytes:
    out: list[bytes] = []
    for event in block.split(b"\n\n"):
        if not event:
            continue
        if USAGE_MARK in event and event.startswith(b"data: "):
            try:
                usage = orjson.loads(event[6:]).get("usage")
            except orjson.JSONDecodeError:
                usage = None
            if isinstance(usage, dict):
                tally.usage = usage
                tally.blocks.clear()
                if not keep:
                    continue
        out.append(event + b"\n\n")
    return b"".join(out)


async def close_session(session: aiohttp.ClientSession) -> None:
    await session.close()
    await asyncio.sleep(0)  # let aiohttp close its transports
