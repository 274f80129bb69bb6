"""What LiteLLM returns for the non-chat endpoints, as the gateway's typed results.

Each function reads one endpoint's answer: the body the client gets (in the provider's
protocol, with LiteLLM's renamings undone) and the usage the provider reported, per unit.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.llm.completions_stream import TextCompletionStream, completion_text
from app.llm.results import Completion, CompletionStream
from app.usage import Usage

# LiteLLM's moderation model spells OpenAI's category names with underscores.
_MODERATION_NAMES = {
    name.replace("/", "_").replace("-", "_"): name
    for name in (
        "harassment/threatening",
        "hate/threatening",
        "illicit/violent",
        "self-harm",
        "self-harm/intent",
        "self-harm/instructions",
        "sexual/minors",
        "violence/graphic",
    )
}
Served = tuple[str | None, str]  # the deployment that answered and its provider
_TEXT_FORMATS = {"text": "text/plain", "srt": "text/plain", "vtt": "text/vtt"}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _dump(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(response.model_dump_json(exclude_none=True))
    return data


def completion(response: Any, params: dict[str, Any], served: Served) -> Completion | CompletionStream:
    """Legacy text completions: JSON, or a stream of text_completion chunks."""
    if params.get("stream"):
        return TextCompletionStream(response, deployment_id=served[0], provider=served[1])
    data = _dump(response)
    for choice in data.get("choices") or ():
        if isinstance(choice, dict):
            choice.setdefault("logprobs", None)
    usage = data.get("usage")
    if isinstance(usage, dict):
        for key in ("prompt_tokens_details", "completion_tokens_details"):
            if not usage.get(key):
                usage.pop(key, None)  # LiteLLM's empty placeholders, not the provider's
    return Completion(
        data=data,
        usage=Usage.from_openai(usage),
        deployment_id=served[0],
        provider=served[1],
        text=lambda: completion_text(data),
    )


def images(response: Any, served: Served) -> Completion:
    """Generated images: billed per image, plus tokens where the provider reports them."""
    data = _dump(response)
    count = len(data.get("data") or ())
    reported = data.get("usage")
    usage = Usage(images=count)
    if isinstance(reported, dict) and not (
        _int(reported.get("input_tokens")) or _int(reported.get("output_tokens"))
    ):
        data.pop("usage")  # LiteLLM's zeros where the provider reported nothing
    elif isinstance(reported, dict):
        usage = Usage(
            input_tokens=_int(reported.get("input_tokens")),
            output_tokens=_int(reported.get("output_tokens")),
            images=count,
        )
    return Completion(
        data=data, usage=usage, deployment_id=served[0], provider=served[1], text=str, cost_only=True
    )


def transcription(response: Any, params: dict[str, Any], served: Served) -> Completion:
    """A transcript in the format the client asked for; billed on the reported duration."""
    full = _dump(response)
    text = str(full.get("text") or "")
    fmt = params.get("response_format") or "json"
    reported = full.get("usage")
    usage: Usage | None = None
    if isinstance(reported, dict) and reported.get("type") == "tokens":
        usage = Usage(
            input_tokens=_int(reported.get("input_tokens")), output_tokens=_int(reported.get("output_tokens"))
        )
    else:
        seconds = reported.get("seconds") if isinstance(reported, dict) else full.get("duration")
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
            usage = Usage(seconds=float(seconds))
    if fmt in _TEXT_FORMATS:
        return Completion(
            data={},
            usage=usage,
            deployment_id=served[0],
            provider=served[1],
            text=lambda: text,
            raw=text.encode(),
            media_type=_TEXT_FORMATS[fmt],
        )
    data: dict[str, Any] = full if fmt == "verbose_json" else {"text": text}
    if isinstance(reported, dict):
        data["usage"] = reported
    return Completion(
        data=data,
        usage=usage,
        deployment_id=served[0],
        provider=served[1],
        text=lambda: text,
        cost_only=True,
    )


def speech(response: Any, served: Served) -> Completion:
    """Audio bytes as the provider sent them; billed per input character (from the request)."""
    http = getattr(response, "response", None)
    media_type = "application/octet-stream"
    if http is not None:
        media_type = str(http.headers.get("content-type") or media_type)
    return Completion(
        data={},
        usage=None,
        deployment_id=served[0],
        provider=served[1],
        text=str,
        raw=bytes(response.content),
        media_type=media_type,
    )


def moderation(response: Any, served: Served) -> Completion:
    """Moderation results with OpenAI's category names; billed on the counted input."""
    data = _dump(response)
    for result in data.get("results") or ():
        for key in ("categories", "category_scores", "category_applied_input_types"):
            values = result.get(key) if isinstance(result, dict) else None
            if isinstance(values, dict):
                result[key] = {_MODERATION_NAMES.get(k, k): v for k, v in values.items()}
    return Completion(
        data=data, usage=None, deployment_id=served[0], provider=served[1], text=str, cost_only=True
    )


def rerank(response: Any, served: Served) -> Completion:
    """Cohere's rerank answer; billed per search unit the provider reports."""
    data = _dump(response)
    meta = data.get("meta")
    billed = meta.get("billed_units") if isinstance(meta, dict) else None
    units = billed.get("search_units") if isinstance(billed, dict) else None
    usage = Usage(queries=_int(units)) if _int(units) > 0 else None
    return Completion(
        data=data, usage=usage, deployment_id=served[0], provider=served[1], text=str, cost_only=True
    )
