"""JWT sign-in against the real gateway: its own HS256 tokens, Supabase HS256, Supabase JWKS.

A first-seen `sub` gets an account with BILLING_DEFAULT_BALANCE, exactly once, however many of
its first requests race each other.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jwt

from tests.conftest import Gateway, model_entry, start_gateway, stop_gateway
from tests.fake_provider import FakeProvider
from tests.support import assert_log_has_no_secrets, assert_openai_error, bearer

GATEWAY_SECRET = "gateway-jwt-secret-0123456789abcdef-0123"
GATEWAY_AUDIENCE = "llm-gateway"
SUPABASE_SECRET = "supabase-jwt-secret-0123456789abcdef-0123"
DEFAULT_BALANCE = Decimal("2.5")


def _pem_private(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _public_jwk(key: Any, alg: str, kid: str) -> dict[str, Any]:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {**jwk.construct(pem, alg).to_dict(), "kid": kid, "use": "sig"}


@dataclass
class SupabaseAuth:
    """A stand-in for Supabase Auth's JWKS endpoint on 127.0.0.1, with the private keys."""

    url: str = ""
    rsa_key: Any = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    ec_key: Any = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    hits: list[str] = field(default_factory=list)

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [_public_jwk(self.rsa_key, "RS256", "rsa-1"), _public_jwk(self.ec_key, "ES256", "ec-1")]
        }

    def token(self, sub: str, *, alg: str = "RS256", **claims: Any) -> str:
        """A Supabase Auth access token signed with this server's private key."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": sub,
            "aud": "authenticated",
            "role": "authenticated",
            "iss": self.url + "/auth/v1",
            "iat": now,
            "exp": now + 3600,
        }
        payload.update(claims)
        key, kid = (self.rsa_key, "rsa-1") if alg == "RS256" else (self.ec_key, "ec-1")
        return jwt.encode(payload, _pem_private(key), algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def supabase() -> Iterator[SupabaseAuth]:
    auth = SupabaseAuth()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            auth.hits.append(self.path)
            if self.path != "/auth/v1/.well-known/jwks.json":
                self.send_response(404)
                self.end_headers()
                return
            body = json.dumps(auth.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    auth.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield auth
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _start(tmp: Path, fake_provider: FakeProvider, supabase: SupabaseAuth, **env: str) -> Gateway:
    return start_gateway(
        tmp,
        models=[model_entry("fake", "jwt+chunks-3", fake_provider.base_url)],
        env={
            "JWT_SECRET_KEY": GATEWAY_SECRET,
            "JWT_AUDIENCE": GATEWAY_AUDIENCE,
            "SUPABASE_JWT_SECRET": SUPABASE_SECRET,
            "SUPABASE_URL": supabase.url,
            "BILLING_DEFAULT_BALANCE": str(DEFAULT_BALANCE),
            **env,
        },
    )


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider, supabase: SupabaseAuth
) -> Iterator[Gateway]:
    gateway = _start(tmp_path_factory.mktemp("jwt"), fake_provider, supabase)
    yield gateway
    stop_gateway(gateway)


def _gateway_token(subject: str, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": subject, "aud": GATEWAY_AUDIENCE, "iat": now, "exp": now + 600}
    payload.update(claims)
    return jwt.encode(_drop_none(payload), GATEWAY_SECRET, algorithm="HS256")


def _supabase_hs_token(subject: str, secret: str = SUPABASE_SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": subject,
        "aud": "authenticated",
        "role": "authenticated",
        "exp": now + 600,
    }
    payload.update(claims)
    return jwt.encode(_drop_none(payload), secret, algorithm="HS256")


def _drop_none(claims: dict[str, Any]) -> dict[str, Any]:
    """`claim=None` in a helper call means: leave the claim out."""
    return {k: v for k, v in claims.items() if v is not None}


def _balance(gw: Gateway, token: str) -> httpx.Response:
    return httpx.get(gw.url + "/billing/balance", headers=bearer(token), timeout=30)


def _opening_rows(gw: Gateway, token: str) -> list[dict[str, Any]]:
    r = httpx.get(gw.url + "/billing/transactions?limit=100", headers=bearer(token), timeout=30)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = json.loads(r.text, parse_float=Decimal)["transactions"]
    return [t for t in rows if t["description"] == "opening balance"]


def _new_sub() -> str:
    return str(uuid.uuid4())


# --- valid tokens -----------------------------------------------------------------------------


def test_gateway_jwt_opens_an_account_with_the_default_balance(gw: Gateway) -> None:
    sub = _new_sub()
    token = _gateway_token(sub)
    r = _balance(gw, token)
    assert r.status_code == 200, r.text
    data = json.loads(r.text, parse_float=Decimal)
    assert data["user_id"] == sub and Decimal(str(data["balance"])) == DEFAULT_BALANCE
    # The account is real: it pays for calls, and the admin API sees it.
    resp = gw.client(token).chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}]
    )
    assert resp.choices[0].message.content == "tok0 tok1 tok2 "
    assert gw.balance(token) < DEFAULT_BALANCE
    assert gw.admin("GET", f"/admin/users/{sub}").status_code == 200
    rows = _opening_rows(gw, token)
    assert len(rows) == 1 and Decimal(str(rows[0]["amount"])) == DEFAULT_BALANCE


def test_supabase_hs256_token_signs_in(gw: Gateway) -> None:
    sub = _new_sub()
    r = _balance(gw, _supabase_hs_token(sub))
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == sub


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_supabase_asymmetric_token_signs_in_via_jwks(gw: Gateway, supabase: SupabaseAuth, alg: str) -> None:
    sub = _new_sub()
    token = supabase.token(sub, alg=alg)
    r = _balance(gw, token)
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == sub
    assert "/auth/v1/.well-known/jwks.json" in supabase.hits
    resp = gw.client(token).chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}]
    )
    assert resp.choices


def test_one_user_many_token_kinds_one_account(gw: Gateway, supabase: SupabaseAuth) -> None:
    sub = _new_sub()
    tokens = [
        _supabase_hs_token(sub),
        supabase.token(sub),
        supabase.token(sub, alg="ES256"),
        _gateway_token(sub),
    ]
    for token in tokens:
        r = _balance(gw, token)
        assert r.status_code == 200 and r.json()["user_id"] == sub, r.text
    assert len(_opening_rows(gw, tokens[0])) == 1


def test_an_existing_account_keeps_its_balance(gw: Gateway) -> None:
    user_id, _ = gw.new_user(balance="7")
    r = _balance(gw, _gateway_token(user_id))
    assert r.status_code == 200
    assert Decimal(str(r.json()["balance"])) == 7


# --- invalid tokens ---------------------------------------------------------------------------


def _other_rsa_token(supabase: SupabaseAuth, sub: str) -> str:
    """Signed by a key that is not Supabase's, claiming Supabase's key id."""
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"sub": sub, "aud": "authenticated", "exp": now + 600}
    return jwt.encode(claims, _pem_private(impostor), algorithm="RS256", headers={"kid": "rsa-1"})


def _alg_confusion_token(supabase: SupabaseAuth, sub: str) -> str:
    """HS256 'signed' with Supabase's public key as the secret: the classic downgrade."""
    pem = supabase.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {"sub": sub, "aud": "authenticated", "exp": int(time.time()) + 600}
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


