from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from app.observability.logging import configure_logging, request_id_var, scrub, user_id_var

SECRETS = [
    "sk-secret1234567890abcdef",
    "sk-proj-AbCdEf0123456789",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTQyIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ",
    "opaque-bearer-token-777",
    "hunter2",
    "pg-pass-991",
]


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the root logger and the adopted third-party loggers back as they were."""
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "LiteLLM", "LiteLLM Router"]
    saved = {
        name: (list(lg.handlers), lg.level, lg.propagate)
        for name in names
        for lg in [logging.getLogger(name)]
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(name)
        for handler in lg.handlers:
            if handler not in handlers:
                handler.close()
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_lines_are_json_with_request_context_and_extras(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info")
    request_token = request_id_var.set("req-123")
    user_token = user_id_var.set("user-42")
    try:
        logging.getLogger("app.test").info(
            "chat completion done",
            extra={"model": "gpt-4o", "status": 200, "latency_ms": 12.5, "cost": Decimal("0.0012")},
        )
    finally:
        request_id_var.reset(request_token)
        user_id_var.reset(user_token)
    logging.getLogger("app.test").warning("outside a request")

    first, second = json_lines(capsys.readouterr().out)
    assert first["message"] == "chat completion done"
    assert first["level"] == "INFO"
    assert first["logger"] == "app.test"
    assert first["ts"].endswith("+00:00")
    assert first["request_id"] == "req-123"
    assert first["user_id"] == "user-42"
    assert first["model"] == "gpt-4o"
    assert first["status"] == 200
    assert first["latency_ms"] == 12.5
    assert first["cost"] == "0.0012"  # exact, as text
    assert "request_id" not in second
    assert "user_id" not in second


def test_secrets_never_reach_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    log = logging.getLogger("app.test")
    log.info(
        "calling upstream with key %s and header Authorization: Bearer %s, jwt %s",
        SECRETS[0],
        SECRETS[3],
        SECRETS[2],
    )
    log.info(
        "request",
        extra={
            "api_key": "plain-looking-value",
            "dsn": f"postgresql://gateway:{SECRETS[5]}@db.internal:5432/gateway",
            "url": f"https://example.com/cb?password={SECRETS[4]}&page=2",
            "headers": {"Authorization": f"Bearer {SECRETS[3]}", "Accept": "json"},
        },
    )
    try:
        raise RuntimeError(f"upstream rejected {SECRETS[1]}")
    except RuntimeError:
        log.exception("upstream failed")

    out = capsys.readouterr().out
    for secret in [*SECRETS, "plain-looking-value"]:
        assert secret not in out
    plain, extras, failure = json_lines(out)
    assert "sk-***" in plain["message"]
    assert "Bearer ***" in plain["message"]
    assert extras["api_key"] == "***"
    assert extras["dsn"] == "postgresql://gateway:***@db.internal:5432/gateway"
    assert extras["url"] == "https://example.com/cb?password=***&page=2"
    assert extras["headers"] == {"Authorization": "***", "Accept": "json"}
    assert failure["message"] == "upstream failed"
    assert "RuntimeError: upstream rejected sk-***" in failure["exc"]


def test_configuring_twice_does_not_duplicate_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    configure_logging("INFO")
    logging.getLogger("app.test").info("once")
    assert len(json_lines(capsys.readouterr().out)) == 1


def test_level_is_applied(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING")
    logging.getLogger("app.test").info("hidden")
    logging.getLogger("app.test").warning("shown")
    assert [line["message"] for line in json_lines(capsys.readouterr().out)] == ["shown"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("LOUD")


def test_uvicorn_access_lines_become_json_and_are_scrubbed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    access = logging.getLogger("uvicorn.access")
    access.addHandler(logging.StreamHandler())  # what uvicorn's own log config installs
    configure_logging("INFO")
    access.info('%s - "%s %s HTTP/1.1" %d', "10.0.0.1", "GET", "/v1/models?api_key=abc123", 200)
    (line,) = json_lines(capsys.readouterr().out)
    assert line["logger"] == "uvicorn.access"
    # Once litellm is imported (as it is in the gateway), its own log filter may redact the
    # query first, with its placeholder; either way the secret is gone.
    assert line["message"] in (
        '10.0.0.1 - "GET /v1/models?api_key=*** HTTP/1.1" 200',
        '10.0.0.1 - "GET /v1/models?REDACTED HTTP/1.1" 200',
    )
    assert "abc123" not in line["message"]


def test_plain_text_mode(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_logs=False)
    token = request_id_var.set("req-9")
    try:
        logging.getLogger("app.test").info("hello %s", SECRETS[0])
    finally:
        request_id_var.reset(token)
    out = capsys.readouterr().out
    assert "INFO app.test [req-9] hello sk-***" in out
    assert SECRETS[0] not in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key sk-abcdef123456 used", "key sk-*** used"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic ***"),
        (f"token {SECRETS[2]} expired", "token *** expired"),
        ("postgresql://u:p%40ss@h:5432/db", "postgresql://u:***@h:5432/db"),
        (
            "postgres://postgres.ref:pw@pooler.supabase.com:6543/postgres",
            "postgres://postgres.ref:***@pooler.supabase.com:6543/postgres",
        ),
        ("redis://:redispw@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("?api_key=abc&password=pw&x=1", "?api_key=***&password=***&x=1"),
        ("JWT_SECRET_KEY=abc client_secret: 'x y'", "JWT_SECRET_KEY=*** client_secret: ***"),
        ('{"api_key": "a b", "model": "m"}', '{"api_key": ***, "model": "m"}'),
        ("access_token=abc token=def", "access_token=*** token=***"),
        # Not secrets: counts, hosts, ordinary words.
        (
            "prompt_tokens=12 completion_tokens=5 max_tokens=100",
            "prompt_tokens=12 completion_tokens=5 max_tokens=100",
        ),
        ("see https://api.openai.com/v1 and host:8080", "see https://api.openai.com/v1 and host:8080"),
        ("task-manager desk-lamp", "task-manager desk-lamp"),
        ("http://publickey@127.0.0.1:9000/1", "http://publickey@127.0.0.1:9000/1"),
    ],
)
def test_scrub(text: str, expected: str) -> None:
    assert scrub(text) == expected
