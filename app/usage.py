"""What a provider reports it billed, split into the components that are priced apart.

Pure data, read from each protocol's own usage shape. Every part is disjoint from the others,
so a call's cost is the sum of each part times its own price.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


def _int(value: Any) -> int:
    """A token count from provider JSON: a non-negative int, anything else is 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return 0
    return int(value)


def _sub(obj: Any, key: str) -> dict[str, Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens (and units) a call consumed, each component counted once."""

    input_tokens: int = 0  # prompt tokens at the plain input price
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    audio_input_tokens: int = 0
    output_tokens: int = 0  # visible completion tokens
    reasoning_tokens: int = 0
    images: int = 0
    seconds: float = 0.0
    characters: int = 0
    queries: int = 0
    counted: bool = False  # estimated by the gateway because the provider reported nothing

    @property
    def prompt_tokens(self) -> int:
        cached = self.cache_read_tokens + self.cache_creation_tokens
        return self.input_tokens + cached + self.audio_input_tokens

    @property
    def completion_tokens(self) -> int:
        return self.output_tokens + self.reasoning_tokens

    @property
    def has_units(self) -> bool:
        """Billed by something other than tokens: images, seconds, characters or queries."""
        return bool(self.images or self.seconds or self.characters or self.queries)

    def as_dict(self) -> dict[str, Any]:
        """The non-zero parts, for the call record."""
        # Not dataclasses.asdict: it deep-copies every field, a measurable cost on every call.
        return {k: v for k in _FIELDS if (v := getattr(self, k))}

    @classmethod
    def tokens(cls, prompt_tokens: int, completion_tokens: int, *, counted: bool = False) -> Usage:
        return cls(input_tokens=prompt_tokens, output_tokens=completion_tokens, counted=counted)

    @classmethod
    def from_openai(cls, usage: Any) -> Usage | None:
        """OpenAI chat/completions usage (also LiteLLM's shape for every provider).

        `cached_tokens`, `audio_tokens` and LiteLLM's `cache_creation_input_tokens` are inside
        `prompt_tokens`; `reasoning_tokens` are inside `completion_tokens`.
        """
        if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
            return None
        prompt = _int(usage.get("prompt_tokens"))
        completion = _int(usage.get("completion_tokens"))
        details = _sub(usage, "prompt_tokens_details")
        cached = _int(details.get("cached_tokens") or usage.get("cache_read_input_tokens"))
        creation = _int(usage.get("cache_creation_input_tokens"))
        audio = _int(details.get("audio_tokens"))
        reasoning = _int(_sub(usage, "completion_tokens_details").get("reasoning_tokens"))
        cached, creation, audio = _fit(prompt, cached, creation, audio)
        reasoning = min(reasoning, completion)
        return cls(
            input_tokens=prompt - cached - creation - audio,
            cache_read_tokens=cached,
            cache_creation_tokens=creation,
            audio_input_tokens=audio,
            output_tokens=completion - reasoning,
            reasoning_tokens=reasoning,
        )

    @classmethod
    def from_responses(cls, usage: Any) -> Usage | None:
        """OpenAI Responses API usage: input_tokens / output_tokens with their details."""
        if not isinstance(usage, dict) or not isinstance(usage.get("input_tokens"), int):
            return None
        prompt = _int(usage.get("input_tokens"))
        completion = _int(usage.get("output_tokens"))
        cached = min(_int(_sub(usage, "input_tokens_details").get("cached_tokens")), prompt)
        reasoning = min(_int(_sub(usage, "output_tokens_details").get("reasoning_tokens")), completion)
        return cls(
            input_tokens=prompt - cached,
            cache_read_tokens=cached,
            output_tokens=completion - reasoning,
            reasoning_tokens=reasoning,
        )

    @classmethod
    def from_anthropic(cls, usage: Any) -> Usage | None:
        """Anthropic Messages usage: cache reads and writes are additive to input_tokens."""
        if not isinstance(usage, dict) or not isinstance(usage.get("input_tokens"), int):
            return None
        return cls(
            input_tokens=_int(usage.get("input_tokens")),
            cache_read_tokens=_int(usage.get("cache_read_input_tokens")),
            cache_creation_tokens=_int(usage.get("cache_creation_input_tokens")),
            output_tokens=_int(usage.get("output_tokens")),
        )


def _fit(prompt: int, *parts: int) -> tuple[int, ...]:
    """Parts of the prompt, trimmed so that together they never exceed it."""
    out: list[int] = []
    left = prompt
    for part in parts:
        take = min(part, left)
        out.append(take)
        left -= take
    return tuple(out)


_FIELDS = tuple(f.name for f in fields(Usage))