BAD_TOKENS = {
    "gateway_wrong_audience": lambda s, sub: _gateway_token(sub, aud="someone-else"),
    "gateway_no_audience": lambda s, sub: _gateway_token(sub, aud=None),
    "gateway_expired": lambda s, sub: _gateway_token(sub, exp=int(time.time()) - 120),
    "gateway_no_exp": lambda s, sub: jwt.encode({"sub": sub, "aud": GATEWAY_AUDIENCE}, GATEWAY_SECRET),
    "gateway_bad_signature": lambda s, sub: _gateway_token(sub)[:-4] + "AAAA",
    "gateway_other_secret": lambda s, sub: jwt.encode(
        {"sub": sub, "aud": GATEWAY_AUDIENCE, "exp": int(time.time()) + 600}, "x" * 40
    ),
    "supabase_hs_wrong_audience": lambda s, sub: _supabase_hs_token(sub, aud="anon"),
    "supabase_hs_expired": lambda s, sub: _supabase_hs_token(sub, exp=int(time.time()) - 120),
    "supabase_hs_other_secret": lambda s, sub: _supabase_hs_token(sub, secret="y" * 40),
    "rs256_wrong_audience": lambda s, sub: s.token(sub, aud="anon"),
    "rs256_expired": lambda s, sub: s.token(sub, exp=int(time.time()) - 120),
    "es256_expired": lambda s, sub: s.token(sub, alg="ES256", exp=int(time.time()) - 120),
    "rs256_bad_signature": lambda s, sub: s.token(sub)[:-6] + "AAAAAA",
    "rs256_impostor_key": _other_rsa_token,
    "rs256_unknown_kid": lambda s, sub: jwt.encode(
        {"sub": sub, "aud": "authenticated", "exp": int(time.time()) + 600},
        _pem_private(s.rsa_key),
        algorithm="RS256",
        headers={"kid": "rotated-away"},
    ),
    "hs256_with_public_key": _alg_confusion_token,
    "no_subject": lambda s, sub: _supabase_hs_token(sub, sub=None),
    "empty_subject": lambda s, sub: _supabase_hs_token(""),
    "garbage_three_parts": lambda s, sub: "abc.def.ghi",
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_token_is_401_and_opens_no_account(gw: Gateway, supabase: SupabaseAuth, case: str) -> None:
    sub = _new_sub()
    token = BAD_TOKENS[case](supabase, sub)
    r = _balance(gw, token)
    error = assert_openai_error(r, 401, "authentication_error", "invalid_api_key")
    assert token not in error["message"]
    r = httpx.post(
        gw.v1 + "/chat/completions",
        json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
        headers=bearer(token),
        timeout=30,
    )
    assert_openai_error(r, 401, "authentication_error", "invalid_api_key")
    assert gw.admin("GET", f"/admin/users/{sub}").status_code == 404


def test_no_token_or_signing_secret_in_the_log(gw: Gateway, supabase: SupabaseAuth) -> None:
    # Runs after the sign-ins above; tokens and the secrets that sign them never reach the log.
    token = supabase.token(_new_sub())
    assert _balance(gw, token).status_code == 200
    assert _balance(gw, token[:-5] + "AAAAA").status_code == 401
    assert_log_has_no_secrets(gw, [token, token.rsplit(".", 1)[1], GATEWAY_SECRET, SUPABASE_SECRET])


# --- racing first requests --------------------------------------------------------------------


def _race(gw: Gateway, token: str, n: int = 30) -> list[httpx.Response]:
    barrier = threading.Barrier(n)

    def one(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            return client.get(gw.url + "/billing/balance", headers=bearer(token))

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_gw(
    request: pytest.FixtureRequest, tmp_path: Path, fake_provider: FakeProvider, supabase: SupabaseAuth
) -> Iterator[Gateway]:
    """A gateway that has verified no token yet (so it has not fetched the JWKS either)."""
    env = {}
    if request.param == "postgres":
        env["DATABASE_URL"] = request.getfixturevalue("pg_database")
    gateway = _start(tmp_path, fake_provider, supabase, **env)
    yield gateway
    stop_gateway(gateway)


@pytest.mark.parametrize("alg", ["RS256", "HS256"])
def test_racing_first_requests_open_one_account_with_one_opening_credit(
    fresh_gw: Gateway, supabase: SupabaseAuth, alg: str
) -> None:
    sub = _new_sub()
    token = supabase.token(sub) if alg == "RS256" else _supabase_hs_token(sub)
    results = _race(fresh_gw, token)
    assert [r.status_code for r in results] == [200] * len(results), {r.text for r in results}
    assert {r.json()["user_id"] for r in results} == {sub}
    assert {Decimal(str(r.json()["balance"])) for r in results} == {DEFAULT_BALANCE}
    rows = _opening_rows(fresh_gw, token)
    assert len(rows) == 1 and Decimal(str(rows[0]["amount"])) == DEFAULT_BALANCE
    assert fresh_gw.balance(token) == DEFAULT_BALANCE
