"""The protocols the fast path speaks: where a call goes, how it is authenticated, how it is read.

One `Wire` per provider API a deployment may speak natively (OpenAI chat completions, OpenAI
Responses, Anthropic Messages and its token count). The fast path is the same for all of them:
the Router chooses, retries, falls back and cools down; the wire only says what the bytes are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from app.llm.anthropic_stream import AnthropicStream, anthropic_text, anthropic_usage
from app.llm.chat_stream import ChatSseStream
from app.llm.responses_stream import ResponsesStream, responses_text, responses_usage
from app.llm.results import Completion, CompletionStream
from app.usage import Usage

_OPENAI_BASE = "https://api.openai.com/v1"
_ANTHROPIC_BASE = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
# Client headers a Messages call passes on to an Anthropic deployment; nothing else of the
# client's reaches the provider (its credential least of all).
ANTHROPIC_PASS_HEADERS = ("anthropic-version", "anthropic-beta")


@dataclass(frozen=True, slots=True)
class Wire:
    """One provider protocol as the fast path speaks it."""

    name: str
    prefix: str  # the LiteLLM provider prefix of deployments that speak it natively
    url: Callable[[dict[str, Any]], str]
    headers: Callable[[dict[str, Any], Mapping[str, str]], dict[str, str]]
    stream: Callable[[aiohttp.ClientResponse, str], CompletionStream]
    completion: Callable[[dict[str, Any], str], Completion]


def _openai_url(path: str) -> Callable[[dict[str, Any]], str]:
    def url(params: dict[str, Any]) -> str:
        return str(params.get("api_base") or _OPENAI_BASE).rstrip("/") + path

    return url


def _openai_headers(params: dict[str, Any], client: Mapping[str, str]) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if params.get("api_key"):
        headers["Authorization"] = f"Bearer {params['api_key']}"
    if params.get("organization"):
        headers["OpenAI-Organization"] = str(params["organization"])
    headers.update(params.get("extra_headers") or {})
    return headers


def _anthropic_url(path: str) -> Callable[[dict[str, Any]], str]:
    # LiteLLM's rule for an anthropic/ api_base: the host, or the full .../v1/messages URL.
    def url(params: dict[str, Any]) -> str:
        base = str(params.get("api_base") or _ANTHROPIC_BASE).rstrip("/")
        return base.removesuffix("/v1/messages") + path

    return url


def _anthropic_headers(params: dict[str, Any], client: Mapping[str, str]) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
    headers.update({k: v for k, v in client.items() if k in ANTHROPIC_PASS_HEADERS})
    if params.get("api_key"):
        headers["x-api-key"] = str(params["api_key"])
    headers.update(params.get("extra_headers") or {})
    return headers


def _chat_completion(data: dict[str, Any], deployment_id: str) -> Completion:
    from app.llm.fastpath import message_text

    return Completion(
        data=data,
        usage=Usage.from_openai(data.get("usage")),
        deployment_id=deployment_id,
        provider="openai",
        text=lambda: message_text(data),
    )


def responses_completion(data: dict[str, Any], deployment_id: str | None, provider: str) -> Completion:
    return Completion(
        data=data,
        usage=Usage.from_responses(data.get("usage")),
        deployment_id=deployment_id,
        provider=provider,
        text=lambda: responses_text(data),
        render_usage=responses_usage,
    )


def messages_completion(data: dict[str, Any], deployment_id: str | None, provider: str) -> Completion:
    return Completion(
        data=data,
        usage=Usage.from_anthropic(data.get("usage")),
        deployment_id=deployment_id,
        provider=provider,
        text=lambda: anthropic_text(data),
        render_usage=anthropic_usage,
    )


def _count_completion(data: dict[str, Any], deployment_id: str) -> Completion:
    return Completion(data=data, usage=None, deployment_id=deployment_id, provider="anthropic", text=str)


CHAT = Wire(
    name="chat",
    prefix="openai/",
    url=_openai_url("/chat/completions"),
    headers=_openai_headers,
    stream=lambda response, deployment_id: ChatSseStream(response, deployment_id=deployment_id),
    completion=_chat_completion,
)
RESPONSES = Wire(
    name="responses",
    prefix="openai/",
    url=_openai_url("/responses"),
    headers=_openai_headers,
    stream=lambda response, deployment_id: ResponsesStream(
        response.content.iter_any(), response.close, deployment_id=deployment_id, provider="openai"
    ),
    completion=lambda data, deployment_id: responses_completion(data, deployment_id, "openai"),
)
MESSAGES = Wire(
    name="messages",
    prefix="anthropic/",
    url=_anthropic_url("/v1/messages"),
    headers=_anthropic_headers,
    stream=lambda response, deployment_id: AnthropicStream(
        response.content.iter_any(), response.close, deployment_id=deployment_id, provider="anthropic"
    ),
    completion=lambda data, deployment_id: messages_completion(data, deployment_id, "anthropic"),
)
COUNT_TOKENS = Wire(
    name="count_tokens",
    prefix="anthropic/",
    url=_anthropic_url("/v1/messages/count_tokens"),
    headers=_anthropic_headers,
    stream=MESSAGES.stream,
    completion=_count_completion,
)
