"""Structured JSON logging to stdout, with request context and secret redaction."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from app.observability.scrub import REDACTED, is_secret_key, scrub, scrub_value

__all__ = [
    "configure_logging",
    "request_id_var",
    "scrub",
    "user_id_var",
]

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
user_id_var: ContextVar[str | None] = ContextVar("user_id", default=None)

# Everything a LogRecord carries by itself; any other attribute came from `extra={...}`.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "request_id",
    "user_id",
    # Noise other libraries attach to their records: uvicorn's ANSI-coloured copy of the
    # message and LiteLLM's redaction sentinel object.
    "color_message",
    "litellm_redacted",
}

# Loggers that install their own handlers; we route them through root so every line is
# JSON and passes the redaction filter (uvicorn's access line carries the query string).
_ADOPTED_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "gunicorn.error",
    "gunicorn.access",
    "LiteLLM",
    "LiteLLM Router",
    "LiteLLM Proxy",
)
# LiteLLM logs every call at INFO; on the hot path that is a line per request we do not want.
_QUIET_BELOW_DEBUG = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")

_exc_formatter = logging.Formatter()


class _ContextFilter(logging.Filter):
    """Attach request context and redact secrets before any formatter sees the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        # The filter runs in the logging caller's context, so the contextvars are the
        # request's own even if a formatter later runs elsewhere.
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        if getattr(record, "user_id", None) is None:
            record.user_id = user_id_var.get()
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the caller
            return True
        record.msg = scrub(message)
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key in _RECORD_ATTRS or key.startswith("_"):
                continue
            if is_secret_key(key):
                record.__dict__[key] = REDACTED
            elif isinstance(value, str | dict | list | tuple):
                record.__dict__[key] = scrub_value(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = _exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def _json_default(value: Any) -> Any:
    # Decimal costs and anything else orjson does not know are logged as their str().
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, context, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a single JSON line."""
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            payload["request_id"] = request_id
        user_id = getattr(record, "user_id", None)
        if user_id is not None:
            payload["user_id"] = user_id
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                payload.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exc"] = record.exc_text
        if record.stack_info:
            payload["stack"] = record.stack_info
        return orjson.dumps(payload, default=_json_default).decode()


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
        return super().format(record)


class _StdoutHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stdout is at emit time."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        # Test runners and process managers replace sys.stdout after start-up; binding the
        # stream once would keep writing to a closed capture buffer.
        self.stream = sys.stdout
        super().emit(record)


def configure_logging(level: str, *, json_logs: bool = True) -> None:
    """Send all logging to stdout (JSON lines by default), redacted; safe to call again."""
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdoutHandler)]:
        root.removeHandler(old)
        old.close()
    handler = _StdoutHandler()
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter() if json_logs else _TextFormatter())
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _ADOPTED_LOGGERS:
        adopted = logging.getLogger(name)
        adopted.handlers.clear()
        adopted.propagate = True
    quiet = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    for name in _QUIET_BELOW_DEBUG:
        logging.getLogger(name).setLevel(quiet)
