"""Development convenience: a demo account and a well-known demo key, so the README works."""

from __future__ import annotations

import logging

from app.auth.keys import hash_key
from app.config import Settings
from app.store.base import Store, StoreError

log = logging.getLogger(__name__)


async def ensure_demo_account(store: Store, settings: Settings) -> None:
    """Create user `demo` with DEMO_USER_BALANCE and the key DEMO_API_KEY (development only)."""
    _, created = await store.ensure_user("demo", settings.DEMO_USER_BALANCE)
    digest = hash_key(settings.DEMO_API_KEY)
    if await store.find_api_key(digest) is None:
        try:
            await store.create_api_key(user_id="demo", key_id="key_demo", key_hash=digest, name="demo")
        except StoreError:
            pass  # another worker created it at the same moment
    if created:
        print(  # noqa: T201 - shown once to the developer who started the gateway
            f"\n  Demo account ready: user 'demo', balance {settings.DEMO_USER_BALANCE} "
            f"{settings.BILLING_CURRENCY}, API key {settings.DEMO_API_KEY}\n",
            flush=True,
        )
