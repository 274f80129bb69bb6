"""The LiteLLM Router, built once from the model config; calls and error translation."""

from __future__ import annotations

import fnmatch
import inspect
import json
import logging
import re
from typing import Any

import litellm
import orjson
from litellm import exceptions as llm_errors
from litellm.router import Router

from app.config import ModelConfig
from app.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.llm import endpoints
from app.llm.anthropic_stream import AnthropicStream
from app.llm.chat_stream import LiteLLMChatStream
from app.llm.event_stream import objects_as_events
from app.llm.fastpath import DirectCaller, direct_groups, message_text
from app.llm.responses_stream import ResponsesStream
from app.llm.results import Completion, CompletionStream
from app.llm.wires import COUNT_TOKENS, MESSAGES, RESPONSES, messages_completion, responses_completion
from app.usage import Usage

log = logging.getLogger(__name__)

_ROUTER_PARAMS = frozenset(inspect.signature(Router.__init__).parameters) - {"self", "model_list"}
# Settings that would let a config file replace our own logging or callbacks wholesale.
_LITELLM_DENY = frozenset({"callbacks", "success_callback", "failure_callback", "cache"})

# With `tools`, LiteLLM first tries its own MCP gateway (a proxy feature that imports the
# optional `mcp` package). Tools here are the client's and go to the provider as they are.
_NO_MCP: dict[str, Any] = {"_skip_mcp_handler": True}


def apply_litellm_settings(settings: dict[str, Any]) -> None:
    """Apply `litellm_settings` as LiteLLM's module settings (that is how LiteLLM is configured)."""
    for key, value in settings.items():
        if key in _LITELLM_DENY or not hasattr(litellm, key):
            log.warning("litellm_settings: ignoring unsupported key %r", key)
            continue
        setattr(litellm, key, value)


def build_router(config: ModelConfig, *, redis_url: str | None = None) -> Router:
    """A Router from `model_list` and the `router_settings` it understands."""
    kwargs: dict[str, Any] = {}
    for key, value in config.router_settings.items():
        if key in _ROUTER_PARAMS:
            kwargs[key] = value
        else:
            log.warning("router_settings: ignoring unsupported key %r", key)
    if redis_url and "redis_url" not in kwargs and "redis_host" not in kwargs:
        # Cooldowns and per-deployment rpm/tpm shared by every worker and instance.
        kwargs["redis_url"] = redis_url
    return Router(model_list=config.model_list, **kwargs)


