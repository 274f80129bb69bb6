"""Everything built once at start-up and shared by every request (no module globals)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.auth.service import Authenticator
from app.billing.service import BillingService
from app.calls.lifecycle import CallService
from app.config import ModelConfig, Settings
from app.llm.router import LLMService
from app.observability.metrics import Metrics
from app.observability.tracing import LLMTracer
from app.store.base import Store

if TYPE_CHECKING:
    from app.accounts.alerts import BalanceAlerts
    from app.accounts.auto_topup import AutoTopups
    from app.accounts.payments import StripePayments
    from app.ratelimit import RateLimiter


@dataclass
class AppState:
    settings: Settings
    model_config: ModelConfig
    store: Store
    auth: Authenticator
    llm: LLMService
    billing: BillingService
    metrics: Metrics
    tracer: LLMTracer
    calls: CallService
    ratelimiter: RateLimiter | None = None
    payments: StripePayments | None = None  # None while Stripe is not configured
    alerts: BalanceAlerts | None = None  # None without ALERT_WEBHOOK_URL and thresholds
    auto_topups: AutoTopups | None = None  # None without Stripe
    started_at: float = field(default_factory=time.time)
    health_history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=100))
