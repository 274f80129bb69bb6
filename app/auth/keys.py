"""Gateway API keys: `sk-...`, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "sk-gw-"


def hash_key(key: str) -> str:
    """The stored form of a key. Keys carry 256 bits of entropy, so a plain hash is enough."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> tuple[str, str, str]:
    """A fresh key: (key, key_id, key_hash). Only the hash and id are kept."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = "key_" + secrets.token_hex(8)
    return key, key_id, hash_key(key)


def looks_like_key(credential: str) -> bool:
    return credential.startswith("sk-")
