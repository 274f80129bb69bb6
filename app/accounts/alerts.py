"""Low-balance alerts: a signed webhook once per downward crossing of each configured threshold.

Which crossings alert is decided by the store in one statement (so concurrent settles in any
number of workers alert once); delivery happens in background tasks with retries and backoff,
never on a call's path. Undelivered alerts are lost on shutdown (they are notices, not money).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import orjson

from app.store.base import Store, StoreError

log = logging.getLogger(__name__)

ATTEMPTS = 5
BACKOFF_SECONDS = 0.5  # doubled after each failed attempt: 0.5, 1, 2, 4 s
TIMEOUT_SECONDS = 5.0


def parse_thresholds(raw: str) -> list[Decimal]:
    """BILLING_ALERT_THRESHOLDS: comma-separated positive amounts, highest first."""
    out: set[Decimal] = set()
    for part in raw.split(","):
        if not part.strip():
            continue
        try:
            value = Decimal(part.strip())
        except InvalidOperation as exc:
            raise ValueError(f"BILLING_ALERT_THRESHOLDS: {part.strip()!r} is not an amount") from exc
        if not value.is_finite() or value <= 0:
            raise ValueError(f"BILLING_ALERT_THRESHOLDS: {part.strip()!r} must be a positive amount")
        out.add(value)
    return sorted(out, reverse=True)


def signature(body: bytes, secret: str) -> str:
    """X-Gateway-Signature: sha256=<hex HMAC-SHA256 of the body>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _money(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(format(value.normalize(), "f").encode())
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class BalanceAlerts:
    """Watches balances after they change and posts `balance.low` events to ALERT_WEBHOOK_URL."""

    def __init__(
        self,
        *,
        store: Store,
        url: str,
        secret: str,
        thresholds: list[Decimal],
        attempts: int = ATTEMPTS,
        backoff_seconds: float = BACKOFF_SECONDS,
    ) -> None:
        self._store = store
        self._url = url
        self._secret = secret
        self._thresholds = thresholds
        self._highest = max(thresholds)
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # trust_env=False: an HTTP proxy from the environment must not see the alert traffic.
        self._http = httpx.AsyncClient(timeout=TIMEOUT_SECONDS, trust_env=False)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def charged(self, user_id: str, balance: Decimal) -> None:
        """After a charge: only a balance below a threshold can have crossed one downward."""
        if balance < self._highest:
            self.balance_changed(user_id)

    def balance_changed(self, user_id: str) -> None:
        """Check the user's balance against the thresholds, in the background."""
        task = asyncio.create_task(self._check(user_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, user_id: str) -> None:
        try:
            crossings = await self._store.alert_crossings(user_id, self._thresholds)
        except StoreError:
            log.warning("low-balance check skipped: the store is unavailable")
            return
        for threshold, balance in crossings:
            body = {"event": "balance.low", "user_id": user_id, "balance": balance, "threshold": threshold}
            await self._deliver(orjson.dumps(body, default=_money))

    async def _deliver(self, body: bytes) -> None:
        assert self._http is not None, "start() first"
        headers = {"Content-Type": "application/json", "X-Gateway-Signature": signature(body, self._secret)}
        for attempt in range(self._attempts):
            try:
                r = await self._http.post(self._url, content=body, headers=headers)
                if r.is_success:
                    return
                outcome = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            if attempt + 1 < self._attempts:
                await asyncio.sleep(self._backoff * 2**attempt)
        log.error("low-balance alert not delivered after %d attempts (%s)", self._attempts, outcome)