class LLMService:
    """Calls through the Router; knows which public model names exist.

    Groups served by plain OpenAI-compatible deployments go through `direct` (the fast path,
    still routed by the Router); everything else through `Router.acompletion`.
    """

    def __init__(self, router: Router, config: ModelConfig, *, direct: DirectCaller | None = None) -> None:
        self.router = router
        self.direct = direct
        self.direct_groups = direct_groups(config) if direct is not None else frozenset()
        # Groups whose every deployment speaks Anthropic's Messages API natively.
        self.anthropic_groups = direct_groups(config, "anthropic/") if direct is not None else frozenset()
        self._names = config.model_names()
        self._exact = frozenset(n for n in self._names if "*" not in n)
        self._patterns = [n for n in self._names if "*" in n]
        self._entries = {str(e["model_name"]): e for e in config.model_list}
        providers: dict[str, set[str]] = {}
        for e in config.model_list:
            model = str(e["litellm_params"]["model"])
            providers.setdefault(str(e["model_name"]), set()).add(model.split("/", 1)[0])
        # Groups served only by OpenAI-compatible endpoints, which accept every OpenAI field.
        self._openai_only = frozenset(n for n, p in providers.items() if p == {"openai"})
        # Parameters beyond each API's own that the operator lets through to the provider.
        everywhere = frozenset(str(k) for k in config.gateway_settings.get("extra_params") or ())
        extra: dict[str, frozenset[str]] = {}
        for e in config.model_list:
            own = frozenset(str(k) for k in (e.get("model_info") or {}).get("extra_params") or ())
            name = str(e["model_name"])
            extra[name] = extra.get(name, frozenset()) | own
        self._extra = {name: own | everywhere for name, own in extra.items()}
        self._everywhere = everywhere

    def model_names(self) -> list[str]:
        return [n for n in self._names if "*" not in n]

    def has_model(self, name: str) -> bool:
        return name in self._exact or any(fnmatch.fnmatchcase(name, p) for p in self._patterns)

    def extra_params(self, model: object) -> frozenset[str]:
        """Parameters the operator allows for this model beyond the API's own."""
        return self._extra.get(model, self._everywhere) if isinstance(model, str) else self._everywhere

    def owner(self, name: str) -> str:
        """The provider prefix of a model group's first deployment, for /v1/models."""
        entry = self._entries.get(name)
        if entry is None:
            return "gateway"
        model = str(entry["litellm_params"]["model"])
        return model.split("/", 1)[0] if "/" in model else "openai"

    def _passthrough(self, params: dict[str, Any]) -> None:
        # LiteLLM forwards `user` only for models in OpenAI's own catalogue; an
        # OpenAI-compatible endpoint gets it in the body as the client sent it.
        if "user" in params and params.get("model") in self._openai_only:
            extra = dict(params.get("extra_body") or {})
            extra["user"] = params.pop("user")
            params["extra_body"] = extra

    async def chat(self, params: dict[str, Any]) -> Completion | CompletionStream:
        """A chat completion, JSON or streamed, with the Router's retries, fallbacks and cooldowns.

        `params` holds only parameters the API layer allowed. Errors before the first byte
        are translated here.
        """
        try:
            if self.direct is not None and params["model"] in self.direct_groups:
                return await self.direct.call(params)
            self._passthrough(params)
            response = await self.router.acompletion(**params, **_NO_MCP)
        except Exception as exc:
            raise translate_error(exc) from exc
        deployment_id, provider = _served_by(response)
        if params.get("stream"):
            return LiteLLMChatStream(response, deployment_id=deployment_id, provider=provider)
        data: dict[str, Any] = orjson.loads(response.model_dump_json())
        return Completion(
            data=data,
            usage=Usage.from_openai(data.get("usage")),
            deployment_id=deployment_id,
            provider=provider,
            text=lambda: message_text(data),
        )

    async def responses(self, params: dict[str, Any]) -> Completion | CompletionStream:
        """An OpenAI Responses call: bytes through for OpenAI-compatible groups, else LiteLLM's bridge."""
        try:
            if self.direct is not None and params["model"] in self.direct_groups:
                return await self.direct.call(params, RESPONSES)
            response = await self.router.aresponses(**params)
        except Exception as exc:
            raise translate_error(exc) from exc
        deployment_id, provider = _served_by(response)
        if params.get("stream"):
            return ResponsesStream(
                objects_as_events(response),
                getattr(response, "aclose", _nothing),
                deployment_id=deployment_id,
                provider=provider,
            )
        return responses_completion(_as_dict(response), deployment_id, provider)

    async def messages(
        self, params: dict[str, Any], headers: dict[str, str]
    ) -> Completion | CompletionStream:
        """An Anthropic Messages call: bytes through for Anthropic groups, else LiteLLM's translation.

        `headers` (anthropic-version, anthropic-beta) reach Anthropic deployments only.
        """
        try:
            if self.direct is not None and params["model"] in self.anthropic_groups:
                return await self.direct.call(params, MESSAGES, headers)
            response = await self.router.aanthropic_messages(**params)
        except Exception as exc:
            raise translate_error(exc) from exc
        deployment_id, provider = _served_by(response)
        if params.get("stream"):
            return AnthropicStream(
                _as_bytes(response),
                getattr(response, "aclose", _nothing),
                deployment_id=deployment_id,
                provider=provider,
            )
        return messages_completion(_as_dict(response), deployment_id, provider)

    async def count_tokens(self, params: dict[str, Any], headers: dict[str, str]) -> int | None:
        """Anthropic's own count for Anthropic groups; None where the gateway must count."""
        if self.direct is None or params["model"] not in self.anthropic_groups:
            return None
        try:
            result = await self.direct.call(params, COUNT_TOKENS, headers)
        except Exception as exc:
            raise translate_error(exc) from exc
        assert isinstance(result, Completion)
        count = result.data.get("input_tokens")
        return count if isinstance(count, int) else None

    async def embed(self, params: dict[str, Any]) -> Completion:
        """Embeddings through the Router; billed on the provider's prompt token count."""
        try:
            response = await self.router.aembedding(**params)
        except Exception as exc:
            raise translate_error(exc) from exc
        deployment_id, provider = _served_by(response)
        data: dict[str, Any] = orjson.loads(response.model_dump_json())
        reported = data.get("usage")
        prompt = reported.get("prompt_tokens") if isinstance(reported, dict) else None
        return Completion(
            data=data,
            usage=Usage.tokens(prompt, 0) if isinstance(prompt, int) and prompt > 0 else None,
            deployment_id=deployment_id,
            provider=provider,
            text=lambda: "",
        )

    async def call(
        self, endpoint: str, params: dict[str, Any], *, file: tuple[str, bytes, str] | None = None
    ) -> Completion | CompletionStream:
        """Completions, images, audio, moderations and rerank, each through the Router's own
        entry point (retries, fallbacks and cooldowns as for chat)."""
        router = self.router
        try:
            if endpoint == "completions":
                response = await router.atext_completion(**params)
            elif endpoint == "images":
                response = await router.aimage_generation(**params)
            elif endpoint == "transcriptions":
                # Without a format LiteLLM asks Whisper for verbose_json, which carries the
                # duration billed; a json answer is rendered from it for the client.
                sent = {k: v for k, v in params.items() if not (k == "response_format" and v == "json")}
                if file is None:
                    raise InvalidRequest("'file' is required.", param="file")
                response = await router.atranscription(file=file, **sent)
            elif endpoint == "speech":
                response = await router.aspeech(**params)
            elif endpoint == "moderations":
                response = await router.amoderation(**params)
            elif endpoint == "rerank":
                response = await router.arerank(**params)
            else:
                raise ValueError(f"unknown endpoint {endpoint!r}")
        except Exception as exc:
            raise translate_error(exc) from exc
        served = _served_by(response)
        if endpoint == "completions":
            return endpoints.completion(response, params, served)
        if endpoint == "images":
            return endpoints.images(response, served)
        if endpoint == "transcriptions":
            return endpoints.transcription(response, params, served)
        if endpoint == "speech":
            return endpoints.speech(response, served)
        if endpoint == "moderations":
            return endpoints.moderation(response, served)
        return endpoints.rerank(response, served)


