"""JWT verification (python-jose): the gateway's own tokens and Supabase Auth's."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from jose import jwk, jwt
from jose.exceptions import JOSEError

log = logging.getLogger(__name__)

JWKS_TTL_SECONDS = 600.0


class InvalidToken(Exception):
    """The token is malformed, expired, forged or for another audience."""


class JwtVerifier:
    """Verifies HS256 tokens with configured secrets and asymmetric ones with Supabase's JWKS."""

    def __init__(
        self,
        *,
        secret: str = "",
        algorithm: str = "HS256",
        audience: str = "",
        supabase_secret: str = "",
        supabase_url: str = "",
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._secret = secret
        self._algorithm = algorithm
        self._audience = audience or None
        self._supabase_secret = supabase_secret
        self._jwks_url = supabase_url.rstrip("/") + "/auth/v1/.well-known/jwks.json" if supabase_url else ""
        self._http = http
        self._jwks: dict[str, dict[str, Any]] = {}
        self._jwks_fetched = 0.0
        # One fetch at a time: concurrent first requests wait for it instead of seeing no keys.
        self._jwks_lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._secret or self._supabase_secret or self._jwks_url)

    async def verify(self, token: str) -> dict[str, Any]:
        """Return the claims of a valid token (with `sub`), or raise InvalidToken."""
        try:
            header = jwt.get_unverified_header(token)
        except JOSEError as exc:
            raise InvalidToken("malformed token") from exc
        alg = str(header.get("alg", ""))
        if alg.startswith("HS"):
            claims = self._verify_hmac(token, alg)
        else:
            claims = await self._verify_jwks(token, header)
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise InvalidToken("token has no subject")
        return claims

    def _verify_hmac(self, token: str, alg: str) -> dict[str, Any]:
        attempts: list[tuple[str, str, str | None]] = []
        if self._secret and alg == self._algorithm:
            attempts.append((self._secret, self._algorithm, self._audience))
        if self._supabase_secret and alg == "HS256":
            attempts.append((self._supabase_secret, "HS256", "authenticated"))
        for secret, algorithm, audience in attempts:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    secret,
                    algorithms=[algorithm],
                    audience=audience,
                    # python-jose accepts a token with no `aud` at all unless told to require it.
                    options={
                        "verify_aud": audience is not None,
                        "require_aud": audience is not None,
                        "require_exp": True,
                    },
                )
                return claims
            except JOSEError:
                continue
        raise InvalidToken("invalid token")

    async def _verify_jwks(self, token: str, header: dict[str, Any]) -> dict[str, Any]:
        if not self._jwks_url:
            raise InvalidToken("unsupported token algorithm")
        kid = str(header.get("kid", ""))
        key = await self._jwk(kid)
        if key is None:
            raise InvalidToken("unknown signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                jwk.construct(key),
                algorithms=[str(key.get("alg") or header.get("alg"))],
                audience="authenticated",
                options={"require_aud": True, "require_exp": True},
            )
        except JOSEError as exc:
            raise InvalidToken("invalid token") from exc
        return claims

    async def _jwk(self, kid: str) -> dict[str, Any] | None:
        if not self._needs_refresh(kid):
            return self._jwks.get(kid)
        async with self._jwks_lock:
            # Whoever held the lock before us may have fetched already.
            if self._needs_refresh(kid):
                await self._refresh_jwks()
        return self._jwks.get(kid)

    def _needs_refresh(self, kid: str) -> bool:
        since = time.monotonic() - self._jwks_fetched
        # A kid we have never seen may be a rotated key: refetch, but at most every 30 s.
        return since > JWKS_TTL_SECONDS or (kid not in self._jwks and since > 30)

    async def _refresh_jwks(self) -> None:
        client = self._http or httpx.AsyncClient(timeout=5.0)
        try:
            resp = await client.get(self._jwks_url)
            resp.raise_for_status()
            keys = resp.json().get("keys", [])
            self._jwks = {str(k.get("kid", "")): k for k in keys if isinstance(k, dict)}
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("could not fetch Supabase JWKS: %s", type(exc).__name__)
        finally:
            self._jwks_fetched = time.monotonic()
            if self._http is None:
                await client.aclose()
