"""Checks for one request parameter each: type and range, or a 400 that names the parameter."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from app.errors import InvalidRequest

Check = Callable[[str, Any], None]

# Keys that would redirect a call, replace its credentials or headers, or change LiteLLM's own
# behaviour (price, retries, fallbacks, logging). No configuration can allow them.
NEVER_ALLOWED = frozenset(
    {
        "api_key",
        "api_base",
        "base_url",
        "api_version",
        "custom_llm_provider",
        "mock_response",
        "mock_testing_fallbacks",
        "mock_timeout",
        "litellm_logging_obj",
        "litellm_call_id",
        "litellm_metadata",
        "metadata",
        "fallbacks",
        "context_window_fallbacks",
        "num_retries",
        "max_retries",
        "timeout",
        "request_timeout",
        "model_list",
        "deployment_id",
        "specific_deployment",
        "extra_headers",
        "extra_body",
        "extra_query",
        "headers",
        "provider_specific_header",
        "additional_drop_params",
        "drop_params",
        "input_cost_per_token",
        "output_cost_per_token",
        "caching",
        "cache",
        "no-log",
        "proxy_server_request",
    }
)


def bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' {message}", param=param)


def number(low: float, high: float) -> Check:
    def check(param: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise bad(param, f"must be a number from {low:g} to {high:g}.")

    return check


def integer(low: int, high: int) -> Check:
    def check(param: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise bad(param, f"must be an integer from {low} to {high}.")

    return check


def boolean(param: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise bad(param, "must be a boolean.")


def string(max_length: int = 512) -> Check:
    def check(param: str, value: Any) -> None:
        if not isinstance(value, str) or len(value) > max_length:
            raise bad(param, f"must be a string of at most {max_length} characters.")

    return check


def one_of(*choices: str) -> Check:
    def check(param: str, value: Any) -> None:
        if value not in choices:
            raise bad(param, f"must be one of {', '.join(repr(c) for c in choices)}.")

    return check


def obj(param: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise bad(param, "must be an object.")


def array(param: str, value: Any) -> None:
    if not isinstance(value, list):
        raise bad(param, "must be an array.")


def string_or_strings(max_items: int) -> Check:
    def check(param: str, value: Any) -> None:
        if isinstance(value, str):
            return
        if (
            not isinstance(value, list)
            or len(value) > max_items
            or not all(isinstance(v, str) for v in value)
        ):
            raise bad(param, f"must be a string or an array of at most {max_items} strings.")

    return check


def string_or_object(param: str, value: Any) -> None:
    if not isinstance(value, str | dict):
        raise bad(param, "must be a string or an object.")


def logit_bias(param: str, value: Any) -> None:
    if not isinstance(value, dict) or len(value) > 300:
        raise bad(param, "must be an object of at most 300 token ids.")
    for token, bias in value.items():
        if not str(token).isdigit() or isinstance(bias, bool) or not isinstance(bias, int | float):
            raise bad(param, "maps token ids to numbers from -100 to 100.")
        if not -100 <= bias <= 100:
            raise bad(param, "maps token ids to numbers from -100 to 100.")


def check_params(body: Mapping[str, Any], allowed: Mapping[str, Check], extra: Iterable[str] = ()) -> None:
    """Every key is an allowed parameter of the right type, or one the operator allows."""
    extra = frozenset(extra) - NEVER_ALLOWED
    for key, value in body.items():
        check = allowed.get(key)
        if check is not None:
            if value is not None:
                check(key, value)
            continue
        if key in extra:
            continue
        raise InvalidRequest(f"Unrecognized request argument supplied: '{key}'.", param=key)
