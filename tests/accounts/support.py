"""A gateway for the account tests, on the embedded store or on real Postgres, with session tokens."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import jwt

from tests.billing.support import decimal_json
from tests.conftest import Gateway

JWT_SECRET = "accounts-test-jwt-secret-0123456789abcdef"


def session_token(user_id: str) -> str:
    """A signed-in session of `user_id`: a gateway JWT."""
    now = int(time.time())
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + 600}, JWT_SECRET, algorithm="HS256")


def new_session_user(gw: Gateway, balance: str = "100") -> tuple[str, str]:
    """A user with a balance, signed in; returns (user_id, token)."""
    user_id = f"user-{uuid.uuid4().hex[:10]}"
    r = gw.admin("POST", "/admin/users", {"user_id": user_id, "balance": balance})
    assert r.status_code == 201, r.text
    gw.users.append(user_id)
    return user_id, session_token(user_id)


def call(gw: Gateway, method: str, path: str, credential: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, gw.url + path, headers={"Authorization": f"Bearer {credential}"}, timeout=30, **kwargs
    )


def body(r: httpx.Response) -> Any:
    return decimal_json(r)
