"""Secret redaction for anything that leaves the process: log lines, Sentry events."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"

# Key names whose values are secrets wherever they appear (log extras, Sentry event dicts,
# key=value text). A bare "token" must end the name: prompt_tokens / max_tokens are counts.
_SECRET_KEY_NAME = re.compile(
    r"(?i)[\w.-]*(?:password|passwd|secret|credential|api[_-]?key|apikey|authorization|cookie"
    r"|(?:service[_-]?role|access|private|signing|encryption)[_-]?key)[\w.-]*"
    r"|[\w.-]*token|pwd"
)

# Cheap pre-check: most strings (model names, statuses, ordinary messages) contain none of
# these, and skipping the rules for them keeps logging off the hot path's CPU budget.
# (Substring tests on the lowered text: about 1 us, ten times cheaper than an (?i) regex.)
_HINTS = (
    "://",
    "bearer",
    "basic",
    "eyj",
    "sk-",
    "pass",
    "secret",
    "key",
    "token",
    "pwd",
    "authori",
    "cookie",
    "credential",
)

# Order matters: URL credentials and bearer tokens are removed before the generic key=value
# rule so it does not leave half a credential behind.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:PASSWORD@host (Postgres, Redis, AMQP, HTTP basic in URLs).
    (
        re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@]*:)[^\s@/]+@"),
        rf"\1{REDACTED}@",
    ),
    # The token is RFC 6750's b64token, so a closing bracket or quote after it survives.
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), f"Bearer {REDACTED}"),
    (re.compile(r"\bBasic\s+[A-Za-z0-9+/]{8,}={0,2}(?![\w+/=])"), f"Basic {REDACTED}"),
    # JWTs: a base64url JSON header (always starts "eyJ") and two more segments.
    (
        re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
        REDACTED,
    ),
    # OpenAI-style and gateway API keys: sk-..., sk-proj-..., sk-ant-...
    (re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{4,}"), f"sk-{REDACTED}"),
)

# key=value / key: value / "key": "value" pairs, in URLs, JSON, reprs and prose; the key is
# judged by is_secret_key. The value may be quoted; "//" is a URL scheme, not a value, and a
# value already redacted by the bearer/basic rules is left alone.
_PAIR = re.compile(
    r"""(?<![\w.-])([\w.-]++)(["']?\s*+[=:]\s*+)(?!//|(?i:bearer|basic) \*\*\*)"""
    r"""("[^"]*"|'[^']*'|[^\s&"',;}\]]+)"""
)


def _redact_pair(match: re.Match[str]) -> str:
    if is_secret_key(match.group(1)):
        return f"{match.group(1)}{match.group(2)}{REDACTED}"
    return match.group(0)


def scrub(text: str) -> str:
    """Return text with API keys, bearer tokens, JWTs, passwords and URL credentials redacted."""
    lowered = text.lower()
    for hint in _HINTS:
        if hint in lowered:
            break
    else:
        return text
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return _PAIR.sub(_redact_pair, text)


def is_secret_key(name: str) -> bool:
    """True when a field called `name` holds a secret (api_key, password, x-api-key, ...)."""
    return _SECRET_KEY_NAME.fullmatch(name) is not None


def scrub_value(value: Any) -> Any:
    """Scrub every string inside a JSON-like value; values under secret-looking keys are dropped."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {
            key: REDACTED if isinstance(key, str) and is_secret_key(key) else scrub_value(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub_value(item) for item in value]
    return value
