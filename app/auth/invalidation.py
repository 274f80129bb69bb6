"""Tell every worker and instance to drop cached credentials when an admin changes them.

Each worker caches key and account lookups for up to 30 s. An admin change invalidates the
worker that handled it at once; with Redis configured, the change is also published on a
channel every worker listens to, so a revoked key stops working everywhere within a round
trip. Without Redis, other workers catch up when their cache entries expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

CHANNEL = "llm-gateway:auth-invalidate"


class Invalidatable(Protocol):
    def invalidate_user(self, user_id: str, *, broadcast: bool = True) -> None: ...
    def invalidate_key(self, key_hash: str | None = None, *, broadcast: bool = True) -> None: ...


class InvalidationBus:
    """Redis pub/sub for cache invalidations; every failure is logged, none is raised."""

    def __init__(self, redis_url: str) -> None:
        self._redis: Redis = Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=1.0)
        # The listener blocks on reads by design: no socket timeout, a periodic health check.
        self._sub: Redis = Redis.from_url(redis_url, socket_connect_timeout=1.0, health_check_interval=30)
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()

    def start(self, target: Invalidatable) -> None:
        self._task = asyncio.create_task(self._listen(target))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._redis.aclose()
        await self._sub.aclose()

    def publish(self, kind: str, value: str | None) -> None:
        """Fire and forget: the request that changed something does not wait for Redis."""
        task = asyncio.create_task(self._publish(orjson.dumps({"kind": kind, "value": value})))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, message: bytes) -> None:
        try:
            await self._redis.publish(CHANNEL, message)
        except (RedisError, OSError) as exc:
            log.warning("could not publish a cache invalidation: %s", type(exc).__name__)

    async def _listen(self, target: Invalidatable) -> None:
        while True:
            try:
                async with self._sub.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    while True:
                        message = await pubsub.get_message(timeout=30.0)
                        if message is not None:
                            _apply(target, message.get("data"))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                await asyncio.sleep(1.0)  # Redis is down; caches still expire on their own


def _apply(target: Invalidatable, data: Any) -> None:
    try:
        event = orjson.loads(data)
    except (orjson.JSONDecodeError, TypeError):
        return
    if event.get("kind") == "user" and isinstance(event.get("value"), str):
        target.invalidate_user(event["value"], broadcast=False)
    elif event.get("kind") == "key":
        target.invalidate_key(event.get("value"), broadcast=False)