async def _nothing() -> None:
    return None


def _as_dict(response: Any) -> dict[str, Any]:
    if isinstance(response, dict):
        copied: dict[str, Any] = orjson.loads(orjson.dumps(response, default=str))
        return copied
    data: dict[str, Any] = orjson.loads(response.model_dump_json(exclude_none=True))
    return data


async def _as_bytes(upstream: Any):  # type: ignore[no-untyped-def]  # AsyncIterator[bytes]
    async for chunk in upstream:
        yield chunk if isinstance(chunk, bytes) else str(chunk).encode()


def _served_by(response: Any) -> tuple[str | None, str]:
    """The deployment that answered and its provider, from what LiteLLM attaches to a response."""
    hidden: dict[str, Any] = getattr(response, "_hidden_params", None) or {}
    model_id = hidden.get("model_id")
    named = str(hidden.get("litellm_model_name") or "").partition("/")[0]
    provider = hidden.get("custom_llm_provider") or named
    return (None if model_id is None else str(model_id)), str(provider or "unknown")


def translate_error(exc: BaseException) -> GatewayError:
    """Map what LiteLLM raises, after retries and fallbacks, to the gateway's errors."""
    if isinstance(exc, GatewayError):
        return exc
    name = type(exc).__name__
    detail = _provider_message(exc)
    log.warning("upstream call failed: %s: %s", name, detail)
    if isinstance(exc, llm_errors.ContextWindowExceededError):
        return InvalidRequest(
            f"The prompt is longer than the model's context window. {detail}",
            code="context_length_exceeded",
            param="messages",
        )
    if isinstance(exc, (llm_errors.Timeout, TimeoutError)):
        return UpstreamTimeout("The model provider did not answer in time.")
    if isinstance(exc, (llm_errors.BadRequestError, llm_errors.UnprocessableEntityError)):
        return InvalidRequest(f"The provider rejected the request: {detail}")
    if isinstance(exc, (llm_errors.RateLimitError, llm_errors.ServiceUnavailableError)):
        return UpstreamUnavailable(
            "Every provider for this model is unavailable or rate limited; retry later.",
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, (llm_errors.AuthenticationError, llm_errors.PermissionDeniedError)):
        return UpstreamError("The gateway could not authenticate with the model provider.")
    if "No deployments available" in str(exc) or name == "RouterRateLimitError":
        return UpstreamUnavailable(
            "Every deployment of this model is cooling down; retry later.",
            headers={"Retry-After": "5"},
        )
    return UpstreamError(f"The model provider failed ({name}).")


def _provider_message(exc: BaseException) -> str:
    """The provider's own error message, without LiteLLM's wrapping, class names or hints."""
    from app.observability.logging import scrub

    text = str(getattr(exc, "message", "") or exc)
    start = text.find("{")
    if start >= 0:
        try:
            body, _ = json.JSONDecoder().raw_decode(text[start:])
        except ValueError:
            body = None
        if isinstance(body, dict):
            inner = body.get("error")
            message = inner.get("message") if isinstance(inner, dict) else body.get("message")
            if isinstance(message, str) and message:
                return scrub(message)[:500]
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = _WRAPPER_PREFIX.sub("", first).strip()
    return scrub(first)[:500]


_WRAPPER_PREFIX = re.compile(r"^(?:\s*(?:litellm\.)?[A-Za-z]*(?:Error|Exception)\s*[:-]\s*)+")
