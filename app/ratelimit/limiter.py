"""Per-user rate limits (requests per minute and hour, tokens per minute), shared through Redis."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from slowapi import Limiter
from slowapi.extension import HEADERS
from starlette.requests import Request

from app.auth.service import Principal
from app.config import Settings
from app.errors import RateLimited
from app.observability.metrics import Metrics
from app.ratelimit.buckets import Bucket, Windows
from app.ratelimit.counters import Decision, MemoryCounter, RedisCounter

log = logging.getLogger(__name__)

# slowapi's `Limiter` holds the configuration: key function (the authenticated user), storage URI,
# strategy, key prefix, header names, in-memory fallback. Its checks are synchronous (limits' sync
# storages on a blocking redis client) and would stall the event loop for every Redis round trip,
# so the hot path runs on limits' async API instead (counters.py): one Lua script per call on
# redis.asyncio or, while Redis is absent or not answering, limits' async fixed-window strategy on
# its async MemoryStorage, per worker (what slowapi's `in_memory_fallback_enabled` does).
#
# Fixed windows rather than moving windows: a moving window keeps one list entry per unit counted,
# which for a token limit means one entry per token (a 100k-entry list for a 100k TPM user); a
# fixed window is one counter per bucket, O(1) in time and memory, with an exact reset for
# Retry-After. The price: a burst straddling a window boundary can reach twice the limit. Windows
# start at a caller's first call (limits sets the expiry then), not on the clock's minute.
STRATEGY = "fixed-window"
KEY_PREFIX = "llm-gateway"
# Socket timeouts: a Redis that stops answering holds the calls in flight about this long (connect
# plus read at worst); later calls go straight to memory until a background probe finds it back.
REDIS_TIMEOUT_S = 0.25
# While Redis is down, a background probe tries it this often (calls never wait for it).
PROBE_INTERVAL_S = 1.0
# Bounds the per-worker map from a user to their token bucket (filled by check, read after calls).
MAX_TOKEN_BUCKETS = 100_000
# Finished calls' tokens are added to Redis together, at most this long after the call ended:
# one round trip for every call that ended meanwhile instead of one per call.
TOKEN_FLUSH_S = 0.01
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _user_key(request: Request) -> str:
    """slowapi's key function: the authenticated user, set by the auth dependency."""
    return str(request.state.user_id)


def _limits_uri(redis_url: str) -> str:
    """REDIS_URL as limits spells it (redis-py's `unix://` is limits' `redis+unix://`)."""
    return "redis+" + redis_url if redis_url.startswith("unix://") else redis_url


def _where(redis_url: str) -> str:
    """Host, port and path of a Redis URL for the log: never its password."""
    parts = urlsplit(redis_url)
    return f"{parts.hostname or ''}:{parts.port or 6379}{parts.path}" if parts.hostname else parts.path


