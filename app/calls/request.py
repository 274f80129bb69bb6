"""A call as the lifecycle sees it, whichever endpoint and protocol it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from app.usage import Usage

Endpoint = Literal[
    "chat",
    "embeddings",
    "responses",
    "messages",
    "completions",
    "images",
    "transcriptions",
    "speech",
    "moderations",
    "rerank",
]


@dataclass(slots=True)
class CallRequest:
    """A validated request: what goes to the provider and what billing needs to hold for it.

    `params` holds only parameters the endpoint allows (with their types checked); it is sent
    to the provider as it is, apart from the output limit the hold imposes.
    """

    endpoint: Endpoint
    model: str
    params: dict[str, Any]
    stream: bool = False
    wants_usage: bool = False
    max_output_tokens: int | None = None  # the smallest limit the client asked for
    output_limit_keys: tuple[str, ...] = ()  # the keys that carry it; every one is capped
    n: int = 1
    service_tier: str | None = None  # a priced tier other than the default
    inputs: list[str] = field(default_factory=list)  # embedding inputs, for the estimate
    # Per-unit usage the call can be billed for at most (images, seconds, characters,
    # queries): held as a fixed cost, and charged when the provider reports no usage.
    units: Usage | None = None
    file: tuple[str, bytes, str] | None = None  # an uploaded file: name, bytes, content type
    # Client headers the provider protocol defines (anthropic-version, anthropic-beta): passed on
    # to deployments that speak that protocol, never in place of the deployment's credential.
    headers: dict[str, str] = field(default_factory=dict)
