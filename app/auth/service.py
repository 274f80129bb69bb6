"""Turn a bearer credential into a Principal: API key lookup or JWT, cached on the hot path."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from app.auth.cache import TTLCache
from app.auth.invalidation import InvalidationBus
from app.auth.jwt import InvalidToken, JwtVerifier
from app.auth.keys import hash_key, looks_like_key
from app.errors import AuthenticationFailed, StoreUnavailable
from app.store.base import Store, StoreError, User

# How long a worker trusts a cached key or account; admin changes in this worker invalidate
# at once, other workers see them within this many seconds (or at once via Redis, if set).
CACHE_TTL_SECONDS = 30.0
NEGATIVE_TTL_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, and the limits that apply to them."""

    user_id: str
    via: Literal["key", "jwt"]
    key_id: str | None = None
    rpm_limit: int | None = None
    rph_limit: int | None = None
    tpm_limit: int | None = None
    # A key with limits of its own gets a bucket of its own, on top of its user's.
    key_rpm_limit: int | None = None
    key_tpm_limit: int | None = None


class Authenticator:
    """Verifies credentials; first-seen JWT users get an account with the default balance."""

    def __init__(self, *, store: Store, jwt: JwtVerifier, default_balance: Decimal) -> None:
        self._store = store
        self._jwt = jwt
        self._default_balance = default_balance
        self.bus: InvalidationBus | None = None
        self._keys: TTLCache[str, Principal] = TTLCache(ttl=CACHE_TTL_SECONDS)
        self._bad_keys: TTLCache[str, bool] = TTLCache(ttl=NEGATIVE_TTL_SECONDS)
        self._tokens: TTLCache[str, Principal] = TTLCache(ttl=CACHE_TTL_SECONDS)
        self._users: TTLCache[str, User] = TTLCache(ttl=CACHE_TTL_SECONDS)

    async def authenticate(self, authorization: str | None) -> Principal:
        """Resolve an `Authorization` header value; raise AuthenticationFailed otherwise."""
        if not authorization:
            raise AuthenticationFailed("Missing credentials: send 'Authorization: Bearer <key>'.")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthenticationFailed("Invalid Authorization header: expected 'Bearer <key>'.")
        if looks_like_key(credential):
            return await self._by_key(credential)
        if credential.count(".") == 2 and self._jwt.enabled:
            return await self._by_token(credential)
        raise AuthenticationFailed("Invalid API key.")

    async def _by_key(self, key: str) -> Principal:
        digest = hash_key(key)
        cached = self._keys.get(digest)
        if cached is not None:
            return cached
        if self._bad_keys.get(digest):
            raise AuthenticationFailed("Invalid API key.")
        try:
            record = await self._store.find_api_key(digest)
            user = await self.user(record.user_id) if record and not record.revoked else None
        except StoreError as exc:
            raise StoreUnavailable("The account store is unavailable; try again.") from exc
        if record is None or record.revoked or user is None:
            self._bad_keys.set(digest, True)
            raise AuthenticationFailed("Invalid API key.")
        principal = Principal(
            user_id=record.user_id,
            via="key",
            key_id=record.key_id,
            rpm_limit=user.rpm_limit,
            rph_limit=user.rph_limit,
            tpm_limit=user.tpm_limit,
            key_rpm_limit=record.rpm_limit,
            key_tpm_limit=record.tpm_limit,
        )
        self._keys.set(digest, principal)
        return principal

    async def _by_token(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self._tokens.get(digest)
        if cached is not None:
            return cached
        try:
            claims = await self._jwt.verify(token)
        except InvalidToken as exc:
            raise AuthenticationFailed(f"Invalid token: {exc}.") from exc
        user_id = str(claims["sub"])
        try:
            user = self._users.get(user_id)
            if user is None:
                user, _ = await self._store.ensure_user(user_id, self._default_balance)
                self._users.set(user_id, user)
        except StoreError as exc:
            raise StoreUnavailable("The account store is unavailable; try again.") from exc
        principal = Principal(
            user_id=user_id,
            via="jwt",
            rpm_limit=user.rpm_limit,
            rph_limit=user.rph_limit,
            tpm_limit=user.tpm_limit,
        )
        exp = claims.get("exp")
        ttl = CACHE_TTL_SECONDS
        if isinstance(exp, (int, float)):
            ttl = max(0.0, min(ttl, float(exp) - time.time()))
        if ttl > 0:
            self._tokens.set(digest, principal, ttl=ttl)
        return principal

    async def user(self, user_id: str) -> User | None:
        """The account row, cached briefly (limits only; balances are always read fresh)."""
        user = self._users.get(user_id)
        if user is None:
            user = await self._store.get_user(user_id)
            if user is not None:
                self._users.set(user_id, user)
        return user

    def invalidate_user(self, user_id: str, *, broadcast: bool = True) -> None:
        """Forget everything cached for a user (after an admin change), in every worker."""
        if broadcast and self.bus is not None:
            self.bus.publish("user", user_id)
        self._users.pop(user_id)
        self._keys.clear()
        self._bad_keys.clear()
        self._tokens.clear()

    def invalidate_key(self, key_hash: str | None = None, *, broadcast: bool = True) -> None:
        """Forget a cached key (or all keys), in every worker."""
        if broadcast and self.bus is not None:
            self.bus.publish("key", key_hash)
        if key_hash is None:
            self._keys.clear()
        else:
            self._keys.pop(key_hash)
        self._bad_keys.clear()