class RateLimiter:
    """Checks a caller's buckets before any work is done; counts tokens after the call."""

    def __init__(
        self, *, settings: Settings, metrics: Metrics, limiter: Limiter, redis: Redis | None
    ) -> None:
        self._metrics = metrics
        self._windows = Windows(
            prefix=limiter._key_prefix or KEY_PREFIX,
            rpm=settings.RATE_LIMIT_REQUESTS_PER_MINUTE,
            rph=settings.RATE_LIMIT_REQUESTS_PER_HOUR,
            tpm=settings.RATE_LIMIT_TOKENS_PER_MINUTE,
        )
        names: dict[int, str] = limiter._header_mapping
        self._header_names = [
            names[h].lower().encode() for h in (HEADERS.LIMIT, HEADERS.REMAINING, HEADERS.RESET)
        ]
        self._retry_after: str = names[HEADERS.RETRY_AFTER]
        self._memory = MemoryCounter()
        self._redis = RedisCounter(redis, _limits_uri(settings.REDIS_URL)) if redis is not None else None
        self._where = _where(settings.REDIS_URL)
        self._shared = redis is not None  # Redis answered last time it was asked
        self._probe_at = 0.0
        self._probe: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._token_buckets: dict[str, Bucket] = {}
        self._unsent: dict[str, tuple[Bucket, int]] = {}  # bucket key -> (bucket, tokens to add)
        self._flush_due: asyncio.TimerHandle | None = None

    @classmethod
    async def create(cls, settings: Settings, metrics: Metrics) -> RateLimiter:
        """A limiter on REDIS_URL, or in memory; starts even when Redis does not answer."""
        limiter = Limiter(
            key_func=_user_key,
            storage_uri=_limits_uri(settings.REDIS_URL) if settings.REDIS_URL else "memory://",
            strategy=STRATEGY,
            key_prefix=KEY_PREFIX,
            in_memory_fallback_enabled=True,
            headers_enabled=True,
        )
        redis = None
        if settings.REDIS_URL:
            redis = Redis.from_url(
                settings.REDIS_URL,
                socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),  # a retry would multiply the wait on a dead Redis
            )
        self = cls(settings=settings, metrics=metrics, limiter=limiter, redis=redis)
        if redis is None:
            log.warning("REDIS_URL is not set: rate limits are kept in memory, per worker")
            return self
        try:
            await redis.ping()
        except Exception as exc:
            self._down(exc)
        else:
            log.info("rate limits are shared through Redis at %s", self._where)
        return self

    async def check(self, request: Request, principal: Principal) -> None:
        """Count this call in the caller's buckets; raise RateLimited when one is full."""
        reads = request.method in _READ_METHODS
        buckets = self._windows.buckets(principal, reads=reads)
        if not reads:
            self._remember_tokens(principal.user_id, buckets)
        if not buckets:
            self._metrics.rate_limit(outcome="allowed")
            return
        decision = await self._check_shared(buckets) if self._use_redis() else None
        shared = decision is not None
        allowed, usage = decision if decision is not None else await self._memory.check(buckets)
        full = [i for i, b in enumerate(buckets) if usage[i].blocks(b)]
        if not allowed and full:
            # The window that keeps the caller waiting longest decides Retry-After.
            shown = max(full, key=lambda i: usage[i].reset_in)
        else:
            shown = min(range(len(buckets)), key=lambda i: buckets[i].item.amount - usage[i].used)
        bucket, use = buckets[shown], usage[shown]
        limit, remaining, reset = self._header_names
        # X-RateLimit-Reset as slowapi sends it: the epoch second at which the window frees.
        request.state.ratelimit_headers = [
            (limit, str(bucket.item.amount).encode()),
            (remaining, str(max(0, bucket.item.amount - use.used)).encode()),
            (reset, str(math.ceil(time.time() + use.reset_in)).encode()),
        ]
        if not allowed:
            self._metrics.rate_limit(outcome="limited")
            wait = max(1, math.ceil(use.reset_in))
            raise RateLimited(
                f"Rate limit reached on {bucket.what}: limit {bucket.item.amount}, used {use.used}. "
                f"Please try again in {wait}s.",
                headers={self._retry_after: str(wait)},
            )
        self._metrics.rate_limit(outcome="allowed" if shared else "degraded")

    def record_tokens(self, user_id: str, tokens: int) -> None:
        """Count a finished call's tokens against the user's token limit, within TOKEN_FLUSH_S."""
        bucket = self._token_buckets.get(user_id)
        if bucket is None or tokens <= 0:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the event loop: nothing to schedule the write on
            return
        key = bucket.key
        earlier = self._unsent.get(key)
        self._unsent[key] = (bucket, tokens + (earlier[1] if earlier else 0))
        if self._flush_due is None:
            self._flush_due = loop.call_later(TOKEN_FLUSH_S, self._flush)

    def _flush(self) -> None:
        self._flush_due = None
        added, self._unsent = self._unsent, {}
        task = asyncio.get_running_loop().create_task(self._add_tokens(added))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def ping(self) -> None:
        """Raise if Redis is configured and does not answer; an answer ends a degraded spell."""
        if self._redis is None:
            return
        try:
            await self._redis.client.ping()
        except Exception as exc:
            self._down(exc)
            raise
        self._up()

    async def close(self) -> None:
        """Let token writes finish (briefly), stop the probe and the memory timer, close Redis."""
        if self._flush_due is not None:
            self._flush_due.cancel()
            self._flush()
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=2 * REDIS_TIMEOUT_S)
        tasks = [t for t in (*self._pending, self._probe, self._memory.storage.timer) if t and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._redis is not None:
            await self._redis.client.aclose()

    def _remember_tokens(self, user_id: str, buckets: list[Bucket]) -> None:
        """Keep the user's token bucket for record_tokens (it needs the limit: limits' key has it)."""
        token_bucket = next((b for b in buckets if b.tokens), None)
        if token_bucket is None:
            self._token_buckets.pop(user_id, None)
            return
        if len(self._token_buckets) >= MAX_TOKEN_BUCKETS:
            self._token_buckets.clear()
        self._token_buckets[user_id] = token_bucket

    def _use_redis(self) -> bool:
        """Whether to ask Redis now; while it is down, start a background probe now and then."""
        if self._shared:
            return True
        if self._redis is not None and self._probe is None and time.monotonic() >= self._probe_at:
            self._probe_at = time.monotonic() + PROBE_INTERVAL_S
            self._probe = asyncio.get_running_loop().create_task(self._probe_redis())
        return False

    async def _probe_redis(self) -> None:
        try:
            await self.ping()
        except Exception as exc:  # still down: the next probe is due in PROBE_INTERVAL_S
            log.debug("Redis probe failed: %s", type(exc).__name__)
        finally:
            self._probe = None

    async def _check_shared(self, buckets: list[Bucket]) -> Decision | None:
        assert self._redis is not None
        try:
            return await self._redis.check(buckets)
        except Exception as exc:  # whatever Redis does, the answer is never a 500
            self._down(exc)
            return None

    async def _add_tokens(self, added: dict[str, tuple[Bucket, int]]) -> None:
        if self._shared and self._redis is not None:
            try:
                await self._redis.add(added)
                return
            except Exception as exc:
                self._down(exc)
        await self._memory.add(added)

    def _down(self, exc: BaseException) -> None:
        """Switch to memory limits: logged once per outage, not once per call."""
        self._probe_at = time.monotonic() + PROBE_INTERVAL_S
        if self._shared:
            log.warning(
                "Redis at %s is not answering (%s): rate limits are per worker, in memory, until it does",
                self._where,
                type(exc).__name__,
            )
        self._shared = False

    def _up(self) -> None:
        if not self._shared:
            log.warning("Redis at %s answers again: rate limits are shared again", self._where)
        self._shared = True
