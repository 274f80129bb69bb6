"""The two places buckets are counted: Redis (shared) and this worker's memory (fallback)."""

from __future__ import annotations

import time
from typing import Any

from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter
from redis.asyncio import Redis

from app.ratelimit.buckets import Bucket, Usage

# limits' fixed-window algorithm (INCRBY, EXPIRE on a new key) for every bucket of a call at
# once, all or nothing: a rejected call consumes nothing, and three buckets cost one round trip
# (limits' strategy would take two per bucket, plus two for the headers).
# KEYS[i] is a bucket; ARGV[3i-2], ARGV[3i-1], ARGV[3i] its limit, window (s) and this call's
# cost (0 = the call only needs room left). Returns {allowed, used_1, pttl_1, used_2, ...}.
CHECK_SCRIPT = """
local used = {}
local allowed = 1
for i, key in ipairs(KEYS) do
    used[i] = tonumber(redis.call('get', key) or '0')
    if used[i] + math.max(tonumber(ARGV[3 * i]), 1) > tonumber(ARGV[3 * i - 2]) then
        allowed = 0
    end
end
local out = {allowed}
for i, key in ipairs(KEYS) do
    local cost = tonumber(ARGV[3 * i])
    local ttl = redis.call('pttl', key)
    if allowed == 1 and cost > 0 then
        used[i] = redis.call('incrby', key, cost)
        if ttl < 0 then
            redis.call('expire', key, ARGV[3 * i - 1])
            ttl = tonumber(ARGV[3 * i - 1]) * 1000
        end
    end
    out[#out + 1] = used[i]
    out[#out + 1] = ttl
end
return out
"""

# limits' incr-and-expire for one bucket: INCRBY, and the window's expiry if the key has none.
# KEYS[1] is the bucket, ARGV[1] the amount, ARGV[2] the window (s).
ADD_SCRIPT = """
local used = redis.call('incrby', KEYS[1], ARGV[1])
if redis.call('pttl', KEYS[1]) < 0 then
    redis.call('expire', KEYS[1], ARGV[2])
end
return used
"""

Decision = tuple[bool, list[Usage]]


def _reset_in(bucket: Bucket, seconds: float) -> float:
    # A bucket nobody has used yet frees a whole window after its first use.
    return seconds if seconds > 0 else float(bucket.item.get_expiry())


class RedisCounter:
    """Buckets in Redis, shared by every worker and instance; errors propagate to the caller."""

    def __init__(self, client: Redis, limits_uri: str) -> None:
        self.client = client
        # limits' async storage on the same connection pool: its key prefix and its incr.
        options: dict[str, Any] = {"connection_pool": client.connection_pool}
        self._storage = RedisStorage("async+" + limits_uri, implementation="redispy", **options)
        self._script = client.register_script(CHECK_SCRIPT)
        self._add = client.register_script(ADD_SCRIPT)

    async def check(self, buckets: list[Bucket]) -> Decision:
        """Count the call in every bucket if all have room; one round trip."""
        prefixed = self._storage.bridge.prefixed_key
        args: list[int] = []
        for b in buckets:
            args += (b.item.amount, b.item.get_expiry(), b.cost)
        raw = await self._script(keys=[prefixed(b.key) for b in buckets], args=args)
        values = [int(v) for v in raw]
        usage = [
            Usage(values[1 + 2 * i], _reset_in(b, values[2 + 2 * i] / 1000)) for i, b in enumerate(buckets)
        ]
        return values[0] == 1, usage

    async def add(self, added: dict[str, tuple[Bucket, int]]) -> None:
        """Add to buckets (tokens after calls), starting windows that are new; one round trip.

        One pipeline with one script call per bucket, so each command touches one user's keys
        only (a Redis cluster client splits a pipeline by slot).
        """
        prefixed = self._storage.bridge.prefixed_key
        async with self.client.pipeline(transaction=False) as pipe:
            for key, (bucket, amount) in added.items():
                await self._add(keys=[prefixed(key)], args=[amount, bucket.item.get_expiry()], client=pipe)
            await pipe.execute()


class MemoryCounter:
    """Buckets in this worker's memory: limits' async fixed-window strategy and MemoryStorage."""

    def __init__(self) -> None:
        self.storage = MemoryStorage()
        self._strategy = FixedWindowRateLimiter(self.storage)

    async def check(self, buckets: list[Bucket]) -> Decision:
        """The same decision as RedisCounter.check (no await in it yields: atomic per worker)."""
        strategy = self._strategy
        allowed = True
        for b in buckets:
            if not await strategy.test(b.item, *b.ids, cost=max(b.cost, 1)):
                allowed = False
        if allowed:
            for b in buckets:
                if b.cost:
                    await strategy.hit(b.item, *b.ids, cost=b.cost)
        now = time.time()
        usage = []
        for b in buckets:
            stats = await strategy.get_window_stats(b.item, *b.ids)
            usage.append(Usage(b.item.amount - stats.remaining, _reset_in(b, stats.reset_time - now)))
        return allowed, usage

    async def add(self, added: dict[str, tuple[Bucket, int]]) -> None:
        """Add to buckets, starting windows that are new."""
        for key, (bucket, amount) in added.items():
            await self.storage.incr(key, bucket.item.get_expiry(), amount)
