"""Per-user rate limits shared through Redis, in memory when it is absent or down (limiter.py)."""

from __future__ import annotations

from app.ratelimit.limiter import RateLimiter

__all__ = ["RateLimiter"]
