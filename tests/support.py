"""Assertions shared by the end-to-end tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import httpx

from tests.conftest import Gateway

PROVIDER_SECRET = "sk-provider-secret"  # the api_key conftest.model_entry gives every model

# Markers of a Python traceback or a framework's own error shape leaking to a client.
_LEAKS = ("Traceback", 'File "', "litellm.", '"detail"')


def assert_openai_error(
    r: httpx.Response, status: int, error_type: str, code: str | None = None, *, any_code: bool = False
) -> dict[str, Any]:
    """The response is exactly OpenAI's error shape with this status, type and code."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["type"] == error_type, error
    if not any_code:
        assert error["code"] == code, error
    for leak in _LEAKS:
        assert leak not in r.text, r.text
    # Neither the provider key from the config nor the caller's own credential is echoed.
    assert PROVIDER_SECRET not in r.text, r.text
    try:
        sent = r.request.headers.get("authorization", "")
    except RuntimeError:  # a Response built by hand, not received
        sent = ""
    _, _, credential = sent.partition(" ")
    if len(credential) >= 8:
        assert credential not in r.text, r.text
    return error


def reserved(gw: Gateway, user_id: str) -> Decimal:
    """Money currently held for calls in flight (admin view)."""
    r = gw.admin("GET", f"/admin/users/{user_id}")
    assert r.status_code == 200, r.text
    return Decimal(str(json.loads(r.text, parse_float=Decimal)["reserved"]))


def wait_reserved_zero(gw: Gateway, user_id: str, *, timeout: float = 10.0) -> None:
    """Holds released in a background task are gone within a moment."""
    deadline = time.monotonic() + timeout
    while reserved(gw, user_id) != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"a hold is still reserved for {user_id}: {reserved(gw, user_id)}")
        time.sleep(0.05)


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def assert_log_has_no_secrets(gw: Gateway, secrets: list[str]) -> None:
    """The gateway's log never holds a provider key or a caller's credential."""
    text = gw.log_path.read_text(errors="replace")
    assert text, "the gateway wrote no log at all"
    for secret in [PROVIDER_SECRET, *secrets]:
        assert secret not in text, f"secret {secret[:8]}... leaked into the gateway log"
